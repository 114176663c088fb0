"""SqlStore: the store's interface (`relayd.store.interface`) on SQLAlchemy Core.

One implementation for SQLite and PostgreSQL; the contract of each method is on the interface.
Claims are atomic through SQLite's BEGIN IMMEDIATE and PostgreSQL's FOR UPDATE SKIP LOCKED; the
runner's hot statements (`hot.py`) run on the driver's cursor. Leases go back with
`release_leases` (`leases.py`).

Why this module is long: it is the one class that implements every method of the store
interface (claims, results, listing, reports, retention, body streaming); its helpers already
live in hot.py, leases.py, listing.py, reports.py and retain.py, and what is left is each
method's transaction and error mapping, which belong beside each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from relayd.store import fastpath, retain
from relayd.store import leases as leases_module
from relayd.store.database import Database
from relayd.store.hot import HotStatements, build_claimed
from relayd.store.ids import new_queue_id
from relayd.store.listing import Listed, pages
from relayd.store.prepared import ClaimedRows, PreparedRecord
from relayd.store.queued import (
    AccountDue,
    Attempt,
    AttemptRecord,
    Lease,
    MessageState,
    QueuedMessage,
)
from relayd.store.records import NewMessage, State
from relayd.store.rows import attempt_from_row, insert_messages, load_messages
from relayd.store.tables import attempts, bodies, messages

# Each account with queued mail and its earliest due time, by seeks in `ix_messages_due`
# (state, account, next_attempt_at): the recursive part steps from one account to the next
# (a loose index scan), the outer part reads each account's first entry. So a scan costs a
# few seeks per account, never a read of all queued mail (47 ms at 100,000 queued before).
DUE_BY_ACCOUNT = sa.text(
    """
    WITH RECURSIVE accounts(account) AS (
        SELECT min(account) FROM messages WHERE state = 'queued'
        UNION ALL
        SELECT (SELECT min(m.account) FROM messages AS m
                WHERE m.state = 'queued' AND m.account > accounts.account)
        FROM accounts WHERE accounts.account IS NOT NULL
    )
    SELECT account, (SELECT min(m.next_attempt_at) FROM messages AS m
                     WHERE m.state = 'queued' AND m.account = accounts.account)
    FROM accounts WHERE account IS NOT NULL
    """
)
_ID_TRIES = 8  # fresh queue ids to try when one collides with a stored one
_CHUNK = 500  # queue ids per IN list of a read
_BODY_ROWS = 2  # body rows per read of a streamed body: 128 KiB (rows ≤ BODY_CHUNK when written)


class SqlStore:
    """The queue in a SQL database reached through one SQLAlchemy engine."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._hot: HotStatements | None = None

    @classmethod
    def open(cls, url: str, *, timeout: float = 10.0, migrate: bool = True) -> SqlStore:
        """The store on `Database.open(url)`: connected, and migrated to the head."""
        return cls(Database.open(url, timeout=timeout, migrate=migrate))

    @classmethod
    def open_existing(cls, url: str, *, timeout: float = 10.0) -> SqlStore | None:
        """The store on `Database.open_existing(url)`: None for a SQLite queue never created."""
        database = Database.open_existing(url, timeout=timeout)
        return None if database is None else cls(database)

    @classmethod
    def open_reading(cls, url: str, *, timeout: float = 10.0) -> SqlStore | None:
        """The store on `Database.open_reading(url)`: read-only, no migration lock; None when
        nothing was ever queued. For commands that only read (list, show, status, log, mailq)."""
        database = Database.open_reading(url, timeout=timeout)
        return None if database is None else cls(database)

    @property
    def engine(self) -> sa.Engine:
        """The engine, for tools that read or fill the tables directly (tests, benchmarks)."""
        return self._db.engine

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def reading(self, action: str = "read the queue") -> AbstractContextManager[sa.Connection]:
        return self._db.transaction(action, write=False)

    def writing(self, action: str) -> AbstractContextManager[sa.Connection]:
        return self._db.transaction(action)

    def _statements(self) -> HotStatements:
        if self._hot is None:
            self._hot = HotStatements(self._db.engine.dialect)
        return self._hot

    # --- submission -------------------------------------------------------------------------

    def enqueue(self, message: NewMessage, now: float) -> str:
        return self.enqueue_many([message], now)[0]

    def enqueue_many(self, batch: Sequence[NewMessage], now: float) -> list[str]:
        """Store `batch` in one transaction (one commit, one fsync: a group commit); their
        queue ids in order. All or none are stored. On SQLite the rows go in through the
        driver's own connection, as relayd-sendmail's fast path inserts them (SQLAlchemy's
        statement building cost more than the inserts)."""
        if self._db.engine.dialect.name == "sqlite":
            with self._db.transaction("store the message") as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, sqlite3.Connection)
                return fastpath.insert_many(raw, list(batch), now)
        for attempt in range(_ID_TRIES):
            queue_ids = [new_queue_id(now) for _ in batch]
            try:
                with self._db.transaction("store the message") as conn:
                    insert_messages(conn, list(zip(queue_ids, batch, strict=True)), now)
                return queue_ids
            except sa.exc.IntegrityError as exc:
                if "queue_id" not in str(exc.orig) or attempt + 1 == _ID_TRIES:
                    raise
        raise AssertionError("unreachable")

    # --- reading ----------------------------------------------------------------------------

    def get(self, queue_id: str) -> QueuedMessage | None:
        with self.reading() as conn:
            found = load_messages(conn, messages.c.queue_id == queue_id)
        return found[0] if found else None

    def read_data(self, queue_id: str) -> bytes | None:
        with self.reading() as conn:
            chunks = (
                conn.execute(
                    sa.select(bodies.c.data)
                    .join(messages, messages.c.id == bodies.c.message_id)
                    .where(messages.c.queue_id == queue_id)
                    .order_by(bodies.c.seq)
                )
                .scalars()
                .all()
            )
        return b"".join(bytes(chunk) for chunk in chunks) if chunks else None

    def read_body_end(self, queue_id: str) -> bytes | None:
        hot = self._statements()
        with self.reading() as conn:
            return hot.read_body_end(conn, queue_id)

    def read_data_chunks(self, queue_id: str) -> Iterator[bytes]:
        hot = self._statements()
        rows = [(-1, b"")] * _BODY_ROWS  # as if a full read ended before seq 0
        while len(rows) == _BODY_ROWS:
            with self.reading() as conn:
                rows = hot.read_body_part(conn, queue_id, rows[-1][0] + 1, _BODY_ROWS)
            for _, chunk in rows:
                yield chunk

    def listing(
        self, states: Collection[State] | None = None, account: str | None = None
    ) -> Iterator[Listed]:
        return pages(self.reading, states, account)

    def owners_of(self, queue_ids: Collection[str]) -> dict[str, int | None]:
        """The submitting uid of each of `queue_ids` that exists (None: not recorded)."""
        wanted = list(queue_ids)
        found: dict[str, int | None] = {}
        with self.reading() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = sa.select(messages.c.queue_id, messages.c.submitted_uid).where(
                    messages.c.queue_id.in_(chunk)
                )
                found.update({queue_id: uid for queue_id, uid in conn.execute(query)})
        return found

    def states_of(self, queue_ids: Collection[str]) -> dict[str, MessageState]:
        wanted = list(queue_ids)
        found: dict[str, MessageState] = {}
        columns = (
            messages.c.queue_id,
            messages.c.state,
            messages.c.account,
            messages.c.last_attempt_at,
            messages.c.next_attempt_at,
            messages.c.reason,
        )
        with self.reading() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = sa.select(*columns).where(messages.c.queue_id.in_(chunk))
                for queue_id, state, *rest in conn.execute(query):
                    found[queue_id] = MessageState(State(state), *rest)
        return found

    def due_summary(self, now: float) -> Sequence[AccountDue]:
        with self.reading() as conn:
            return [
                AccountDue(account, next_at is not None and next_at <= now, next_at)
                for account, next_at in conn.execute(DUE_BY_ACCOUNT)
            ]

    def attempts(self, queue_id: str) -> Sequence[Attempt]:
        query = (
            sa.select(attempts)
            .join(messages, messages.c.id == attempts.c.message_id)
            .where(messages.c.queue_id == queue_id)
            .order_by(attempts.c.started_at, attempts.c.id)
        )
        with self.reading() as conn:
            return [attempt_from_row(row) for row in conn.execute(query)]

    # --- the runner's side ------------------------------------------------------------------

    def claim_due(
        self,
        account: str | None,
        now: float,
        lease_seconds: float,
        owner: str,
        limit: int = 100,
        *,
        queue_ids: Sequence[str] | None = None,
    ) -> Sequence[QueuedMessage]:
        return self.build_claimed(
            self.claim_rows(account, now, lease_seconds, owner, limit, queue_ids=queue_ids)
        )

    def claim_rows(
        self,
        account: str | None,
        now: float,
        lease_seconds: float,
        owner: str,
        limit: int,
        *,
        queue_ids: Sequence[str] | None = None,
    ) -> ClaimedRows:
        hot = self._statements()
        with self._db.transaction("claim messages") as conn:
            return hot.claim_rows(conn, account, now, lease_seconds, owner, limit, queue_ids)

    @staticmethod
    def build_claimed(claimed: ClaimedRows) -> list[QueuedMessage]:
        return build_claimed(claimed)

    def read_data_many(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        if not queue_ids:
            return {}
        hot = self._statements()
        with self.reading() as conn:
            return hot.read_bodies(conn, queue_ids)

    def prepare(self, record: AttemptRecord) -> PreparedRecord:
        return self._statements().prepare(record)

    def commit_prepared(self, batch: Sequence[PreparedRecord]) -> list[bool]:
        if not batch:
            return []
        hot = self._statements()
        with self._db.transaction("record the attempt") as conn:
            return hot.commit(conn, batch)

    def leases(
        self,
        *,
        expired_by: float | None = None,
        owner_prefix: str | None = None,
        keep: Collection[str] = (),
    ) -> list[Lease]:
        condition: Any = messages.c.state == State.SENDING.value
        if expired_by is not None:
            condition = sa.and_(condition, messages.c.lease_until <= expired_by)
        if owner_prefix is not None:
            prefix = sa.func.substr(messages.c.lease_owner, 1, len(owner_prefix))
            condition = sa.and_(condition, prefix == owner_prefix)
        if keep:
            condition = sa.and_(condition, messages.c.lease_owner.not_in(list(keep)))
        query = sa.select(messages.c.queue_id, messages.c.lease_owner).where(condition)
        with self.reading("read the leases") as conn:
            return [Lease(queue_id, owner or "") for queue_id, owner in conn.execute(query)]

    def extend_lease(self, owner: str, until: float) -> int:
        return len(
            self._update(
                "extend leases",
                sa.and_(messages.c.state == State.SENDING.value, messages.c.lease_owner == owner),
                lease_until=until,
            )
        )

    def release_leases(
        self,
        leases: Sequence[Lease],
        now: float,
        *,
        interrupted: Collection[str] = (),
        next_attempt_at: float | None = None,
        network_failure: bool | None = None,
    ) -> tuple[str, ...]:
        if not leases:
            return ()
        with self._db.transaction("return leases") as conn:
            return leases_module.release(
                conn, leases, now, interrupted, next_attempt_at, network_failure
            )

    def defer_due(
        self, account: str, now: float, until: float, *, network_failure: bool
    ) -> tuple[str, ...]:
        return self._update(
            "defer the account's mail",
            sa.and_(
                messages.c.state == State.QUEUED.value,
                messages.c.account == account,
                messages.c.next_attempt_at <= now,
            ),
            next_attempt_at=until,
            network_failure=network_failure,
        )

    def purge_bodies(
        self, sent_before: float, failed_before: float, *, stop: Callable[[], bool] | None = None
    ) -> int:
        return retain.purge(self._db, sent_before, failed_before, stop=stop)

    def reclaim_space(self) -> int:
        return retain.reclaim(self._db)

    # --- the user's side (relayd queue …) ---------------------------------------------------

    def hold(self, queue_ids: Iterable[str], reason: str) -> tuple[str, ...]:
        named = messages.c.queue_id.in_(tuple(queue_ids))
        with self._db.transaction("hold messages") as conn:
            now_held = self._changed(
                conn,
                sa.and_(named, messages.c.state == State.QUEUED.value),
                state=State.HELD.value,
                reason=reason,
            )
            # Being sent: the hold applies when the attempt ends (its result stays consistent).
            later = self._changed(
                conn,
                sa.and_(named, messages.c.state == State.SENDING.value),
                hold_reason=reason,
            )
        return now_held + later

    def release(self, queue_ids: Iterable[str], now: float) -> tuple[str, ...]:
        named = messages.c.queue_id.in_(tuple(queue_ids))
        with self._db.transaction("release messages") as conn:
            released = self._changed(
                conn,
                sa.and_(named, messages.c.state == State.HELD.value),
                state=State.QUEUED.value,
                next_attempt_at=now,
                reason=None,
            )
            pending = self._changed(
                conn,
                sa.and_(
                    named,
                    messages.c.state == State.SENDING.value,
                    messages.c.hold_reason.is_not(None),
                ),
                hold_reason=None,
            )
        return released + pending

    def make_due(
        self,
        now: float,
        queue_ids: Iterable[str] | None = None,
        account: str | None = None,
        *,
        network_only: bool = False,
    ) -> tuple[str, ...]:
        condition = messages.c.state == State.QUEUED.value
        if network_only:
            condition = sa.and_(condition, messages.c.network_failure)
        if queue_ids is not None:
            condition = sa.and_(condition, messages.c.queue_id.in_(tuple(queue_ids)))
        if account is not None:
            condition = sa.and_(condition, messages.c.account == account)
        return self._update("flush messages", condition, next_attempt_at=now)

    def delete(self, queue_ids: Iterable[str], *, now: float | None = None) -> tuple[str, ...]:
        condition: sa.ColumnElement[bool] = messages.c.queue_id.in_(tuple(queue_ids))
        if now is not None:
            in_flight = sa.and_(
                messages.c.state == State.SENDING.value, messages.c.lease_until > now
            )
            condition = sa.and_(condition, sa.not_(in_flight))
        statement = messages.delete().where(condition).returning(messages.c.queue_id)
        with self._db.transaction("delete messages") as conn:
            return tuple(conn.execute(statement).scalars())

    def _update(self, action: str, condition: Any, **values: Any) -> tuple[str, ...]:
        """One UPDATE of the messages matching `condition`; the queue ids it changed."""
        with self._db.transaction(action) as conn:
            return self._changed(conn, condition, **values)

    @staticmethod
    def _changed(conn: sa.Connection, condition: Any, **values: Any) -> tuple[str, ...]:
        statement = (
            messages.update().where(condition).values(**values).returning(messages.c.queue_id)
        )
        return tuple(conn.execute(statement).scalars())
