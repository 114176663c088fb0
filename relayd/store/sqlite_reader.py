"""Reading one message from a SQLite queue on stdlib sqlite3 (`relayd queue show`): no SQLAlchemy.

SQLAlchemy costs `relayd queue show` about 27 MiB of its 40 MiB budget (SPEC §6) for a few
SELECTs, so a SQLite queue is read here, opened read-only as `store/dialects.py` opens it for
every reading command (that engine connects through `read_only_connect`); the records are
built by `store/fromrows.py`, as SqlStore builds them. A server database (PostgreSQL), or a
queue whose schema is not this relayd's, is left to SqlStore (`open_reader` falls back).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections import namedtuple
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

from relayd import paths
from relayd.store import SCHEMA_REVISION, failures
from relayd.store.fromrows import (
    ATTEMPT_COLUMNS,
    RECIPIENT_COLUMNS,
    SUMMARY_COLUMNS,
    attempt_from_row,
    message_from_row,
    recipient_from_row,
)
from relayd.store.queued import Attempt, QueuedMessage

_NO_SHM = {8, 14}  # SQLITE_READONLY(_DIRECTORY), SQLITE_CANTOPEN (a read-only file system)
_BODY_ROWS = 2  # body rows per read: 128 KiB (rows ≤ BODY_CHUNK when written), as SqlStore
_READ = "read the queue"
_CACHE_KIB = 256  # SQLite's page cache for a reader: a few body rows' pages

_AttemptRow = namedtuple("_AttemptRow", ATTEMPT_COLUMNS)  # type: ignore[misc]
_MESSAGE = f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM messages WHERE queue_id = ?"
_RECIPIENTS = (
    f"SELECT {', '.join('r.' + c for c in RECIPIENT_COLUMNS)} FROM recipients AS r"
    " WHERE r.message_id = ? ORDER BY r.position"
)
_ATTEMPTS = (
    f"SELECT {', '.join('a.' + c for c in ATTEMPT_COLUMNS)} FROM attempts AS a"
    " JOIN messages AS m ON m.id = a.message_id WHERE m.queue_id = ?"
    " ORDER BY a.started_at, a.id"
)
_BODY_PART = (
    "SELECT b.seq, b.data FROM bodies AS b JOIN messages AS m ON m.id = b.message_id"
    " WHERE m.queue_id = ? AND b.seq >= ? ORDER BY b.seq LIMIT ?"
)


class MessageReader(Protocol):
    """What `queue show` reads: one message, its attempts, its body a chunk at a time."""

    def get(self, queue_id: str) -> QueuedMessage | None: ...

    def attempts(self, queue_id: str) -> Sequence[Attempt]: ...

    def read_data_chunks(self, queue_id: str) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def _errorcode(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code if isinstance(code, int) else None


def _connect(target: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=True, timeout=timeout, check_same_thread=False)
    conn.isolation_level = None
    return conn


def read_only_connect(path: str, timeout: float) -> sqlite3.Connection:
    """The SQLite queue at `path` opened `mode=ro`: never created, its journal mode left alone,
    each statement its own (deferred) read transaction."""
    target = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    conn = _connect(target, timeout)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        conn.close()
        # A WAL queue whose -shm this user may not create (a directory it cannot write or a
        # read-only file system, no daemon running): with no -wal file every commit is in
        # the main file, so read that file as it is now (immutable). A writer starting
        # meanwhile may make this read fail; it never makes it change the queue.
        refused = ((_errorcode(exc) or 0) & 0xFF) in _NO_SHM
        if not refused or os.path.exists(os.path.abspath(path) + "-wal"):
            raise
        conn = _connect(target + "&immutable=1", timeout)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def queue_file_exists(path: str, where: str) -> bool:
    """Whether the SQLite queue file `path` exists (False: nothing was ever queued); a path
    that cannot be looked at (a component that is a file, a directory not searchable) is a
    QueueError naming `where`."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise failures.from_os(exc, where, "open the queue") from None
    return True


class SqliteReader:
    """A SQLite queue opened read-only on the stdlib driver, for reading single messages."""

    def __init__(self, conn: sqlite3.Connection, where: str, timeout: float) -> None:
        self._conn = conn
        self._where = where
        self._timeout = timeout

    @classmethod
    def open(cls, path: str, *, timeout: float = 10.0) -> SqliteReader | None:
        """The queue at `path`, or None when nothing was ever queued (no file, no schema).
        QueueError for a file it cannot read; ValueError for a schema other than this
        relayd's (SqlStore then says which)."""
        if not queue_file_exists(path, path):
            return None
        try:
            conn = read_only_connect(path, timeout)
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, path, _READ, timeout) from None
        reader = cls(conn, path, timeout)
        try:
            # A body is read once, front to back: SQLite's page cache (2 MiB by default) would
            # only fill with pages never read again.
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            revision = reader._revision()
        except BaseException:
            reader.close()
            raise
        if revision == SCHEMA_REVISION:
            return reader
        reader.close()
        if revision is None:
            return None
        raise ValueError(f"schema revision {revision}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """All rows of one statement (its own read transaction); SQLite's failures as the
        store's QueueError."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, self._where, _READ, self._timeout) from None

    def _revision(self) -> str | None:
        try:
            rows = self._conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise failures.from_sqlite(exc, self._where, _READ, self._timeout) from None
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, self._where, _READ, self._timeout) from None
        return str(rows[0][0]) if rows else None

    def get(self, queue_id: str) -> QueuedMessage | None:
        """The message `queue_id` with its recipients (one read transaction), None if absent."""
        try:
            self._conn.execute("BEGIN")
            try:
                found = self._conn.execute(_MESSAGE, (queue_id,)).fetchall()
                recipients = (
                    self._conn.execute(_RECIPIENTS, (found[0][0],)).fetchall() if found else []
                )
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, self._where, _READ, self._timeout) from None
        if not found:
            return None
        return message_from_row(found[0], tuple(recipient_from_row(r) for r in recipients))

    def attempts(self, queue_id: str) -> list[Attempt]:
        """The attempts on `queue_id`, oldest first."""
        rows = self._rows(_ATTEMPTS, (queue_id,))
        return [attempt_from_row(_AttemptRow(*row)) for row in rows]

    def read_data_chunks(self, queue_id: str) -> Iterator[bytes]:
        """The body of `queue_id` a few rows at a time, each read its own transaction (as
        SqlStore reads it: a slow reader of the output never pins the WAL)."""
        rows: list[Any] = [(-1, b"")] * _BODY_ROWS  # as if a full read ended before seq 0
        while len(rows) == _BODY_ROWS:
            rows = self._rows(_BODY_PART, (queue_id, rows[-1][0] + 1, _BODY_ROWS))
            for _, chunk in rows:
                yield bytes(chunk)


def open_reader(url: str, *, timeout: float = 10.0) -> MessageReader | None:
    """The queue at `url` for reading single messages, or None when nothing was ever queued:
    a SQLite file through SqliteReader, anything else (or a schema SqliteReader does not read)
    through SqlStore, which says what is wrong with it."""
    path = paths.sqlite_path(url)
    if path is not None:
        try:
            return SqliteReader.open(path, timeout=timeout)
        except ValueError:
            pass
    from relayd.store.sql import SqlStore  # heavy: SQLAlchemy, for servers and old schemas

    return SqlStore.open_reading(url, timeout=timeout)
