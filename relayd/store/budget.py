"""Per-account sending budgets and rate pauses in the queue database, shared by every daemon.

Budgets are fixed windows: a window starts at the first message sent after the previous one
ended and admits at most its count (of messages, or of recipients) until it ends. Spending is
atomic across processes and hosts: the account's budget rows are read and written under their
row locks (PostgreSQL `FOR UPDATE`; SQLite's write transactions are BEGIN IMMEDIATE anyway).
Mail over the budget (or during a pause) goes back to `queued`, due when the window opens again,
with the reason; ties keep arrival order, since claims break them by row id.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from relayd.settings import AccountLimits, Window
from relayd.store import leases as leases_module
from relayd.store.interface import ReportStore
from relayd.store.queued import Lease
from relayd.store.records import State
from relayd.store.tables import messages, rate_budgets, rate_pauses

_MAX_DOUBLINGS = 30  # the back-off stops growing long before this; keeps 2**n small


class WritingStore(Protocol):
    """A store that opens write transactions (SqlStore)."""

    def writing(self, action: str) -> AbstractContextManager[sa.Connection]: ...


def clock_time(when: float) -> str:
    """HH:MM:SS in local time, as reasons and `relayd status` show it."""
    return time.strftime("%H:%M:%S", time.localtime(when))


# How the reasons of mail held back by a limit begin (`held_back` finds them by these).
BUDGET_REASON, PAUSE_REASON = "rate limit (", "rate limited by the server ("


def budget_reason(window: Window, until: float) -> str:
    return f"{BUDGET_REASON}{window.text}) until {clock_time(until)}"


def pause_reason(reply: str, until: float) -> str:
    return f"{PAUSE_REASON}{reply}); account paused until {clock_time(until)}"


@dataclass
class _Spent:
    """One window's row as this transaction sees it."""

    kind: str
    window: Window
    started_at: float
    used: int

    def ends(self) -> float:
        return self.started_at + self.window.seconds

    def fits(self, cost: int) -> bool:
        # A message bigger than a whole window goes alone in a fresh one, else never at all.
        return self.used + cost <= self.window.count or (self.used == 0 and cost > 0)


@dataclass(frozen=True)
class Pause:
    """An account paused by a provider's rate reply: until when, how many pauses in a row."""

    until: float
    level: int
    reason: str | None


@dataclass(frozen=True)
class Gate:
    """What may be claimed for an account now: `allowed` messages (None: no message budget);
    0 with `until` and `reason` when it is paused or its budget is spent."""

    allowed: int | None
    until: float | None = None
    reason: str | None = None
    level: int = 0  # the pause level seen (a success resets it)
    paused: bool = False  # by a provider's rate reply (else: a budget is spent)


def _windows(limits: AccountLimits) -> list[tuple[str, Window]]:
    """The configured windows, one per kind and length (the smallest count wins)."""
    chosen: dict[tuple[str, int], Window] = {}
    for kind, window in limits.windows():
        key = (kind, window.seconds)
        if key not in chosen or window.count < chosen[key].count:
            chosen[key] = window
    return [(kind, window) for (kind, _), window in sorted(chosen.items())]


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows that do not exist yet (ON CONFLICT DO NOTHING on both databases)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        from sqlalchemy.dialects import sqlite

        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


def _spent(
    conn: sa.Connection, account: str, limits: AccountLimits, now: float, *, lock: bool
) -> list[_Spent]:
    """The account's windows as they stand at `now` (an ended window counts as fresh)."""
    windows = _windows(limits)
    if lock and windows:
        fresh = [
            {"account": account, "kind": k, "seconds": w.seconds, "started_at": now, "used": 0}
            for k, w in windows
        ]
        _insert(conn, rate_budgets, fresh)
    query = sa.select(
        rate_budgets.c.kind, rate_budgets.c.seconds, rate_budgets.c.started_at, rate_budgets.c.used
    ).where(rate_budgets.c.account == account)
    if lock:
        query = query.with_for_update()
    stored = {(kind, seconds): (start, used) for kind, seconds, start, used in conn.execute(query)}
    found = []
    for kind, window in windows:
        start, used = stored.get((kind, window.seconds), (now, 0))
        if now >= start + window.seconds:
            start, used = now, 0
        found.append(_Spent(kind, window, start, int(used)))
    return found


def _pause(conn: sa.Connection, account: str, *, lock: bool = False) -> Pause | None:
    query = sa.select(rate_pauses.c.paused_until, rate_pauses.c.level, rate_pauses.c.reason).where(
        rate_pauses.c.account == account
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else Pause(row[0], int(row[1]), row[2])


def _lock_account(conn: sa.Connection, account: str) -> Pause:
    """Lock the account's pause row (made if missing) for this transaction: every write here
    takes it first, so the account's budget rows and then its messages are always locked in
    the same order (no deadlock between daemons on PostgreSQL)."""
    _insert(conn, rate_pauses, [{"account": account, "paused_until": 0.0, "level": 0}])
    found = _pause(conn, account, lock=True)
    assert found is not None
    return found


def _defer(
    conn: sa.Connection, account: str, until: float, reason: str, *, inclusive: bool = False
) -> int:
    """Every queued message of `account` due before `until` waits for it, with the reason.
    Those already due at `until` are written only if `inclusive` (once, when messages were just
    returned due then without the reason), not at each check of a spent budget."""
    due = messages.c.next_attempt_at
    statement = (
        messages.update()
        .where(
            messages.c.state == State.QUEUED.value,
            messages.c.account == account,
            due <= until if inclusive else due < until,
        )
        .values(next_attempt_at=until, reason=reason)
    )
    return int(conn.execute(statement).rowcount)


class Budgets:
    """The budget and pause operations, each one transaction on `store`."""

    def __init__(self, store: WritingStore) -> None:
        self._store = store

    def gate(self, account: str, limits: AccountLimits, now: float, wanted: int) -> Gate:
        """How many messages a claim may take for `account` now (at most `wanted`). When the
        account is paused or a window is spent: 0, and its due mail waits with the reason."""
        with self._store.writing("check the account's rate limits") as conn:
            pause = _lock_account(conn, account)
            level = pause.level
            if pause.until > now:
                reason = pause.reason or pause_reason("", pause.until)
                _defer(conn, account, pause.until, reason)
                return Gate(0, pause.until, reason, level, paused=True)
            allowed: int | None = None
            for spent in _spent(conn, account, limits, now, lock=False):
                left = spent.window.count - spent.used
                if left <= 0:
                    reason = budget_reason(spent.window, spent.ends())
                    _defer(conn, account, spent.ends(), reason)
                    return Gate(0, spent.ends(), reason, level)
                if spent.kind == "messages":
                    allowed = min(left, wanted if allowed is None else allowed)
            return Gate(allowed, level=level)

    def spend(
        self,
        account: str,
        limits: AccountLimits,
        claimed: Sequence[tuple[Lease, int]],
        now: float,
    ) -> tuple[int, str | None]:
        """Spend the budget on claimed messages in order, each (lease, recipients to send):
        how many of the first ones may go, and the reason the others wait. Those go back to
        the queue (no attempt counted), due when the window that stopped them opens again,
        with the account's other mail due before then."""
        with self._store.writing("spend the account's rate budget") as conn:
            _lock_account(conn, account)
            windows = _spent(conn, account, limits, now, lock=True)
            admitted, blocked = 0, None
            for _, recipients in claimed:
                costs = [1 if s.kind == "messages" else recipients for s in windows]
                stopped = next(
                    (s for s, c in zip(windows, costs, strict=True) if not s.fits(c)), None
                )
                if stopped is not None:
                    blocked = stopped
                    break
                for spent, cost in zip(windows, costs, strict=True):
                    spent.used += cost
                admitted += 1
            for spent in windows:
                conn.execute(
                    rate_budgets.update()
                    .where(
                        rate_budgets.c.account == account,
                        rate_budgets.c.kind == spent.kind,
                        rate_budgets.c.seconds == spent.window.seconds,
                    )
                    .values(started_at=spent.started_at, used=spent.used)
                )
            if blocked is None:
                return admitted, None
            until, reason = blocked.ends(), budget_reason(blocked.window, blocked.ends())
            rest = [lease for lease, _ in claimed[admitted:]]
            leases_module.release(conn, rest, now, (), until, None)
            _defer(conn, account, until, reason, inclusive=True)
            return admitted, reason

    def pause(self, account: str, limits: AccountLimits, now: float, reply: str) -> Pause:
        """The provider answered with a rate-limit `reply`: pause the account, twice as long as
        the last time unless a success came between. A pause still running is kept as it is
        (several connections hitting the same wall make one pause)."""
        with self._store.writing("pause the account") as conn:
            current = _lock_account(conn, account)
            if current.until > now:
                return current
            level = current.level + 1
            seconds = min(limits.backoff * 2 ** min(level - 1, _MAX_DOUBLINGS), limits.backoff_max)
            until = now + seconds
            reason = (
                f"rate limited by the server ({reply}); account paused until {clock_time(until)}"
            )
            conn.execute(
                rate_pauses.update()
                .where(rate_pauses.c.account == account)
                .values(paused_until=until, level=level, reason=reason)
            )
            return Pause(until, level, reason)

    def defer(self, account: str, until: float, reason: str, *, inclusive: bool = False) -> int:
        """The account's queued mail due before `until` waits for it, with `reason`."""
        with self._store.writing("defer the account's mail") as conn:
            _lock_account(conn, account)
            return _defer(conn, account, until, reason, inclusive=inclusive)

    def succeeded(self, account: str) -> None:
        """A message went out: the next rate reply starts the back-off from its first step."""
        with self._store.writing("reset the account's back-off") as conn:
            conn.execute(
                rate_pauses.update()
                .where(rate_pauses.c.account == account, rate_pauses.c.level > 0)
                .values(level=0)
            )


@dataclass(frozen=True)
class WindowReport:
    """One budget window in `relayd status`."""

    kind: str
    window: Window
    used: int
    resets_at: float | None  # None: the window has ended (nothing used)


Budgeted = dict[str, tuple[list[WindowReport], "Pause | None"]]


def budget_reports(
    conn: sa.Connection, limits: Sequence[tuple[str, AccountLimits]], now: float
) -> Budgeted:
    """Each limited or paused account's windows and pause (in a read transaction)."""
    found: Budgeted = {}
    for account, limit in limits:
        windows = [
            WindowReport(s.kind, s.window, s.used, s.ends() if s.used else None)
            for s in _spent(conn, account, limit, now, lock=False)
        ]
        found[account] = (windows, None)
    query = sa.select(rate_pauses).where(rate_pauses.c.paused_until > now)
    for row in conn.execute(query):
        pause = Pause(row.paused_until, int(row.level), row.reason)
        found[row.account] = (found.get(row.account, ([], None))[0], pause)
    return dict(sorted(found.items()))


def held_back(store: ReportStore, queue_ids: Collection[str], since: float) -> set[str]:
    """Of `queue_ids`, the queued messages a budget or a pause put off past `since`: their pass
    is over without an attempt (`queue flush --wait` stops waiting for them)."""
    wanted = list(queue_ids)
    found: set[str] = set()
    reason = messages.c.reason
    with store.reading() as conn:
        for start in range(0, len(wanted), 500):
            query = sa.select(messages.c.queue_id).where(
                messages.c.queue_id.in_(wanted[start : start + 500]),
                messages.c.state == State.QUEUED.value,
                messages.c.next_attempt_at > since,
                sa.or_(reason.startswith(BUDGET_REASON), reason.startswith(PAUSE_REASON)),
            )
            found.update(conn.execute(query).scalars())
    return found
