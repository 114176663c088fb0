"""The runner's hot statements, compiled once per dialect: the claim, group-commit writes, reads.

There is one claim: the daemon's runner, an in-process `queue flush` and `relayd-sendmail -odi`
all lease mail with the same statement, so they follow the same lease rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from relayd.store.prepared import ClaimedRows, Prepared, PreparedRecord
from relayd.store.queued import AttemptRecord, Outcome, QueuedMessage, Recipient
from relayd.store.records import State
from relayd.store.rows import RECIPIENT, SUMMARY, attempt_row, join_messages
from relayd.store.tables import attempts, bodies, messages, recipients, state_off_the_due_index

LATE = "late"  # attempts.note of a result that came back after its lease was lost


def check_outcome(outcome: Outcome) -> None:
    if outcome.state is State.SENDING:
        raise ValueError("an attempt cannot end in state 'sending'")
    if outcome.state is State.QUEUED and outcome.next_attempt_at is None:
        raise ValueError("a retry needs next_attempt_at")


def message_params(record: AttemptRecord) -> dict[str, Any]:
    outcome = record.outcome
    return {
        "b_queue_id": record.queue_id,
        "b_owner": record.owner,
        "b_state": outcome.state.value,
        "b_next": outcome.next_attempt_at,
        "b_reason": outcome.reason,
        "b_last": None if record.attempt is None else record.attempt.started_at,
        "b_network": outcome.network_failure,
        "b_delay": outcome.delay_notified,
        "b_lost": outcome.possible_duplicate,
        "b_tries": 0 if record.attempt is None else 1,
    }


def recipient_params(queue_id: str, results: Iterable[Recipient]) -> list[dict[str, Any]]:
    """Parameters of the `recipients` statement: one dict per recipient result."""
    return [
        {
            "b_queue_id": queue_id,
            "b_position": result.position,
            "b_state": result.state.value,
            "b_code": result.reply_code,
            "b_text": result.reply_text,
        }
        for result in results
    ]


def _finish() -> sa.ClauseElement:
    """The message's new state after an attempt; with `b_owner`, only while that runner still
    holds its lease (None: unconditionally). A hold asked for during the attempt
    (`hold_reason`) turns a retry into `held`; a message that is done stays done."""
    owner = sa.bindparam("b_owner", type_=sa.Text())
    state = sa.bindparam("b_state", type_=sa.Text())
    hold = sa.and_(messages.c.hold_reason.is_not(None), state == State.QUEUED.value)
    return (
        messages.update()
        .where(
            messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text()),
            sa.or_(
                owner.is_(None),
                sa.and_(messages.c.state == State.SENDING.value, messages.c.lease_owner == owner),
            ),
        )
        .values(
            state=sa.case((hold, State.HELD.value), else_=state),
            next_attempt_at=sa.bindparam("b_next"),
            reason=sa.case(
                (hold, messages.c.hold_reason),
                else_=sa.bindparam("b_reason", type_=sa.Text()),
            ),
            hold_reason=None,
            last_attempt_at=sa.func.coalesce(
                sa.bindparam("b_last", type_=sa.Double()), messages.c.last_attempt_at
            ),
            network_failure=sa.bindparam("b_network"),
            delay_notified=sa.or_(
                messages.c.delay_notified, sa.bindparam("b_delay", type_=sa.Boolean())
            ),
            lease_owner=None,
            lease_until=None,
            lease_lost=sa.bindparam("b_lost", type_=sa.Boolean()),
            attempts=messages.c.attempts + sa.bindparam("b_tries", type_=sa.Integer()),
        )
    )


def _message_id() -> sa.ScalarSelect[Any]:
    """The id of the message `b_queue_id` (the prepared rows name messages by queue id)."""
    return (
        sa.select(messages.c.id)
        .where(messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text()))
        .scalar_subquery()
    )


DUE = [column.name for column in SUMMARY].index("next_attempt_at")


def _elements(
    array: sa.BindParameter[str], dialect: sa.Dialect, type_: sa.types.TypeEngine[Any]
) -> sa.Select[Any]:
    """The elements of the JSON array `array`, one row each, as `type_` (for an IN).

    One parameter however long the list, so the statement is compiled once, and the database
    hashes the list whatever plan it caches (PostgreSQL's generic plan of `= ANY($1)` compares
    each row with every element: seconds for a flush naming 10,000 messages).
    """
    if dialect.name == "postgresql":
        values = sa.func.json_array_elements_text(sa.cast(array, sa.JSON)).table_valued("value")
        return sa.select(sa.cast(values.c.value, type_))
    # SQLite's json_each gives numbers as integers and strings as text already.
    return sa.select(sa.func.json_each(array).table_valued("value").c.value)


def _claim(dialect: sa.Dialect, *, by_account: bool, listed: bool) -> sa.ClauseElement:
    """Lease the `b_limit` earliest due messages (of `b_account` with `by_account`; only those
    named in the JSON array `b_queue_ids` with `listed`) to `b_owner` until `b_until`;
    RETURNING their summary rows (as they are after the claim).

    One statement per shape rather than `(:account IS NULL OR account = :account)`: with such
    an OR neither SQLite nor PostgreSQL can seek `ix_messages_due` on (state, account,
    next_attempt_at), so every claim read and sorted all queued mail (38 ms a claim at 100,000
    queued, the drain falling from 3,200 to 1,960 messages/s). Bound to an account, the claim
    reads the index in order and stops after `b_limit` entries, whatever the depth.
    """
    # Named messages (`-odi`, `queue flush ID…`) are found by their queue ids, not among all
    # queued mail of the due index.
    state = state_off_the_due_index(dialect) if listed else messages.c.state
    conditions: list[sa.ColumnElement[bool]] = [
        state == State.QUEUED.value,
        messages.c.next_attempt_at <= sa.bindparam("b_now", type_=sa.Double()),
    ]
    if by_account:
        conditions.append(messages.c.account == sa.bindparam("b_account", type_=sa.Text()))
    if listed:
        named = _elements(sa.bindparam("b_queue_ids", type_=sa.Text()), dialect, sa.Text())
        conditions.append(messages.c.queue_id.in_(named))
    due = (
        sa.select(messages.c.id)
        .where(*conditions)
        .order_by(messages.c.next_attempt_at, messages.c.id)
        .limit(sa.bindparam("b_limit", type_=sa.Integer()))
        .with_for_update(skip_locked=True)
    )
    chosen: sa.ColumnElement[bool] = messages.c.id.in_(due.scalar_subquery())
    if dialect.name == "postgresql":
        # `id = ANY(an array)`: PostgreSQL then fetches the claimed rows by key; with `IN
        # (subquery)` it hash-joins them with a read of the whole table up to ~100,000 rows.
        claimed = due.subquery()
        ids = sa.select(sa.func.array_agg(claimed.c.id)).scalar_subquery()
        chosen = messages.c.id == sa.any_(sa.cast(ids, sa.ARRAY(sa.BigInteger())))
    return (
        messages.update()
        .where(chosen)
        .values(
            state=State.SENDING.value,
            lease_owner=sa.bindparam("b_owner", type_=sa.Text()),
            lease_until=sa.bindparam("b_until", type_=sa.Double()),
        )
        .returning(*SUMMARY)
    )


def _claimed_recipients(dialect: sa.Dialect) -> sa.ClauseElement:
    """The recipients of the messages whose row ids are in the JSON array `b_ids` (the claim
    just made): found through the recipients' key, not by a scan for the claim's lease."""
    ids = _elements(sa.bindparam("b_ids", type_=sa.Text()), dialect, sa.BigInteger())
    return (
        sa.select(*RECIPIENT)
        .where(recipients.c.message_id.in_(ids))
        .order_by(recipients.c.message_id, recipients.c.position)
    )


class HotStatements:
    """The runner's statements: claims and group commits, compiled once for the dialect."""

    def __init__(self, dialect: sa.Dialect) -> None:
        # By (account given, queue ids given): each shape compiled once.
        self.claims = {
            (by_account, listed): Prepared(
                _claim(dialect, by_account=by_account, listed=listed), dialect
            )
            for by_account in (False, True)
            for listed in (False, True)
        }
        # The bodies of the messages named in the JSON array `b_queue_ids`, in one statement
        # (a claim's group of small bodies: one query, not one a message). Ordered by queue id
        # as the queue id index gives them, so SQLite sorts nothing (no copy of the blobs).
        named = _elements(sa.bindparam("b_queue_ids", type_=sa.Text()), dialect, sa.Text())
        self.bodies = Prepared(
            sa.select(messages.c.queue_id, bodies.c.data)
            .join(bodies, bodies.c.message_id == messages.c.id)
            .where(messages.c.queue_id.in_(named))
            .order_by(messages.c.queue_id, bodies.c.seq),
            dialect,
        )
        self.body_part = Prepared(
            sa.select(bodies.c.seq, bodies.c.data)
            .join(messages, messages.c.id == bodies.c.message_id)
            .where(
                messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text()),
                bodies.c.seq >= sa.bindparam("b_from", type_=sa.Integer()),
            )
            .order_by(bodies.c.seq)
            .limit(sa.bindparam("b_limit", type_=sa.Integer())),
            dialect,
        )
        self.body_end = Prepared(
            sa.select(bodies.c.data)
            .join(messages, messages.c.id == bodies.c.message_id)
            .where(messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text()))
            .order_by(bodies.c.seq.desc())
            .limit(1),
            dialect,
        )
        self.claimed_recipients = Prepared(_claimed_recipients(dialect), dialect)
        self.finish = Prepared(_finish(), dialect)
        columns = [c for c in attempts.columns if c.name not in ("id", "message_id")]
        self.attempt = Prepared(
            attempts.insert().from_select(
                ["message_id", *(c.name for c in columns)],
                sa.select(
                    messages.c.id, *(sa.bindparam(c.name, type_=c.type) for c in columns)
                ).where(messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text())),
            ),
            dialect,
        )
        self.recipients = Prepared(
            recipients.update()
            .where(
                recipients.c.message_id == _message_id(),
                recipients.c.position == sa.bindparam("b_position"),
            )
            .values(
                state=sa.bindparam("b_state"),
                reply_code=sa.bindparam("b_code"),
                reply_text=sa.bindparam("b_text"),
            ),
            dialect,
        )

    def claim_rows(
        self,
        conn: sa.Connection,
        account: str | None,
        now: float,
        lease_seconds: float,
        owner: str,
        limit: int,
        queue_ids: Sequence[str] | None,
    ) -> ClaimedRows:
        """Run the claim and read the claimed messages' recipients, in `conn`'s transaction."""
        params = {
            "b_account": account,
            "b_now": now,
            "b_limit": limit,
            "b_owner": owner,
            "b_until": now + lease_seconds,
            "b_queue_ids": None if queue_ids is None else json.dumps(list(queue_ids)),
        }
        claim = self.claims[account is not None, queue_ids is not None]
        rows = claim.fetch(conn, claim.args(params))
        if not rows:
            return ClaimedRows([], [])
        ids = {"b_ids": json.dumps([row[0] for row in rows])}
        return ClaimedRows(
            rows, self.claimed_recipients.fetch(conn, self.claimed_recipients.args(ids))
        )

    def read_bodies(self, conn: sa.Connection, queue_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored wire bytes of each of `queue_ids` that exists."""
        args = self.bodies.args({"b_queue_ids": json.dumps(list(queue_ids))})
        parts: dict[str, list[bytes]] = {}
        for queue_id, data in self.bodies.fetch(conn, args):
            # bytes as SQLite gives them; a driver's buffer (a memoryview) copied once.
            parts.setdefault(queue_id, []).append(data if type(data) is bytes else bytes(data))
        return {
            queue_id: chunks[0] if len(chunks) == 1 else b"".join(chunks)
            for queue_id, chunks in parts.items()
        }

    def read_body_part(
        self, conn: sa.Connection, queue_id: str, first: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` chunk rows of `queue_id`'s body from seq `first` on: (seq, bytes)."""
        params = {"b_queue_id": queue_id, "b_from": first, "b_limit": limit}
        rows = self.body_part.fetch(conn, self.body_part.args(params))
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def read_body_end(self, conn: sa.Connection, queue_id: str) -> bytes | None:
        """The last byte of `queue_id`'s body (b"" if empty); None if it has no body."""
        rows = self.body_end.fetch(conn, self.body_end.args({"b_queue_id": queue_id}))
        return bytes(rows[0][0])[-1:] if rows else None

    def prepare(self, record: AttemptRecord) -> PreparedRecord:
        """`record` as driver arguments of `finish`, `attempt` and `recipients` (pure Python)."""
        check_outcome(record.outcome)
        finish = self.finish.args(message_params(record))
        if record.attempt is None:  # settling a message without an attempt
            return PreparedRecord(finish, None, None, [])
        # The attempt row is found by queue id (`b_queue_id`), so its message id is a
        # placeholder that the statement does not read.
        attempt = attempt_row(0, record.attempt)
        attempt["recipient_replies"] = json.dumps(attempt["recipient_replies"])
        attempt["b_queue_id"] = record.queue_id
        late = {**attempt, "note": LATE}
        return PreparedRecord(
            finish,
            self.attempt.args(attempt),
            self.attempt.args(late),
            [
                self.recipients.args(row)
                for row in recipient_params(record.queue_id, record.attempt.recipients)
            ],
        )

    def commit(self, conn: sa.Connection, batch: Sequence[PreparedRecord]) -> list[bool]:
        """Write prepared records in `conn`'s transaction; whether each moved its message.

        A record whose runner no longer holds the lease changes nothing: only its attempt row
        is written, noted `late` (SPEC §4: a late result of a lost lease).
        """
        changed = self.finish.each(conn, [record.finish for record in batch])
        rows = [
            record.attempt if ok else record.late
            for record, ok in zip(batch, changed, strict=True)
            if record.attempt is not None
        ]
        self.attempt.executemany(conn, rows)
        self.recipients.executemany(
            conn,
            [
                row
                for record, ok in zip(batch, changed, strict=True)
                if ok
                for row in record.recipients
            ],
        )
        return changed


def build_claimed(claimed: ClaimedRows) -> list[QueuedMessage]:
    """The records of a claim's rows, earliest due first."""
    rows = sorted(claimed.messages, key=lambda row: (row[DUE], row[0]))
    return join_messages(rows, claimed.recipients)
