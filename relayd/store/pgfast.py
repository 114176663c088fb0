"""relayd-sendmail into PostgreSQL without SQLAlchemy: one transaction over `pgwire`.

The same rows as SqlStore writes (`fastpath.insert`, PostgreSQL's $n placeholders), after the
same schema check as SQLite's fast path: the revision is read under the migration lock held
shared, so a migration running elsewhere finishes first. A schema to create or migrate, or a
connection only psycopg can make, returns None before anything is read from the message: the
caller then goes through SqlStore, which migrates. Exit 0 only after the server acknowledged
COMMIT (with PostgreSQL's default synchronous_commit, the commit is flushed to its WAL).
"""

from __future__ import annotations

from relayd.errors import QueueError
from relayd.store import MIGRATION_LOCK_KEY, SCHEMA_REVISION, pgtarget, pgwire
from relayd.store.fastpath import insert
from relayd.store.submitted import NewMessage
from relayd.sysexits import ExitCode

_ACTION = "store the message"
_CHECK = (
    f"BEGIN; SELECT pg_advisory_xact_lock_shared({MIGRATION_LOCK_KEY});"
    " SELECT version_num FROM alembic_version"
)
_UNDEFINED_TABLE = "42P01"  # no alembic_version yet: a new database
# The queue cannot be written until someone fixes something (as failures.py's 73): no
# privilege, a read-only server or transaction.
_CANTCREAT = frozenset({"42501", "25006"})


def enqueue(url: str, message: NewMessage, now: float, *, timeout: float) -> str | None:
    """Store `message` in the PostgreSQL queue at `url`; its queue id, or None when SqlStore
    must do it (nothing was stored or read from `message`). QueueError (75, or 73 for a
    missing privilege) when the server cannot be reached or fails: then nothing is stored."""
    try:
        target = pgtarget.target(url)
    except pgtarget.Unsupported:
        return None
    try:
        conn = pgwire.Connection(target, max(1.0, timeout))
    except pgtarget.Unsupported:
        return None
    except pgwire.Error as exc:
        raise _failure(exc, target.where) from None
    try:
        try:
            rows = conn.run(_CHECK)
        except pgwire.DatabaseError as exc:
            if exc.sqlstate == _UNDEFINED_TABLE:
                return None
            raise
        if rows != [(SCHEMA_REVISION,)]:
            return None
        queue_id = insert(
            conn,
            message,
            now,
            paramstyle="dollar",
            duplicate=pgwire.IntegrityError,
            savepoint=True,
        )
        conn.commit()
        return queue_id
    except pgwire.Error as exc:
        raise _failure(exc, target.where) from None
    finally:
        conn.close()  # before COMMIT: the server rolls the transaction back


def _failure(exc: pgwire.Error, where: str) -> QueueError:
    code = getattr(exc, "sqlstate", "")
    exit_code = ExitCode.CANTCREAT if code in _CANTCREAT else ExitCode.TEMPFAIL
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return QueueError(f"cannot {_ACTION} in {where}: {detail}", exit_code)
