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
from relayd.store.records import NewMessage
from relayd.sysexits import ExitCode

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

_INSERT_MESSAGE = (
    "INSERT INTO messages (queue_id, state, account, config_file, overrides, sender, size,"
    " needs_smtputf8, needs_8bitmime, created_at, next_attempt_at, attempts, submitted_uid,"
    " submitted_user) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
)
_INSERT_BODY = "INSERT INTO bodies (message_id, seq, data) VALUES (?, ?, ?)"
_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, position, address, state) VALUES (?, ?, ?, 'pending')"
)


def submit(
    database: str, message: NewMessage, now: float, *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Queue `message` in `database` (a URL or a SQLite file path); return its queue id.

    SQLite goes through `enqueue` below; any other URL (PostgreSQL) through SqlStore. Raises
    QueueError (exit 73 or 75) when the message could not be stored; then nothing is stored.
    """
    path = paths.sqlite_path(database)
    if path is not None:
        return enqueue(path, message, now, timeout=timeout)
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
        queue_id = _insert(conn, message, now)
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


def _insert(conn: sqlite3.Connection, message: NewMessage, now: float) -> str:
    overrides = _json_pairs(message.overrides)
    for attempt in range(_ID_TRIES):
        queue_id = new_queue_id(now)
        values = (
            queue_id,
            message.account,
            message.config_file,
            overrides,
            message.sender,
            len(message.data),
            int(message.smtputf8),
            int(message.eightbit),
            now,
            now,
            message.uid,
            message.user,
        )
        try:
            cursor = conn.execute(_INSERT_MESSAGE, values)
        except sqlite3.IntegrityError as exc:
            # A failed statement leaves SQLite's transaction intact: just draw another id.
            if "queue_id" not in str(exc) or attempt + 1 == _ID_TRIES:
                raise
            continue
        message_id = cursor.lastrowid
        conn.executemany(_INSERT_BODY, body_chunks(message_id, message.data))
        conn.executemany(
            _INSERT_RECIPIENT,
            [
                (message_id, position, address)
                for position, address in enumerate(message.recipients)
            ],
        )
        return queue_id
    raise AssertionError("unreachable")


BodyRow = tuple[int | None, int, bytes]  # (message_id, seq, chunk)


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
