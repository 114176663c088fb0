"""One queue database: its engine opened (and migrated), its transactions, its errors as QueueError.

Nothing here knows the queue's rows; `SqlStore` runs its statements in these transactions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from relayd.paths import sqlite_path
from relayd.store import failures
from relayd.store.dialects import (
    describe,
    from_dbapi,
    make_engine,
    make_read_only_engine,
    reader,
)
from relayd.store.migrate import check_readable, ensure_schema
from relayd.store.sqlite_reader import queue_file_exists

# Errors of the statements themselves (relayd's bugs, or a colliding queue id the caller
# retries): raised as they are, never turned into "try again later".
_BUGS = (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError)
_DRIVER_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError)


class Database:
    """A queue database reached through one SQLAlchemy engine; `where` names it in errors."""

    def __init__(self, engine: sa.Engine, *, where: str, timeout: float) -> None:
        self.engine = engine
        self._reader = reader(engine)
        self._where = where
        self._timeout = timeout

    @classmethod
    def open(cls, url: str, *, timeout: float = 10.0, migrate: bool = True) -> Database:
        """Connect to `url` (creating a SQLite file privately) and migrate it to the head."""
        where = describe(url)
        try:
            engine = make_engine(url, timeout=timeout)
        except OSError as exc:
            raise failures.from_os(exc, where, "open the queue") from None
        if migrate:
            try:
                ensure_schema(engine)
            except sa.exc.DBAPIError as exc:
                engine.dispose()
                raise from_dbapi(exc, where, "open the queue", timeout) from None
            except BaseException:
                engine.dispose()
                raise
        return cls(engine, where=where, timeout=timeout)

    @classmethod
    def open_existing(cls, url: str, *, timeout: float = 10.0) -> Database | None:
        """As `open`, but None for a SQLite queue whose file does not exist yet (nothing was
        ever queued): reading commands report an empty queue instead of creating one."""
        path = sqlite_path(url)
        if path is not None:
            try:
                os.stat(path)
            except FileNotFoundError:
                return None
            except OSError:
                pass  # unreadable, not a directory…: `open` names the problem
        return cls.open(url, timeout=timeout)

    @classmethod
    def open_reading(cls, url: str, *, timeout: float = 10.0) -> Database | None:
        """The queue for commands that only read: opened read-only, never created or migrated,
        so neither a writer's lock nor a read-only file stops it. None when nothing was ever
        queued (no SQLite file, or no schema yet); QueueError for a schema older or newer than
        this relayd reads."""
        path = sqlite_path(url)
        where = describe(url)
        if path is not None and not queue_file_exists(path, where):
            return None
        engine = make_read_only_engine(url, timeout=timeout)
        try:
            with reader(engine).begin() as conn:
                current = check_readable(conn, where)
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            raise from_dbapi(exc, where, "read the queue", timeout) from None
        except BaseException:
            engine.dispose()
            raise
        if not current:
            engine.dispose()
            return None
        return cls(engine, where=where, timeout=timeout)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, action: str, *, write: bool = True) -> Iterator[sa.Connection]:
        """One transaction (a deferred BEGIN on SQLite unless `write`); a driver failure
        becomes a QueueError saying that `action` failed (exit 73 or 75)."""
        try:
            with (self.engine if write else self._reader).begin() as conn:
                yield conn
        except _BUGS:
            raise
        except sa.exc.DBAPIError as exc:
            raise from_dbapi(exc, self._where, action, self._timeout) from None
        except _DRIVER_BUGS:
            raise
        except sqlite3.Error as exc:  # from the driver's connection itself (a fast path)
            raise failures.from_sqlite(exc, self._where, action, self._timeout) from None

    @contextmanager
    def driver_connection(self, action: str) -> Iterator[sqlite3.Connection]:
        """A SQLite driver connection outside any transaction (for VACUUM and the like); a
        SQLite failure becomes a QueueError saying that `action` failed."""
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.driver_connection
                if not isinstance(raw, sqlite3.Connection):
                    raise TypeError(f"{self._where} is not a SQLite database")
                yield raw
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, self._where, action, self._timeout) from None
        except sa.exc.DBAPIError as exc:
            raise from_dbapi(exc, self._where, action, self._timeout) from None
