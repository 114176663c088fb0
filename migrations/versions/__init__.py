"""Alembic revisions of the queue schema, oldest first (`0001_…`, `0002_…`)."""
