"""Returning leases: to `queued` (or `held`, if a hold was asked for), interrupted ones noted.

A lease comes back when its runner died (an expired lease, or every lease at the start of the
daemon that holds a SQLite queue's instance lock), when a daemon stops, and for the messages of
a broken batch that never went on the wire. Each message is changed only while the same owner
still holds it, so a lease that was claimed again meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa

from relayd.store.queued import Lease
from relayd.store.records import State
from relayd.store.tables import attempts, messages
from relayd.sysexits import ExitCode

INTERRUPTED = "interrupted"  # attempts.note of an attempt cut off by a kill or a stop
INTERRUPTED_TEXT = "interrupted: relayd stopped before the attempt's result was recorded"


def _held_by() -> sa.ColumnElement[bool]:
    return sa.and_(
        messages.c.queue_id == sa.bindparam("b_queue_id", type_=sa.Text()),
        messages.c.state == State.SENDING.value,
        messages.c.lease_owner == sa.bindparam("b_owner", type_=sa.Text()),
    )


def _interrupted_row() -> sa.Insert:
    """The attempt row of an interrupted attempt, for a message still held by the owner.

    Its data may have reached the server: the row says so (`possible_duplicate` is what the
    attempt itself risked: whether it was already a repeat), and the message's next attempt is
    flagged through `lease_lost`.
    """
    now: sa.BindParameter[float] = sa.bindparam("b_now", type_=sa.Double())
    values: dict[str, Any] = {
        "started_at": now,
        "duration": sa.literal(0.0, sa.Double()),
        "host": sa.literal("", sa.Text()),
        "tls": sa.false(),
        "auth": sa.false(),
        "exit_code": sa.literal(int(ExitCode.TEMPFAIL), sa.Integer()),
        "reply_code": sa.null(),
        "reply": sa.literal(INTERRUPTED_TEXT, sa.Text()),
        "recipient_replies": sa.literal([], sa.JSON()),
        "possible_duplicate": messages.c.lease_lost,
        "note": sa.literal(INTERRUPTED, sa.Text()),
    }
    return attempts.insert().from_select(
        ["message_id", *values], sa.select(messages.c.id, *values.values()).where(_held_by())
    )


def _returned(next_attempt_at: float | None, network_failure: bool | None) -> sa.Update:
    hold = messages.c.hold_reason.is_not(None)
    values: dict[str, Any] = {
        "state": sa.case((hold, State.HELD.value), else_=State.QUEUED.value),
        "reason": sa.case((hold, messages.c.hold_reason), else_=messages.c.reason),
        "hold_reason": None,
        "lease_owner": None,
        "lease_until": None,
        "lease_lost": sa.or_(messages.c.lease_lost, sa.bindparam("b_lost", type_=sa.Boolean())),
        "attempts": messages.c.attempts + sa.bindparam("b_tries", type_=sa.Integer()),
    }
    if next_attempt_at is not None:
        later = messages.c.next_attempt_at > next_attempt_at
        values["next_attempt_at"] = sa.case(
            (later, messages.c.next_attempt_at), else_=next_attempt_at
        )
    if network_failure is not None:
        values["network_failure"] = network_failure
    return messages.update().where(_held_by()).values(**values)


def release(
    conn: sa.Connection,
    leases: Sequence[Lease],
    now: float,
    interrupted: Collection[str],
    next_attempt_at: float | None,
    network_failure: bool | None,
) -> tuple[str, ...]:
    """Return `leases` in `conn`'s transaction; the queue ids returned.

    Those in `interrupted` were on the wire when their runner stopped or died: each gets an
    `interrupted` attempt row and its next attempt is flagged as a possible duplicate. The
    others never went on the wire and keep their state, but for `next_attempt_at` (a later
    time only) and `network_failure` when given (a destination found dead).
    """
    cut = [lease for lease in leases if lease.queue_id in interrupted]
    if cut:
        conn.execute(
            _interrupted_row(),
            [{"b_queue_id": x.queue_id, "b_owner": x.owner, "b_now": now} for x in cut],
        )
    statement = _returned(next_attempt_at, network_failure)
    returned = []
    for lease in leases:
        on_wire = lease.queue_id in interrupted
        params = {
            "b_queue_id": lease.queue_id,
            "b_owner": lease.owner,
            "b_lost": on_wire,
            "b_tries": 1 if on_wire else 0,
        }
        if conn.execute(statement, params).rowcount:
            returned.append(lease.queue_id)
    return tuple(returned)
