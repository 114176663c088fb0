"""Group commits into a SQLite queue on one long-lived stdlib sqlite3 connection (no SQLAlchemy).

The SMTP listener stores a batch of messages per transaction, hundreds of times a second: on a
SQLite queue its group commit goes through here, the sendmail fast path's INSERTs
(`fastpath.insert_many`) between `BEGIN IMMEDIATE` and `COMMIT` on a connection opened once, so
a batch costs no engine, pool or event machinery. A PostgreSQL queue keeps SqlStore.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from relayd import paths
from relayd.errors import QueueError
from relayd.store import SCHEMA_REVISION, failures, fastpath
from relayd.store.submitted import NewMessage
from relayd.sysexits import ExitCode

_ACTION = "store the message"
# Errors of the statements themselves (a colliding queue id is retried by `insert`; others are
# relayd's bugs): raised as they are, as SqlStore's transactions do, never "try again later".
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError)


class BatchWriter:
    """`enqueue_many` for a SQLite queue at `db_path` on one connection of its own, opened at
    the first batch (and again after a failure that may have broken it). Batches may come from
    any thread, one at a time (a lock makes sure); `close` ends the connection."""

    def __init__(self, db_path: str, *, timeout: float = fastpath.DEFAULT_TIMEOUT) -> None:
        self.path = db_path
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def enqueue_many(self, batch: Sequence[NewMessage], now: float) -> list[str]:
        """Store `batch` in one transaction (one commit, one fsync); their queue ids in order.
        All or none are stored; a driver failure is a QueueError naming the queue (73 or 75)."""
        with self._lock:
            try:
                conn = self._conn if self._conn is not None else self._open()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    queue_ids = fastpath.insert_many(conn, list(batch), now)
                    conn.execute("COMMIT")
                except BaseException:
                    self._roll_back(conn)
                    raise
            except _BUGS:
                raise
            except sqlite3.Error as exc:
                raise failures.from_sqlite(exc, self.path, _ACTION, self.timeout) from None
            except OSError as exc:
                raise failures.from_os(exc, self.path, _ACTION) from None
            return queue_ids

    def open(self) -> BatchWriter:
        """Connect now (a start-up check): a QueueError says why the queue cannot be used."""
        with self._lock:
            if self._conn is None:
                try:
                    self._open()
                except sqlite3.Error as exc:
                    raise failures.from_sqlite(
                        exc, self.path, "open the queue", self.timeout
                    ) from None
                except OSError as exc:
                    raise failures.from_os(exc, self.path, "open the queue") from None
        return self

    def _open(self) -> sqlite3.Connection:
        """The connection, with the fast path's pragmas, once the schema is this relayd's."""
        paths.ensure_private_file(self.path)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except BaseException:
            conn.close()
            raise
        if row is None or str(row[0]) != SCHEMA_REVISION:
            conn.close()
            raise QueueError(
                f"cannot {_ACTION} in {self.path}: schema not at revision {SCHEMA_REVISION}",
                ExitCode.TEMPFAIL,
            )
        self._conn = conn
        return conn

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """End a failed transaction; a connection that cannot is closed (opened anew next)."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._conn = None
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def writer_for(url: str, *, timeout: float = fastpath.DEFAULT_TIMEOUT) -> BatchWriter | None:
    """A BatchWriter for the queue at `url` when it is a SQLite file; None for a server."""
    path = paths.sqlite_path(url)
    return None if path is None else BatchWriter(path, timeout=timeout)
