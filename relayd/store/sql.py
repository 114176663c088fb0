"""SqlStore: the queue on SQLAlchemy Core, one implementation for SQLite and PostgreSQL.

Every method is one transaction. Time is always a parameter (`now`), never read here. Claimed
rows are leased (state `sending`, owner, expiry), never deleted; an expired lease goes back to
`queued` with `release_stale`. Driver failures surface as QueueError (exit 73 or 75).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from relayd.store import failures
from relayd.store.dialects import describe, from_dbapi, make_engine, reader
from relayd.store.ids import new_queue_id
from relayd.store.migrate import ensure_schema
from relayd.store.queued import Attempt, Outcome, QueuedMessage, Recipient
from relayd.store.records import NewMessage, RecipientState, State
from relayd.store.rows import (
    attempt_from_row,
    attempt_row,
    find_message_id,
    load_messages,
    update_recipients,
)
from relayd.store.tables import attempts, messages, recipients

_ID_TRIES = 8
_BUGS = (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError)


class SqlStore:
    """The queue in a SQL database reached through one SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine, *, where: str = "the queue", timeout: float = 10.0):
        self._engine = engine
        self._reader = reader(engine)
        self._where = where
        self._timeout = timeout

    @classmethod
    def open(cls, url: str, *, timeout: float = 10.0, migrate: bool = True) -> SqlStore:
        """Connect to `url` (creating a SQLite file privately) and migrate it to the head."""
        where = describe(url)
        try:
            engine = make_engine(url, timeout=timeout)
        except OSError as exc:
            raise failures.from_os(exc, where, "open the queue") from None
        store = cls(engine, where=where, timeout=timeout)
        if migrate:
            try:
                ensure_schema(engine)
            except sa.exc.DBAPIError as exc:
                engine.dispose()
                raise from_dbapi(exc, where, "open the queue", timeout) from None
            except BaseException:
                engine.dispose()
                raise
        return store

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, action: str, *, write: bool = True) -> Iterator[sa.Connection]:
        try:
            with (self._engine if write else self._reader).begin() as conn:
                yield conn
        except _BUGS:
            raise
        except sa.exc.DBAPIError as exc:
            raise from_dbapi(exc, self._where, action, self._timeout) from None

    # --- submission -------------------------------------------------------------------------

    def enqueue(self, message: NewMessage, now: float) -> str:
        """Store `message` with all its recipients pending, due at `now`; return its queue id."""
        for attempt in range(_ID_TRIES):
            queue_id = new_queue_id(now)
            try:
                with self._transaction("store the message") as conn:
                    self._insert(conn, queue_id, message, now)
                return queue_id
            except sa.exc.IntegrityError as exc:
                if "queue_id" not in str(exc.orig) or attempt + 1 == _ID_TRIES:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _insert(conn: sa.Connection, queue_id: str, message: NewMessage, now: float) -> None:
        result = conn.execute(
            messages.insert().values(
                queue_id=queue_id,
                state=State.QUEUED.value,
                account=message.account,
                config_file=message.config_file,
                overrides=[list(pair) for pair in message.overrides],
                sender=message.sender,
                size=len(message.data),
                data=message.data,
                needs_smtputf8=message.smtputf8,
                needs_8bitmime=message.eightbit,
                created_at=now,
                next_attempt_at=now,
                attempts=0,
                submitted_uid=message.uid,
            )
        )
        (message_id,) = result.inserted_primary_key or (None,)
        conn.execute(
            recipients.insert(),
            [
                {
                    "message_id": message_id,
                    "position": position,
                    "address": address,
                    "state": RecipientState.PENDING.value,
                }
                for position, address in enumerate(message.recipients)
            ],
        )

    # --- reading ----------------------------------------------------------------------------

    def get(self, queue_id: str) -> QueuedMessage | None:
        """The message with `queue_id` (without its body), or None."""
        with self._transaction("read the queue", write=False) as conn:
            found = load_messages(conn, messages.c.queue_id == queue_id)
        return found[0] if found else None

    def read_data(self, queue_id: str) -> bytes | None:
        """The stored wire bytes of `queue_id`, or None if there is no such message."""
        with self._transaction("read the queue", write=False) as conn:
            data = conn.execute(
                sa.select(messages.c.data).where(messages.c.queue_id == queue_id)
            ).scalar_one_or_none()
        return None if data is None else bytes(data)

    def list(
        self, state: State | None = None, account: str | None = None
    ) -> Sequence[QueuedMessage]:
        """Messages in arrival order, optionally only one state and/or account."""
        conditions = []
        if state is not None:
            conditions.append(messages.c.state == state.value)
        if account is not None:
            conditions.append(messages.c.account == account)
        with self._transaction("read the queue", write=False) as conn:
            return load_messages(conn, sa.and_(sa.true(), *conditions))

    def attempts(self, queue_id: str) -> Sequence[Attempt]:
        """Every attempt logged for `queue_id`, oldest first."""
        query = (
            sa.select(attempts)
            .join(messages, messages.c.id == attempts.c.message_id)
            .where(messages.c.queue_id == queue_id)
            .order_by(attempts.c.started_at, attempts.c.id)
        )
        with self._transaction("read the queue", write=False) as conn:
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
        """Lease up to `limit` queued messages due at `now` (of `account`, or any if None;
        only those of `queue_ids` when given, as `relayd-sendmail -odi` does for its own).

        Atomic across processes and hosts: SQLite's BEGIN IMMEDIATE, PostgreSQL's
        FOR UPDATE SKIP LOCKED (two runners never get the same message, nor wait on each other).
        """
        due = sa.select(messages.c.id).where(
            messages.c.state == State.QUEUED.value, messages.c.next_attempt_at <= now
        )
        if account is not None:
            due = due.where(messages.c.account == account)
        if queue_ids is not None:
            due = due.where(messages.c.queue_id.in_(list(queue_ids)))
        due = (
            due.order_by(messages.c.next_attempt_at, messages.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            messages.update()
            .where(messages.c.id.in_(due.scalar_subquery()))
            .values(state=State.SENDING.value, lease_owner=owner, lease_until=now + lease_seconds)
            .returning(messages.c.id)
        )
        with self._transaction("claim messages") as conn:
            claimed = conn.execute(claim).scalars().all()
            if not claimed:
                return []
            return load_messages(conn, messages.c.id.in_(claimed), by_due=True)

    def release_stale(self, now: float) -> tuple[str, ...]:
        """Return messages whose lease expired by `now` (a runner died) to `queued`."""
        return self._update(
            "release expired leases",
            sa.and_(messages.c.state == State.SENDING.value, messages.c.lease_until <= now),
            state=State.QUEUED.value,
            lease_owner=None,
            lease_until=None,
        )

    def mark_recipients(self, queue_id: str, results: Iterable[Recipient]) -> None:
        """Commit per-recipient results at once (right after the server's final reply)."""
        with self._transaction("record delivery") as conn:
            message_id = find_message_id(conn, queue_id)
            if message_id is not None:
                update_recipients(conn, message_id, results)

    def record_attempt(
        self, queue_id: str, attempt: Attempt, outcome: Outcome, *, owner: str | None = None
    ) -> bool:
        """Log `attempt`, apply its recipient results and move the message per `outcome`.

        The attempts row is always written. The message changes state only if it is still
        leased by `owner` (when given): a runner whose lease expired, or whose message was held
        or deleted meanwhile, does not overwrite the newer state. Returns whether it changed.
        """
        if outcome.state is State.SENDING:
            raise ValueError("an attempt cannot end in state 'sending'")
        if outcome.state is State.QUEUED and outcome.next_attempt_at is None:
            raise ValueError("a retry needs next_attempt_at")
        with self._transaction("record the attempt") as conn:
            message_id = find_message_id(conn, queue_id)
            if message_id is None:
                return False
            conn.execute(attempts.insert().values(attempt_row(message_id, attempt)))
            update_recipients(conn, message_id, attempt.recipients)
            update = (
                messages.update()
                .where(messages.c.id == message_id)
                .values(
                    state=outcome.state.value,
                    next_attempt_at=outcome.next_attempt_at,
                    reason=outcome.reason,
                    lease_owner=None,
                    lease_until=None,
                    attempts=messages.c.attempts + 1,
                )
            )
            if owner is not None:
                update = update.where(
                    messages.c.state == State.SENDING.value, messages.c.lease_owner == owner
                )
            return conn.execute(update).rowcount == 1

    # --- the user's side (relayd queue …) ---------------------------------------------------

    def hold(self, queue_ids: Iterable[str], reason: str) -> tuple[str, ...]:
        """Hold queued or in-flight messages (a runner's later result will not release them)."""
        return self._update(
            "hold messages",
            sa.and_(
                messages.c.queue_id.in_(tuple(queue_ids)),
                messages.c.state.in_((State.QUEUED.value, State.SENDING.value)),
            ),
            state=State.HELD.value,
            reason=reason,
            lease_owner=None,
            lease_until=None,
        )

    def release(self, queue_ids: Iterable[str], now: float) -> tuple[str, ...]:
        """Put held messages back in the queue, due at `now`."""
        return self._update(
            "release messages",
            sa.and_(
                messages.c.queue_id.in_(tuple(queue_ids)), messages.c.state == State.HELD.value
            ),
            state=State.QUEUED.value,
            next_attempt_at=now,
            reason=None,
        )

    def make_due(
        self, now: float, queue_ids: Iterable[str] | None = None, account: str | None = None
    ) -> tuple[str, ...]:
        """Make queued messages (all, some, or one account's) due at `now` (`queue flush`)."""
        condition = messages.c.state == State.QUEUED.value
        if queue_ids is not None:
            condition = sa.and_(condition, messages.c.queue_id.in_(tuple(queue_ids)))
        if account is not None:
            condition = sa.and_(condition, messages.c.account == account)
        return self._update("flush messages", condition, next_attempt_at=now)

    def delete(self, queue_ids: Iterable[str]) -> tuple[str, ...]:
        """Delete messages with their recipients and attempts, in any state."""
        statement = (
            messages.delete()
            .where(messages.c.queue_id.in_(tuple(queue_ids)))
            .returning(messages.c.queue_id)
        )
        with self._transaction("delete messages") as conn:
            return tuple(conn.execute(statement).scalars())

    def _update(self, action: str, condition: Any, **values: Any) -> tuple[str, ...]:
        statement = (
            messages.update().where(condition).values(**values).returning(messages.c.queue_id)
        )
        with self._transaction(action) as conn:
            return tuple(conn.execute(statement).scalars())
