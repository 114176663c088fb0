"""The runner's hot statements, compiled once per dialect: claims, group-commit writes, reads."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from relayd.store.prepared import Prepared
from relayd.store.queued import AttemptRecord, Outcome
from relayd.store.records import State
from relayd.store.rows import RECIPIENT, SUMMARY
from relayd.store.tables import attempts, bodies, messages, recipients


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
        "b_last": record.attempt.started_at,
        "b_network": outcome.network_failure,
        "b_delay": outcome.delay_notified,
    }


def _finish() -> sa.ClauseElement:
    """The message's new state after an attempt; with `b_owner`, only while that runner still
    holds its lease (None: unconditionally, as for `relayd-sendmail -odi`)."""
    owner = sa.bindparam("b_owner", type_=sa.Text())
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
            state=sa.bindparam("b_state"),
            next_attempt_at=sa.bindparam("b_next"),
            reason=sa.bindparam("b_reason"),
            last_attempt_at=sa.bindparam("b_last"),
            network_failure=sa.bindparam("b_network"),
            delay_notified=sa.or_(
                messages.c.delay_notified, sa.bindparam("b_delay", type_=sa.Boolean())
            ),
            lease_owner=None,
            lease_until=None,
            lease_lost=False,
            attempts=messages.c.attempts + 1,
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


def _claim() -> sa.ClauseElement:
    """Lease the `b_limit` earliest due messages of `b_account` (any if NULL) to `b_owner`;
    RETURNING their summary rows (as they are after the claim)."""
    account = sa.bindparam("b_account", type_=sa.Text())
    due = (
        sa.select(messages.c.id)
        .where(
            messages.c.state == State.QUEUED.value,
            messages.c.next_attempt_at <= sa.bindparam("b_now", type_=sa.Double()),
            sa.or_(account.is_(None), messages.c.account == account),
        )
        .order_by(messages.c.next_attempt_at, messages.c.id)
        .limit(sa.bindparam("b_limit", type_=sa.Integer()))
        .with_for_update(skip_locked=True)
    )
    return (
        messages.update()
        .where(messages.c.id.in_(due.scalar_subquery()))
        .values(
            state=State.SENDING.value,
            lease_owner=sa.bindparam("b_owner", type_=sa.Text()),
            lease_until=sa.bindparam("b_until", type_=sa.Double()),
        )
        .returning(*SUMMARY)
    )


def _claimed_recipients() -> sa.ClauseElement:
    """The recipients of what `b_owner` holds until `b_until` (the claim just made)."""
    return (
        sa.select(*RECIPIENT)
        .join(messages, messages.c.id == recipients.c.message_id)
        .where(
            messages.c.lease_owner == sa.bindparam("b_owner", type_=sa.Text()),
            messages.c.lease_until == sa.bindparam("b_until", type_=sa.Double()),
        )
        .order_by(recipients.c.message_id, recipients.c.position)
    )


class HotStatements:
    """The runner's statements: claims and group commits, compiled once for the dialect."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.claim = Prepared(_claim(), dialect)
        self.body = Prepared(
            sa.select(bodies.c.data)
            .join(messages, messages.c.id == bodies.c.message_id)
            .where(messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text())),
            dialect,
        )
        self.claimed_recipients = Prepared(_claimed_recipients(), dialect)
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
