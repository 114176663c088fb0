"""Conversions between table rows and the store's records (JSON columns included), both ways."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from relayd.store.fastpath import BodyRows
from relayd.store.fromrows import (
    RECIPIENT_COLUMNS,
    SUMMARY_COLUMNS,
    message_from_row,
    recipient_from_row,
)
from relayd.store.fromrows import (
    attempt_from_row as attempt_from_row,
)
from relayd.store.queued import Attempt, QueuedMessage, Recipient, RecipientState, State
from relayd.store.submitted import NewMessage
from relayd.store.tables import bodies, messages, recipients

# Everything but the body (listing 100,000 messages must not read their data), in the order
# `message_from_row` unpacks; overrides as text.
SUMMARY = tuple(
    sa.type_coerce(messages.c.overrides, sa.Text()).label(name)
    if name == "overrides"
    else messages.c[name]
    for name in SUMMARY_COLUMNS
)
RECIPIENT = tuple(recipients.c[name] for name in RECIPIENT_COLUMNS)


def _reply_json(recipient: Recipient) -> dict[str, Any]:
    return {
        "position": recipient.position,
        "address": recipient.address,
        "state": recipient.state.value,
        "code": recipient.reply_code,
        "text": recipient.reply_text,
    }


def attempt_row(message_id: int, attempt: Attempt) -> dict[str, Any]:
    """The `attempts` row for `attempt` of message `message_id`."""
    return {
        "message_id": message_id,
        "started_at": attempt.started_at,
        "duration": attempt.duration,
        "host": attempt.host,
        "tls": attempt.tls,
        "auth": attempt.auth,
        "exit_code": attempt.exit_code,
        "reply_code": attempt.reply_code,
        "reply": attempt.reply,
        "recipient_replies": [_reply_json(r) for r in attempt.recipients],
        "possible_duplicate": attempt.possible_duplicate,
        "note": attempt.note,
    }


_BATCH = 16  # body rows inserted by one statement (1 MiB)


def insert_message(conn: sa.Connection, queue_id: str, message: NewMessage, now: float) -> None:
    """Insert `message` as `queue_id`, due and arrived at `now`, every recipient pending."""
    result = conn.execute(
        messages.insert().values(
            queue_id=queue_id,
            state=State.QUEUED.value,
            account=message.account,
            config_file=message.config_file,
            overrides=[list(pair) for pair in message.overrides],
            sender=message.sender,
            size=0 if message.body is not None else len(message.data),
            needs_smtputf8=message.smtputf8,
            needs_8bitmime=message.eightbit,
            created_at=now,
            next_attempt_at=now,
            attempts=0,
            submitted_uid=message.uid,
            submitted_user=message.user,
        )
    )
    (message_id,) = result.inserted_primary_key or (None,)
    rows = BodyRows(message_id, message)
    batch: list[dict[str, Any]] = []
    for _, seq, chunk in rows:  # a streamed body: _BATCH rows in memory at a time
        batch.append({"message_id": message_id, "seq": seq, "data": chunk})
        if len(batch) == _BATCH:
            conn.execute(bodies.insert(), batch)
            batch = []
    if batch:
        conn.execute(bodies.insert(), batch)
    if message.body is not None:
        conn.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(size=rows.size, needs_8bitmime=rows.eightbit)
        )
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


def insert_messages(
    conn: sa.Connection, batch: Sequence[tuple[str, NewMessage]], now: float
) -> None:
    """Insert each (queue id, message) of `batch` as `insert_message` does, in the caller's
    transaction (a group commit's)."""
    for queue_id, message in batch:
        insert_message(conn, queue_id, message, now)


def join_messages(
    rows: Sequence[Sequence[Any]], recipient_rows: Iterable[Sequence[Any]]
) -> list[QueuedMessage]:
    """Summary rows (`SUMMARY` order) and recipient rows (`RECIPIENT` order, by message and
    position) as QueuedMessages, in the order of `rows`; recipients of other messages are
    ignored."""
    by_message: dict[int, list[Recipient]] = {row[0]: [] for row in rows}
    for row in recipient_rows:
        found = by_message.get(row[0])
        if found is not None:
            found.append(recipient_from_row(row))
    return [message_from_row(row, tuple(by_message[row[0]])) for row in rows]


def load_messages(
    conn: sa.Connection, condition: Any, *, by_due: bool = False
) -> list[QueuedMessage]:
    """Messages matching `condition` with their recipients: two queries, joined in Python."""
    order = (
        (messages.c.next_attempt_at, messages.c.id)
        if by_due
        else (messages.c.created_at, messages.c.id)
    )
    rows = conn.execute(sa.select(*SUMMARY).where(condition).order_by(*order)).all()
    if not rows:
        return []
    recipient_rows = conn.execute(
        sa.select(*RECIPIENT)
        .join(messages, messages.c.id == recipients.c.message_id)
        .where(condition)
        .order_by(recipients.c.message_id, recipients.c.position)
    )
    return join_messages(rows, recipient_rows)
