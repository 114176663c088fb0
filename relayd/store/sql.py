"""SqlStore: the queue on SQLAlchemy Core, one implementation for SQLite and PostgreSQL.

Every method is one transaction. Time is always a parameter (`now`), never read here. Claimed
rows are leased (state `sending`, owner, expiry), never deleted; an expired lease goes back to
`queued` with `release_stale`. Driver failures surface as QueueError (exit 73 or 75).
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from relayd.paths import sqlite_path
from relayd.store import failures
from relayd.store.dialects import describe, from_dbapi, make_engine, reader
from relayd.store.hot import DUE, HotStatements, check_outcome, message_params
from relayd.store.ids import new_queue_id
from relayd.store.listing import Listed, listing
from relayd.store.migrate import ensure_schema
from relayd.store.prepared import ClaimedRows, PreparedRecord
from relayd.store.queued import (
    AccountDue,
    Attempt,
    AttemptRecord,
    Outcome,
    QueuedMessage,
    Recipient,
)
from relayd.store.records import NewMessage, RecipientState, State
from relayd.store.rows import (
    attempt_from_row,
    attempt_row,
    find_message_id,
    join_messages,
    load_messages,
    recipient_rows,
    update_recipients,
)
from relayd.store.tables import attempts, bodies, messages, recipients

_ID_TRIES = 8
_BUGS = (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError)


class SqlStore:
    """The queue in a SQL database reached through one SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine, *, where: str = "the queue", timeout: float = 10.0):
        self._engine = engine
        self._reader = reader(engine)
        self._where = where
        self._timeout = timeout
        self._hot: HotStatements | None = None

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

    @classmethod
    def open_existing(cls, url: str, *, timeout: float = 10.0) -> SqlStore | None:
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

    def reading(self, action: str = "read the queue") -> AbstractContextManager[sa.Connection]:
        """A read-only transaction for reports outside this class (`relayd.store.reports`);
        database errors become QueueError naming `action`."""
        return self._transaction(action, write=False)

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

    def enqueue_many(self, batch: Iterable[NewMessage], now: float) -> list[str]:
        """Store many messages in one transaction (imports, benchmarks); their queue ids.

        Ids come from the clock and a random part, like `enqueue`'s; within the batch they
        are kept distinct, and the id's time part moves on a millisecond every 4,096 messages
        so its random part never runs short. All are due and arrived at `now`.
        """
        ids: list[str] = []
        seen: set[str] = set()
        with self._transaction("store the messages") as conn:
            for index, message in enumerate(batch):
                queue_id = new_queue_id(now + (index >> 12) / 1000)
                while queue_id in seen:
                    queue_id = new_queue_id(now + (index >> 12) / 1000)
                seen.add(queue_id)
                self._insert(conn, queue_id, message, now)
                ids.append(queue_id)
        return ids

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
                needs_smtputf8=message.smtputf8,
                needs_8bitmime=message.eightbit,
                created_at=now,
                next_attempt_at=now,
                attempts=0,
                submitted_uid=message.uid,
            )
        )
        (message_id,) = result.inserted_primary_key or (None,)
        conn.execute(bodies.insert().values(message_id=message_id, data=bytes(message.data)))
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
                sa.select(bodies.c.data)
                .join(messages, messages.c.id == bodies.c.message_id)
                .where(messages.c.queue_id == queue_id)
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

    def listing(
        self, states: Collection[State] | None = None, account: str | None = None
    ) -> Iterator[Listed]:
        """Messages in arrival order for a listing, streamed in one read transaction,
        optionally only some states and/or one account."""
        with self._transaction("read the queue", write=False) as conn:
            yield from listing(conn, states, account)

    def states_of(self, queue_ids: Collection[str]) -> dict[str, tuple[State, str, float | None]]:
        """Each existing message's (state, account, last attempt time), in reads of 500 ids."""
        wanted = list(queue_ids)
        found: dict[str, tuple[State, str, float | None]] = {}
        columns = (
            messages.c.queue_id,
            messages.c.state,
            messages.c.account,
            messages.c.last_attempt_at,
        )
        with self._transaction("read the queue", write=False) as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = sa.select(*columns).where(messages.c.queue_id.in_(chunk))
                for queue_id, state, account, last in conn.execute(query):
                    found[queue_id] = (State(state), account, last)
        return found

    def read_data_many(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored wire bytes of several messages in one read (a runner's batch)."""
        if not queue_ids:
            return {}
        hot = self._statements()
        with self._transaction("read the queue", write=False) as conn:
            found = hot.body.each_row(conn, [hot.body.args({"b_queue_id": q}) for q in queue_ids])
        return {q: bytes(row[0]) for q, row in zip(queue_ids, found, strict=True) if row}

    def due_summary(self, now: float) -> Sequence[AccountDue]:
        """Per account with queued mail: how much, how much is due at `now`, the next due time.

        One aggregate over the due index, so a scan costs the same memory with 100,000 queued
        messages as with ten.
        """
        due = sa.func.sum(sa.case((messages.c.next_attempt_at <= now, 1), else_=0))
        query = (
            sa.select(
                messages.c.account,
                sa.func.count(),
                due,
                sa.func.min(messages.c.next_attempt_at),
            )
            .where(messages.c.state == State.QUEUED.value)
            .group_by(messages.c.account)
        )
        with self._transaction("read the queue", write=False) as conn:
            return [
                AccountDue(account, int(count), int(due_count or 0), next_at)
                for account, count, due_count, next_at in conn.execute(query)
            ]

    def counts(self) -> dict[tuple[str, State], int]:
        """How many messages each (account, state) has."""
        query = sa.select(messages.c.account, messages.c.state, sa.func.count()).group_by(
            messages.c.account, messages.c.state
        )
        with self._transaction("read the queue", write=False) as conn:
            return {(account, State(state)): int(n) for account, state, n in conn.execute(query)}

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
        if queue_ids is None:
            return self.build_claimed(self.claim_rows(account, now, lease_seconds, owner, limit))
        due = sa.select(messages.c.id).where(
            messages.c.state == State.QUEUED.value,
            messages.c.next_attempt_at <= now,
            messages.c.queue_id.in_(list(queue_ids)),
        )
        if account is not None:
            due = due.where(messages.c.account == account)
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

    def claim_rows(
        self, account: str | None, now: float, lease_seconds: float, owner: str, limit: int
    ) -> ClaimedRows:
        """`claim_due`'s database half (for a thread): the claimed rows as the driver gives
        them, turned into records by `build_claimed` (on the caller's event loop)."""
        hot = self._statements()
        params = {
            "b_account": account,
            "b_now": now,
            "b_limit": limit,
            "b_owner": owner,
            "b_until": now + lease_seconds,
        }
        with self._transaction("claim messages") as conn:
            rows = hot.claim.fetch(conn, hot.claim.args(params))
            if not rows:
                return ClaimedRows([], [])
            return ClaimedRows(
                rows, hot.claimed_recipients.fetch(conn, hot.claimed_recipients.args(params))
            )

    @staticmethod
    def build_claimed(claimed: ClaimedRows) -> builtins.list[QueuedMessage]:
        """The records of `claim_rows`' rows, earliest due first."""
        rows = sorted(claimed.messages, key=lambda row: (row[DUE], row[0]))
        return join_messages(rows, claimed.recipients)

    def release_stale(
        self, now: float, *, possibly_sent: Collection[str] | None = None
    ) -> tuple[str, ...]:
        """Return messages whose lease expired by `now` (a runner died) to `queued`.

        Each is marked `lease_lost`, so its next attempt is logged as a possible duplicate: the
        runner may have had the server's final reply and died before committing it. A runner
        that knows which of its messages were on the wire (a daemon stopping) passes them as
        `possibly_sent`; then only those are marked.
        """
        lost: Any = sa.true()
        if possibly_sent is not None:
            lost = sa.or_(messages.c.lease_lost, messages.c.queue_id.in_(list(possibly_sent)))
        return self._update(
            "release expired leases",
            sa.and_(messages.c.state == State.SENDING.value, messages.c.lease_until <= now),
            state=State.QUEUED.value,
            lease_owner=None,
            lease_until=None,
            lease_lost=lost,
        )

    def extend_lease(self, owner: str, until: float) -> int:
        """Keep `owner`'s claims leased until `until` (a long batch); how many it holds."""
        return len(
            self._update(
                "extend leases",
                sa.and_(messages.c.state == State.SENDING.value, messages.c.lease_owner == owner),
                lease_until=until,
            )
        )

    def release_owned(self, prefix: str, *, possibly_sent: Collection[str] = ()) -> tuple[str, ...]:
        """Return every message leased by an owner starting with `prefix` (one stopping
        runner's claims, on any database) to `queued`; only `possibly_sent` are marked
        `lease_lost`."""
        owned = sa.func.substr(messages.c.lease_owner, 1, len(prefix)) == prefix
        lost = sa.or_(messages.c.lease_lost, messages.c.queue_id.in_(list(possibly_sent)))
        return self._update(
            "return leases",
            sa.and_(messages.c.state == State.SENDING.value, owned),
            state=State.QUEUED.value,
            lease_owner=None,
            lease_until=None,
            lease_lost=lost,
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
        return self.record_attempts([AttemptRecord(queue_id, attempt, outcome, owner)])[0]

    def record_attempts(self, records: Sequence[AttemptRecord]) -> builtins.list[bool]:
        """`record_attempt` for many messages in one transaction (a group commit: the results
        that arrived while the previous commit was being fsynced); whether each changed."""
        return self.commit_prepared([self.prepare(record) for record in records])

    def prepare(self, record: AttemptRecord) -> PreparedRecord:
        """`record` as driver parameters, ready for `commit_prepared`.

        Pure Python: a runner calls this on its event loop, so the thread that commits holds
        the GIL only for the driver calls (a thread busy in Python would stall the loop's
        every socket call, waiting for the GIL).
        """
        check_outcome(record.outcome)
        hot = self._statements()
        params = message_params(record)
        # The hot statements find the message by its queue id (`b_queue_id`), so the row
        # builders' message id is a placeholder that no statement reads.
        attempt = attempt_row(0, record.attempt)
        attempt["recipient_replies"] = json.dumps(attempt["recipient_replies"])
        attempt["b_queue_id"] = record.queue_id
        recipients = [
            {**row, "b_queue_id": record.queue_id}
            for row in recipient_rows(0, record.attempt.recipients)
        ]
        return PreparedRecord(
            hot.finish.args(params),
            hot.attempt.args(attempt),
            [hot.recipients.args(row) for row in recipients],
        )

    def commit_prepared(self, batch: Sequence[PreparedRecord]) -> builtins.list[bool]:
        """Commit prepared records in one transaction; whether each moved its message.

        The attempts row is always written (if the message still exists); the message changes
        state only while the record's owner still holds its lease.
        """
        if not batch:
            return []
        hot = self._statements()
        with self._transaction("record the attempt") as conn:
            changed = hot.finish.each(conn, [record.finish for record in batch])
            hot.attempt.executemany(conn, [record.attempt for record in batch])
            hot.recipients.executemany(conn, [row for record in batch for row in record.recipients])
        return changed

    def _statements(self) -> HotStatements:
        if self._hot is None:
            self._hot = HotStatements(self._engine.dialect)
        return self._hot

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
        self,
        now: float,
        queue_ids: Iterable[str] | None = None,
        account: str | None = None,
        *,
        network_only: bool = False,
    ) -> tuple[str, ...]:
        """Make queued messages (all, some, or one account's) due at `now` (`queue flush`);
        with `network_only`, those whose last attempt never reached a server (the network is
        back)."""
        condition = messages.c.state == State.QUEUED.value
        if network_only:
            condition = sa.and_(condition, messages.c.network_failure)
        if queue_ids is not None:
            condition = sa.and_(condition, messages.c.queue_id.in_(tuple(queue_ids)))
        if account is not None:
            condition = sa.and_(condition, messages.c.account == account)
        return self._update("flush messages", condition, next_attempt_at=now)

    def delete(self, queue_ids: Iterable[str], *, now: float | None = None) -> tuple[str, ...]:
        """Delete messages with their recipients and attempts, in any state; given `now`, not
        one being sent under a lease that is still valid (its runner would record a result
        for a message that is gone, and the server may already have it)."""
        condition: sa.ColumnElement[bool] = messages.c.queue_id.in_(tuple(queue_ids))
        if now is not None:
            in_flight = sa.and_(
                messages.c.state == State.SENDING.value, messages.c.lease_until > now
            )
            condition = sa.and_(condition, sa.not_(in_flight))
        statement = messages.delete().where(condition).returning(messages.c.queue_id)
        with self._transaction("delete messages") as conn:
            return tuple(conn.execute(statement).scalars())

    def _update(self, action: str, condition: Any, **values: Any) -> tuple[str, ...]:
        statement = (
            messages.update().where(condition).values(**values).returning(messages.c.queue_id)
        )
        with self._transaction(action) as conn:
            return tuple(conn.execute(statement).scalars())
