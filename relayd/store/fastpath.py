"""The sendmail hot path: one durable INSERT transaction on stdlib sqlite3, then a wake-up.

Imports only the stdlib and relayd's light modules: no SQLAlchemy, no Alembic (SPEC §1.1
"Speed"). The schema belongs to `store/tables.py` and the migrations; a missing or old schema is
migrated once through that heavier path, imported lazily.
"""

from __future__ import annotations

# The C module behind `socket`: `import socket` costs ~2 ms (enum classes, selectors) on a path
# whose whole budget is ~25 ms, and one sendto needs none of it.
import _socket
import os
import sqlite3

from relayd import paths
from relayd.errors import ConfigError, QueueError
from relayd.store import BODY_CHUNK, SCHEMA_REVISION, failures
from relayd.store.ids import new_queue_id
from relayd.store.submitted import NewMessage
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # typing costs milliseconds on the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_TIMEOUT = 10.0  # seconds to wait for a lock before exit 75
TIMEOUT_ENV = "RELAYD_LOCK_TIMEOUT"  # seconds; overrides DEFAULT_TIMEOUT for submissions


def lock_timeout() -> float:
    """How long a submission waits for the queue's write lock: $RELAYD_LOCK_TIMEOUT or 10 s."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise ConfigError(f"{TIMEOUT_ENV}: invalid value {text!r} (seconds, greater than 0)")
    return value


_ID_TRIES = 8  # fresh queue ids to try when one collides with a stored one
_ACTION = "store the message"

# The statements in qmark style (sqlite3); `statements` gives them in a driver's paramstyle.
_INSERT_MESSAGE = (
    "INSERT INTO messages (queue_id, state, account, config_file, overrides, sender, size,"
    " needs_smtputf8, needs_8bitmime, created_at, next_attempt_at, attempts, submitted_uid,"
    " submitted_user) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id"
)
_INSERT_BODY = "INSERT INTO bodies (message_id, seq, data) VALUES (?, ?, ?)"
_SET_SIZE = "UPDATE messages SET size = ?, needs_8bitmime = ? WHERE id = ?"
_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, position, address, state) VALUES (?, ?, ?, 'pending')"
)
_QMARK = (_INSERT_MESSAGE, _INSERT_BODY, _SET_SIZE, _INSERT_RECIPIENT)


def statements(paramstyle: str) -> tuple[str, str, str, str]:
    """The insert's four statements for a DB-API driver's `paramstyle` (qmark or format), or
    "dollar": PostgreSQL's own $1, $2… (`pgwire`)."""
    if paramstyle == "qmark":
        return _QMARK
    if paramstyle == "dollar":
        a, b, c, d = (_numbered(sql) for sql in _QMARK)
        return a, b, c, d
    if paramstyle not in ("format", "pyformat"):
        raise ValueError(f"unsupported paramstyle {paramstyle!r}")
    a, b, c, d = (sql.replace("?", "%s") for sql in _QMARK)
    return a, b, c, d


def _numbered(sql: str) -> str:
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def submit(
    database: str, message: NewMessage, now: float, *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Queue `message` in `database` (a URL or a SQLite file path); return its queue id.

    SQLite goes through `enqueue` below; PostgreSQL through `pgfast.enqueue` (no SQLAlchemy),
    or SqlStore when that cannot (a URL only psycopg handles, a schema to migrate). Raises
    QueueError (exit 73 or 75) when the message could not be stored; then nothing is stored.
    """
    path = paths.sqlite_path(database)
    if path is not None:
        return enqueue(path, message, now, timeout=timeout)
    if database.startswith("postgresql+psycopg:"):
        from relayd.store import pgfast

        queue_id = pgfast.enqueue(database, message, now, timeout=timeout)
        if queue_id is not None:
            return queue_id
    from relayd.store.sql import SqlStore  # heavy: SQLAlchemy, only for server databases

    with SqlStore.open(database, timeout=timeout) as store:
        return store.enqueue(message, now)


def enqueue(
    db_path: str, message: NewMessage, now: float, *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Store `message` durably in the SQLite queue at `db_path` and return its queue id.

    One `BEGIN IMMEDIATE` transaction inserts the message and its recipients; with WAL and
    `synchronous=FULL` the commit is on disk when this returns.
    """
    try:
        paths.ensure_private_file(db_path)
    except OSError as exc:
        raise failures.from_os(exc, db_path, _ACTION) from None
    for migrated in (False, True):
        try:
            queue_id = _try_insert(db_path, message, now, timeout)
        except sqlite3.Error as exc:
            raise failures.from_sqlite(exc, db_path, _ACTION, timeout) from None
        if queue_id is not None:
            return queue_id
        if migrated:
            break
        from relayd.store.migrate import migrate_url  # heavy: once, on first use or upgrade

        migrate_url("sqlite:///" + db_path, timeout=timeout)
    raise QueueError(
        f"cannot {_ACTION} in {db_path}: schema still not at revision {SCHEMA_REVISION}",
        ExitCode.TEMPFAIL,
    )


def _connect(db_path: str, timeout: float) -> sqlite3.Connection:
    """A connection that never opens transactions on its own, with the durability pragmas."""
    conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


# Connections of a process that ends with os._exit right after its commit (`keep_open`).
_kept: list[sqlite3.Connection] | None = None


def keep_open() -> None:
    """Leave this process's committed connections open: it is about to end with `os._exit`.

    Closing the last connection to a WAL database checkpoints it and deletes the WAL (three
    more fsyncs: WAL, database, and the directory when the next process creates the WAL anew).
    The commit is already durable in the WAL, and the next connection (the daemon's, or the
    next submission's) reads it from there, so a submitting process skips that work; SQLite's
    automatic checkpoint still runs every ~1000 pages.
    """
    global _kept
    if _kept is None:
        _kept = []


def _try_insert(db_path: str, message: NewMessage, now: float, timeout: float) -> str | None:
    """Insert and commit, returning the queue id; None when the schema needs migrating first."""
    conn = _connect(db_path, timeout)
    committed = False
    try:
        conn.execute("BEGIN IMMEDIATE")
        if _revision(conn) != SCHEMA_REVISION:
            conn.execute("ROLLBACK")
            return None
        queue_id = insert(conn, message, now)
        conn.execute("COMMIT")
        committed = True
        return queue_id
    finally:
        if committed and _kept is not None:
            _kept.append(conn)
        else:
            # Closing with the transaction still open (an error above) rolls it back.
            conn.close()


def _revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else str(row[0])


def insert(
    conn: Any,
    message: NewMessage,
    now: float,
    *,
    paramstyle: str = "qmark",
    duplicate: type[Exception] = sqlite3.IntegrityError,
    savepoint: bool = False,
) -> str:
    """Insert `message` through the DB-API connection `conn`, inside the caller's transaction;
    its queue id. The message row comes first, then the body's rows as the body streams in (an
    error from it — too big, unreadable input — leaves the caller's transaction to roll back),
    then a streamed body's size and 8-bit flag, then the recipients.

    `paramstyle` is the driver's; `duplicate` the driver's exception for a unique key that
    exists (a queue id drawn twice: another is drawn); `savepoint` wraps the message row in a
    savepoint, for servers (PostgreSQL) where a failed statement aborts the transaction.
    """
    insert_message, insert_body, set_size, insert_recipient = statements(paramstyle)
    overrides = _json_pairs(message.overrides)
    streamed = message.body is not None
    cursor = conn.cursor()
    for attempt in range(_ID_TRIES):
        queue_id = new_queue_id(now)
        values = (
            queue_id,
            message.account,
            message.config_file,
            overrides,
            message.sender,
            0 if streamed else len(message.data),
            bool(message.smtputf8),
            bool(message.eightbit),
            now,
            now,
            message.uid,
            message.user,
        )
        if savepoint:
            cursor.execute("SAVEPOINT new_queue_id")
        try:
            cursor.execute(insert_message, values)
        except duplicate as exc:
            # A failed statement leaves SQLite's transaction intact: just draw another id.
            if "queue_id" not in str(exc) or attempt + 1 == _ID_TRIES:
                raise
            if savepoint:
                cursor.execute("ROLLBACK TO SAVEPOINT new_queue_id")
            continue
        (message_id,) = cursor.fetchone()
        rows = BodyRows(message_id, message)
        cursor.executemany(insert_body, rows)
        if streamed:
            cursor.execute(set_size, (rows.size, rows.eightbit, message_id))
        cursor.executemany(
            insert_recipient,
            [
                (message_id, position, address)
                for position, address in enumerate(message.recipients)
            ],
        )
        return queue_id
    raise AssertionError("unreachable")


def insert_many(conn: sqlite3.Connection, batch: list[NewMessage], now: float) -> list[str]:
    """Insert `batch` on `conn` in the caller's transaction (the daemon's group commit, on a
    SQLite queue); their queue ids, in order."""
    return [insert(conn, message, now) for message in batch]


BodyRow = tuple[int | None, int, bytes]  # (message_id, seq, chunk)


class BodyRows:
    """The `bodies` rows of `message` as they are written: (message_id, seq, chunk), each at
    most BODY_CHUNK bytes (one empty row for an empty body). Iterating reads a streamed body,
    counting its `size` and whether it has 8-bit bytes (`eightbit`, or `message.eightbit`)."""

    __slots__ = ("eightbit", "message", "message_id", "size")

    def __init__(self, message_id: int | None, message: NewMessage) -> None:
        self.message_id = message_id
        self.message = message
        self.size = 0
        self.eightbit = bool(message.eightbit)

    def __iter__(self) -> Iterator[BodyRow]:
        body = self.message.body
        if body is None:
            yield from body_chunks(self.message_id, self.message.data)
            self.size = len(self.message.data)
            return
        self.size, seq, pending = 0, 0, bytearray()
        for piece in body:
            self.size += len(piece)
            if not self.eightbit and not piece.isascii():
                self.eightbit = True
            pending += piece
            while len(pending) >= BODY_CHUNK:
                yield (self.message_id, seq, bytes(pending[:BODY_CHUNK]))
                del pending[:BODY_CHUNK]
                seq += 1
        if pending or seq == 0:
            yield (self.message_id, seq, bytes(pending))


def body_chunks(message_id: int | None, data: bytes | bytearray) -> list[BodyRow]:
    """The `bodies` rows of `data`: (message_id, seq, chunk), at most BODY_CHUNK bytes each."""
    view = memoryview(data)
    return [
        (message_id, seq, bytes(view[start : start + BODY_CHUNK]))
        for seq, start in enumerate(range(0, max(len(data), 1), BODY_CHUNK))
    ]


def _json_pairs(pairs: tuple[tuple[str, str | None], ...]) -> str:
    """The overrides column: a JSON list of [option, value] pairs (no json import without any)."""
    if not pairs:
        return "[]"
    import json

    return json.dumps([list(pair) for pair in pairs])


def wake(socket_path: str | None = None, payload: bytes = b"wake") -> bool:
    """Nudge the daemon with one datagram; True if it was sent.

    Never raises: the message is already stored, and a daemon that is not running (ENOENT,
    ECONNREFUSED), busy (EAGAIN: its buffer is full of wake-ups already) or unreachable finds
    the message on its next periodic scan anyway.
    """
    path = socket_path if socket_path is not None else paths.wake_socket()
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK)
    except OSError:
        return False
    try:
        sock.sendto(payload, path)
    except OSError:
        return False
    finally:
        sock.close()
    return True
