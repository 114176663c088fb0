"""Alembic environment and revisions of the queue schema (run by `relayd.store.migrate`).

This directory sits at the top of the repository, as Alembic lays it out; pyproject.toml's
package-dir installs it as the package `relayd.migrations`, in the wheel and in editable installs.
"""
