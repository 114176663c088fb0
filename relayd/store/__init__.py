"""The durable queue: schema, records, the store interface, SqlStore, the sendmail fast path.

This package's `__init__` stays import-free: `relayd.store.fastpath` is on the sendmail hot
path and must not pull in SQLAlchemy through its parent package.
"""

# The Alembic head revision this code reads and writes. The fast path compares the database's
# `alembic_version` with it; tests check it equals the head of `relayd/migrations`.
SCHEMA_REVISION = "0007"

# The most bytes of a body one `bodies` row holds when written (revision 0005): bodies stream
# to and from the store a chunk at a time.
BODY_CHUNK = 64 * 1024

# pg_advisory_xact_lock key serialising migrations across hosts: "relayd" in ASCII. A PostgreSQL
# submission holds it shared while it checks the revision and inserts (`pgfast.py`).
MIGRATION_LOCK_KEY = 0x72656C617964

# Attempts per read transaction when a whole attempt log is printed (`relayd queue log`).
LOG_PAGE = 1000
