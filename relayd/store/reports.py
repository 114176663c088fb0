"""Report queries in one read transaction: `relayd status`'s aggregates and metrics, `queue log`'s
attempts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from relayd.store import LOG_PAGE
from relayd.store.interface import ReportStore
from relayd.store.queued import Attempt, MailSize, State
from relayd.store.rows import attempt_from_row
from relayd.store.tables import attempts, bodies, messages

PAGE = LOG_PAGE


@dataclass(frozen=True)
class AccountReport:
    """One account in `relayd status`: messages per state, its next retry, its last error.

    `last_error` is the most recent failed or deferred attempt's reply or error, or a held
    message's reason if that is more recent (a hold by relayd, e.g. an account gone from the
    msmtprc, or by the user); `last_error_at` its time (None for a hold of untried mail).
    """

    account: str
    counts: Mapping[State, int]
    next_retry: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True)
class AccountMetrics:
    """What `relayd status --openmetrics` adds to the counts, per account (absent: none).

    `attempts` maps (account, exit code) to the number of attempts recorded in the queue;
    `oldest_waiting` is the submission time of each account's oldest queued or sending message;
    `last_success` the end of each account's latest attempt that exited 0.
    """

    attempts: Mapping[tuple[str, int], int]
    oldest_waiting: Mapping[str, float]
    last_success: Mapping[str, float]


@dataclass(frozen=True)
class LogEntry:
    """One attempt as `relayd queue log` shows it, with what its line needs from the message."""

    id: int  # the attempts row id: `--follow` asks for the rows after the last one seen
    queue_id: str
    sender: str
    attempt: Attempt
    mailsize: int | None  # msmtp's mailsize=, for a successful attempt whose body is stored


def _latest(
    source: sa.FromClause, newest: Sequence[sa.ColumnElement[Any]], *columns: Any, where: Any
) -> sa.Select[Any]:
    """Per account, `columns` (labelled) of the row of `source` that sorts first by `newest`
    descending: one window aggregate, so the database returns one row per account."""
    rank = sa.func.row_number().over(
        partition_by=messages.c.account, order_by=[column.desc() for column in newest]
    )
    ranked = (
        sa.select(messages.c.account, *columns, rank.label("rank"))
        .select_from(source)
        .where(where)
        .subquery()
    )
    return sa.select(*(c for c in ranked.c if c.name != "rank")).where(ranked.c.rank == 1)


def _reply_text(code: int | None, text: str | None) -> str:
    """An attempt's stored reply (or error, without a code) on one line."""
    line = " ".join((text or "").splitlines())
    return f"{code} {line}".strip() if code is not None else line


def account_reports(store: ReportStore) -> list[AccountReport]:
    """Every account with mail, by name, from three aggregates in one read transaction.

    Counts and next retries come from the due index; the last errors from one row per account
    of the failing attempts and the held messages. Nothing is loaded per message, so 100,000
    messages cost the same memory as ten.
    """
    totals = sa.select(
        messages.c.account,
        messages.c.state,
        sa.func.count(),
        sa.func.min(messages.c.next_attempt_at),
    ).group_by(messages.c.account, messages.c.state)
    failing = _latest(
        attempts.join(messages, messages.c.id == attempts.c.message_id),
        (attempts.c.started_at, attempts.c.id),
        attempts.c.started_at.label("at"),
        attempts.c.reply_code,
        attempts.c.reply,
        where=attempts.c.exit_code != 0,
    )
    tried_or_made = sa.func.coalesce(messages.c.last_attempt_at, messages.c.created_at)
    holds = _latest(
        messages,
        (tried_or_made, messages.c.id),
        tried_or_made.label("sort_at"),
        messages.c.last_attempt_at.label("at"),
        messages.c.reason,
        where=sa.and_(messages.c.state == State.HELD.value, messages.c.reason.is_not(None)),
    )
    counts: dict[str, dict[State, int]] = {}
    next_retry: dict[str, float] = {}
    errors: dict[str, tuple[float, str, float | None]] = {}  # account: (sort_at, text, at)
    with store.reading() as conn:
        for account, state, count, due in conn.execute(totals):
            counts.setdefault(account, dict.fromkeys(State, 0))[State(state)] = int(count)
            if state == State.QUEUED.value and due is not None:
                next_retry[account] = due
        for account, at, code, reply in conn.execute(failing):
            errors[account] = (at, _reply_text(code, reply), at)
        for account, sort_at, at, reason in conn.execute(holds):
            if account not in errors or sort_at >= errors[account][0]:
                errors[account] = (sort_at, reason, at)
    return [
        AccountReport(
            account,
            counts[account],
            next_retry.get(account),
            errors[account][1] if account in errors else None,
            errors[account][2] if account in errors else None,
        )
        for account in sorted(counts)
    ]


def account_metrics(store: ReportStore) -> AccountMetrics:
    """Three aggregates per account in one read transaction (attempts by exit code, the oldest
    waiting message, the last success), each one row per group: no row is loaded per message."""
    by_code = (
        sa.select(messages.c.account, attempts.c.exit_code, sa.func.count())
        .select_from(attempts.join(messages, messages.c.id == attempts.c.message_id))
        .group_by(messages.c.account, attempts.c.exit_code)
    )
    waiting = (
        sa.select(messages.c.account, sa.func.min(messages.c.created_at))
        .where(messages.c.state.in_((State.QUEUED.value, State.SENDING.value)))
        .group_by(messages.c.account)
    )
    success = (
        sa.select(messages.c.account, sa.func.max(attempts.c.started_at + attempts.c.duration))
        .select_from(attempts.join(messages, messages.c.id == attempts.c.message_id))
        .where(attempts.c.exit_code == 0)
        .group_by(messages.c.account)
    )
    with store.reading() as conn:
        counted = {(account, int(code)): int(n) for account, code, n in conn.execute(by_code)}
        oldest = {account: float(at) for account, at in conn.execute(waiting)}
        last = {account: float(at) for account, at in conn.execute(success)}
    return AccountMetrics(counted, oldest, last)


def queue_ids_from(
    store: ReportStore, prefix: str, states: Sequence[State] = (), limit: int = 100
) -> list[str]:
    """Up to `limit` queue ids that start with `prefix` (in `states`, when given), in order:
    what a shell completes at a TAB."""
    query = sa.select(messages.c.queue_id).order_by(messages.c.queue_id).limit(limit)
    if prefix:
        query = query.where(messages.c.queue_id.startswith(prefix, autoescape=True))
    if states:
        query = query.where(messages.c.state.in_([state.value for state in states]))
    with store.reading() as conn:
        return [queue_id for (queue_id,) in conn.execute(query)]


def account_names(store: ReportStore) -> list[str]:
    """The accounts that have mail in the queue, by name."""
    query = sa.select(messages.c.account).distinct().order_by(messages.c.account)
    with store.reading() as conn:
        return [account for (account,) in conn.execute(query)]


def log_entries(
    store: ReportStore,
    *,
    after: int = 0,
    queue_id: str | None = None,
    limit: int = PAGE,
    newest: bool = False,
) -> list[LogEntry]:
    """Up to `limit` attempts with row ids above `after` (only `queue_id`'s, when given), in
    the order they were committed; with `newest`, the last `limit` of them (still oldest first).

    A successful attempt's mailsize is counted from its body, read one at a time.
    """
    query = (
        sa.select(attempts, messages.c.queue_id, messages.c.sender)
        .join(messages, messages.c.id == attempts.c.message_id)
        .where(attempts.c.id > after)
        .order_by(attempts.c.id.desc() if newest else attempts.c.id)
        .limit(limit)
    )
    if queue_id is not None:
        query = query.where(messages.c.queue_id == queue_id)
    with store.reading() as conn:
        rows = list(conn.execute(query))
        delivered = {row.message_id for row in rows if row.exit_code == 0}
        sizes: dict[int, int] = {}
        if delivered:
            data = (
                sa.select(bodies.c.message_id, bodies.c.data)
                .where(bodies.c.message_id.in_(delivered))
                .order_by(bodies.c.message_id, bodies.c.seq)
            )
            counters: dict[int, MailSize] = {}
            for message_id, chunk in conn.execute(data.execution_options(yield_per=8)):
                counters.setdefault(message_id, MailSize()).add(bytes(chunk))
            sizes = {key: counter.value for key, counter in counters.items()}
    if newest:
        rows.reverse()
    return [
        LogEntry(
            row.id,
            row.queue_id,
            row.sender,
            attempt_from_row(row),
            sizes.get(row.message_id) if row.exit_code == 0 else None,
        )
        for row in rows
    ]
