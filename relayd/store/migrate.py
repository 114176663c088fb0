"""Bring a queue database to the current schema, once, under a lock (programmatic Alembic).

Several processes may start on a new or old database at the same moment: each opens a write
transaction and takes the migration lock (SQLite: BEGIN IMMEDIATE; PostgreSQL:
pg_advisory_xact_lock), then reads the revision. The first migrates inside that transaction;
the others wait for it and then find the head revision. Needs no alembic.ini.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from relayd.errors import QueueError
from relayd.store import SCHEMA_REVISION, failures
from relayd.store.dialects import describe, from_dbapi, is_sqlite, lock_for_migration, make_engine
from relayd.sysexits import ExitCode

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPT_LOCATION = "relayd.migrations:."  # migrations/ in the repository, installed under relayd
# Alembic is imported only to migrate: a daemon on a current queue saves its ~11 MB and 25 ms.


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for relayd's migrations, built in code."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision in `migrations/versions`."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("migrations/versions has no revisions")
    return head


def current_revision(conn: sa.Connection) -> str | None:
    """The revision recorded in the database, None for a new database."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def ensure_schema(engine: sa.Engine) -> bool:
    """Migrate the database to the head revision if needed; True if this call migrated it."""
    with engine.connect() as conn:
        # SQLite: table rebuilds in later (batch) revisions must not cascade-delete child rows,
        # so foreign keys are off while migrating, checked before commit, and on again after.
        _sqlite_foreign_keys(conn, on=False)
        try:
            with conn.begin():
                migrated = _upgrade_locked(conn)
        finally:
            _sqlite_foreign_keys(conn, on=True)
    return migrated


def _sqlite_foreign_keys(conn: sa.Connection, *, on: bool) -> None:
    """Set SQLite's foreign_keys outside any transaction (inside one it is silently ignored)."""
    if is_sqlite(conn):
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _upgrade_locked(conn: sa.Connection) -> bool:
    lock_for_migration(conn)
    current = current_revision(conn)
    if current == SCHEMA_REVISION:
        return False
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    try:
        if current is not None:
            script.get_revision(current)
    except CommandError:
        raise QueueError(
            f"the queue database has schema revision {current}, unknown to this relayd"
            f" (expects {SCHEMA_REVISION}): was it written by a newer version?",
            ExitCode.TEMPFAIL,
        ) from None
    config.attributes["connection"] = conn
    command.upgrade(config, SCHEMA_REVISION)
    if is_sqlite(conn) and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
        raise RuntimeError("schema migration left rows violating foreign keys")
    return True


def check_readable(conn: sa.Connection, where: str) -> bool:
    """Whether a queue opened only to read holds the schema this relayd reads: False for one
    with no schema yet (nothing was ever queued); QueueError (75) for an older or unknown one.
    Nothing is locked or migrated: a reader must not wait behind a writer or need write access."""
    current = current_revision(conn)
    if current is None:
        return False
    if current == SCHEMA_REVISION:
        return True
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config())
    try:
        older = current in {
            rev.revision for rev in script.iterate_revisions(SCHEMA_REVISION, "base")
        }
    except CommandError:
        older = False
    if older:
        raise QueueError(
            f"the queue at {where} has schema revision {current}, older than the {SCHEMA_REVISION}"
            " this relayd reads; it is upgraded by the first command that writes to it (start"
            " relayd daemon, or run relayd queue flush once), then try again",
            ExitCode.TEMPFAIL,
        )
    raise QueueError(
        f"the queue at {where} has schema revision {current}, unknown to this relayd"
        f" (expects {SCHEMA_REVISION}): was it written by a newer version?",
        ExitCode.TEMPFAIL,
    )


def migrate_url(url: str, *, timeout: float = 10.0) -> bool:
    """Open `url`, migrate it if needed and close it; database failures become QueueError."""
    where = describe(url)
    try:
        engine = make_engine(url, timeout=timeout)
    except OSError as exc:
        raise failures.from_os(exc, where, "create the queue") from None
    try:
        return ensure_schema(engine)
    except sa.exc.DBAPIError as exc:
        raise from_dbapi(exc, where, "create the queue", timeout) from None
    finally:
        engine.dispose()
