"""The queue listing read (`queue list`, `mailq`): batches in row id order, recipients aggregated.

A listing of 100,000 messages must take well under two seconds, so it reads only the columns a
listing prints, aggregates each message's recipients into one JSON array in the database (one
row a message, no Python-side join) and builds light tuples instead of `QueuedMessage`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import sqlalchemy as sa

from relayd.store.fromrows import reply_text
from relayd.store.prepared import Prepared
from relayd.store.records import State
from relayd.store.tables import messages, recipients, state_off_the_due_index


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


def _query(
    dialect: sa.Dialect, states: Collection[State] | None, account: str | None, *, paged: bool
) -> Prepared:
    """The listing's query: messages after row id `after`, in row id order; with `paged`, up
    to `limit` of them."""
    # The row id first: the read walks the table in its key order and stops after `limit`
    # rows, never reading and sorting every listed message before the first row.
    state = state_off_the_due_index(dialect)
    condition: sa.ColumnElement[bool] = messages.c.id > sa.bindparam("after")
    if states is not None:
        literal: list[sa.ColumnElement[Any]] = [
            sa.literal_column(f"'{State(s).value}'") for s in states
        ]
        condition = sa.and_(condition, state.in_(literal))
    if account is not None:
        condition = sa.and_(condition, messages.c.account == sa.bindparam("account"))
    query = (
        sa.select(
            messages.c.id,
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
            _packed(dialect.name),
        )
        .join(recipients, recipients.c.message_id == messages.c.id)
        .where(condition)
        .group_by(messages.c.id)
        .order_by(messages.c.id)
    )
    if paged:
        query = query.limit(sa.bindparam("limit", type_=sa.Integer()))
    return Prepared(query, dialect)


def _page(
    conn: sa.Connection, prepared: Prepared, account: str | None, after: int, limit: int
) -> Iterator[tuple[int, Listed]]:
    """(row id, message) of the listed messages after row id `after`, up to `limit`.

    Run on the driver's cursor (`Prepared`): SQLAlchemy's row processing would cost more than
    the query itself at 100,000 rows. The states are constants of this module, so they are
    compiled into the SQL; the account is a bound parameter.
    """
    params: dict[str, Any] = {"after": after, "limit": limit}
    if account is not None:
        params["account"] = account
    make, recipient = Listed._make, ListedRecipient._make
    for row in prepared.rows(conn, prepared.args(params), _BATCH):
        packed = row[12]
        found = _scan(packed, 0)[0] if isinstance(packed, str) else packed
        if len(found) > 1:
            found.sort()
        yield row[0], make((*row[1:12], tuple([recipient(item[1:]) for item in found])))


def listing(
    conn: sa.Connection, states: Collection[State] | None, account: str | None
) -> Iterator[Listed]:
    """Messages in arrival (row id) order, optionally only `states` and/or one `account`, in
    `conn`'s one transaction."""
    prepared = _query(conn.dialect, states, account, paged=False)
    for _, message in _page(conn, prepared, account, 0, 0):
        yield message


def pages(
    reading: Callable[[], AbstractContextManager[sa.Connection]],
    states: Collection[State] | None,
    account: str | None,
    batch: int = _BATCH,
) -> Iterator[Listed]:
    """`listing`, read `batch` messages at a time, each batch in its own read transaction
    from `reading()`: the first line shows after one batch whatever the queue's depth, and no
    read snapshot is held while a slow reader takes a million lines (a long-lived reader
    keeps SQLite's WAL from being checkpointed). A message is listed at most once (row ids
    only grow); one that changes between batches shows as it was when its batch was read.
    """
    after = 0
    prepared: Prepared | None = None
    while True:
        with reading() as conn:
            if prepared is None:
                prepared = _query(conn.dialect, states, account, paged=True)
            found = list(_page(conn, prepared, account, after, batch))
        for _, message in found:
            yield message
        if len(found) < batch:
            return
        after = found[-1][0]
