"""Engines per database: SQLite pragmas and BEGIN IMMEDIATE; PostgreSQL advisory locks.

SQLite: WAL, `synchronous=FULL` (the commit is fsynced), a busy timeout, foreign keys on,
incremental auto-vacuum in a new file (see `retain.py`), and every write transaction opened
with `BEGIN IMMEDIATE` so a read-then-write (a claim) never fails to upgrade its lock.
Read-only work uses a deferred `BEGIN` (see `reader`). PostgreSQL needs nothing special here;
claims use `FOR UPDATE SKIP LOCKED` in `hot.py`.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from relayd import paths
from relayd.errors import QueueError
from relayd.store import MIGRATION_LOCK_KEY, failures
from relayd.store.sqlite_reader import read_only_connect
from relayd.sysexits import ExitCode

_READ_ONLY = "relayd_read_only"


def make_engine(url: str, *, timeout: float = 10.0) -> sa.Engine:
    """An engine for `url`; a SQLite file (and its directory) is created private first."""
    path = paths.sqlite_path(url)
    if path is None:
        # A server that does not answer must not hang a submission: bound the connect.
        connect_args = {"connect_timeout": max(1, round(timeout))} if _is_postgresql(url) else {}
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    paths.ensure_private_file(path)
    engine = sa.create_engine(
        "sqlite:///" + path,
        connect_args={"timeout": timeout, "check_same_thread": False},
    )

    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        _sqlite_connect(dbapi_connection, timeout)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def make_read_only_engine(url: str, *, timeout: float = 10.0) -> sa.Engine:
    """An engine for commands that only read: a SQLite file opened `mode=ro` (never created,
    its journal mode left alone, every transaction a deferred BEGIN), a server as is."""
    path = paths.sqlite_path(url)
    if path is None:
        return make_engine(url, timeout=timeout)

    def connect() -> sqlite3.Connection:
        return read_only_connect(path, timeout)

    engine = sa.create_engine("sqlite://", creator=connect)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _is_postgresql(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def reader(engine: sa.Engine) -> sa.Engine:
    """The same engine, for transactions that only read (deferred BEGIN on SQLite)."""
    return engine.execution_options(**{_READ_ONLY: True})


def is_sqlite(bind: sa.Engine | sa.Connection) -> bool:
    return bind.dialect.name == "sqlite"


def _sqlite_connect(dbapi_connection: sqlite3.Connection, timeout: float) -> None:
    # pysqlite must not emit BEGIN itself (it would be a deferred one); `_sqlite_begin` does.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=ON")
    dbapi_connection.execute("PRAGMA synchronous=FULL")
    # Takes effect only in a file without tables, so before WAL (a new file's first write);
    # in an older file it only records the mode for the one VACUUM that `retain.py` runs.
    dbapi_connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
    _set_wal(dbapi_connection, timeout)


def _set_wal(dbapi_connection: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL (persistent in the file); several first users at once may be refused.

    Changing the journal mode needs an exclusive lock and does not wait on the busy timeout,
    so retry briefly; once the file is in WAL mode the pragma is a no-op that needs no lock.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(conn: sa.Connection) -> None:
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def lock_for_migration(conn: sa.Connection) -> None:
    """Serialise schema migration: SQLite already holds its write lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


def from_dbapi(exc: sa.exc.DBAPIError, where: str, action: str, timeout: float) -> QueueError:
    """A QueueError for a driver error: SQLite's by its code, a server's as temporary (75)."""
    if isinstance(exc.orig, sqlite3.Error):
        return failures.from_sqlite(exc.orig, where, action, timeout)
    detail = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc.orig)
    return QueueError(f"cannot {action} in {where}: {detail}", ExitCode.TEMPFAIL)


def describe(url: str) -> str:
    """`url` fit for messages: a SQLite file's path, or the URL with its password hidden."""
    path = paths.sqlite_path(url)
    if path is not None:
        return path
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
