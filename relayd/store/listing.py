"""The queue listing read (`queue list`, `mailq`): one streamed query, recipients aggregated.

A listing of 100,000 messages must take well under two seconds, so it reads only the columns a
listing prints, aggregates each message's recipients into one JSON array in the database (one
row a message, no Python-side join) and builds light tuples instead of `QueuedMessage`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from typing import Any, NamedTuple

import sqlalchemy as sa

from relayd.store.prepared import Prepared
from relayd.store.records import State
from relayd.store.tables import messages, recipients


def reply_text(code: int | None, text: str | None) -> str | None:
    """A stored reply as people read it, `CODE text`; None when there is none."""
    if code is None:
        return text or None
    return f"{code} {text or ''}".rstrip()


class ListedRecipient(NamedTuple):
    """One recipient as a listing shows it: its state and the server's last reply to it."""

    address: str
    state: str  # a RecipientState value
    reply_code: int | None
    reply_text: str | None

    @property
    def reply(self) -> str | None:
        """`CODE text` of the last reply, or None when the recipient has none yet."""
        return reply_text(self.reply_code, self.reply_text)


class Listed(NamedTuple):
    """One message as a listing shows it (no body, no overrides, no lease)."""

    queue_id: str
    state: str  # a State value
    account: str
    sender: str
    size: int
    created_at: float
    next_attempt_at: float | None
    attempts: int
    reason: str | None
    owner_uid: int | None  # `submitted_uid`
    owner_user: str | None  # `submitted_user`: the uid's name at submission
    recipients: tuple[ListedRecipient, ...]

    @property
    def owner(self) -> str | None:
        """Who submitted it: the user name, else the uid as text, else None (not recorded)."""
        if self.owner_user is not None:
            return self.owner_user
        return None if self.owner_uid is None else str(self.owner_uid)


_BATCH = 2_000
# The C scanner without json.loads' wrapper and whitespace checks: a third of the read's time.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_PACKED = (
    recipients.c.position,
    recipients.c.address,
    recipients.c.state,
    recipients.c.reply_code,
    recipients.c.reply_text,
)


def _packed(dialect: str) -> sa.ColumnElement[Any]:
    """A message's recipients as one JSON array of [position, address, state, code, text]
    (aggregate order is not guaranteed: `listing` sorts by position)."""
    if dialect == "postgresql":
        return sa.func.json_agg(sa.func.json_build_array(*_PACKED))
    return sa.func.json_group_array(sa.func.json_array(*_PACKED))


def listing(
    conn: sa.Connection, states: Collection[State] | None, account: str | None
) -> Iterator[Listed]:
    """Messages in arrival (row id) order, optionally only `states` and/or one `account`.

    Run on the driver's cursor (`Prepared`): SQLAlchemy's row processing would cost more than
    the query itself at 100,000 rows. The states are constants of this module, so they are
    compiled into the SQL; the account is a bound parameter.
    """
    condition: sa.ColumnElement[bool] = sa.true()
    if states is not None:
        literal: list[sa.ColumnElement[Any]] = [
            sa.literal_column(f"'{State(s).value}'") for s in states
        ]
        condition = sa.and_(condition, messages.c.state.in_(literal))
    if account is not None:
        condition = sa.and_(condition, messages.c.account == sa.bindparam("account"))
    query = (
        sa.select(
            messages.c.queue_id,
            messages.c.state,
            messages.c.account,
            messages.c.sender,
            messages.c.size,
            messages.c.created_at,
            messages.c.next_attempt_at,
            messages.c.attempts,
            messages.c.reason,
            messages.c.submitted_uid,
            messages.c.submitted_user,
            _packed(conn.dialect.name),
        )
        .join(recipients, recipients.c.message_id == messages.c.id)
        .where(condition)
        .group_by(messages.c.id)
        .order_by(messages.c.id)
    )
    prepared = Prepared(query, conn.dialect)
    make, recipient = Listed._make, ListedRecipient._make
    for row in prepared.rows(
        conn, prepared.args({} if account is None else {"account": account}), _BATCH
    ):
        packed = row[11]
        found = _scan(packed, 0)[0] if isinstance(packed, str) else packed
        if len(found) > 1:
            found.sort()
        yield make((*row[:11], tuple([recipient(item[1:]) for item in found])))
