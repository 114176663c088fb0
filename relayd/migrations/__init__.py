"""Alembic environment and revisions of the queue schema (run by `relayd.store.migrate`)."""
