"""The figures of one fault scenario, from the recording server's log and the queue database.

Definitions (issue 12, SPEC §4), per message key (``fN``, see `World.enqueue`):

* accepted: ``accept`` events in the server log, plus ``vanish`` ones (the server had the whole
  message when it closed without a reply: the mail may well be delivered);
* lost: submitted, never accepted, and not expected to end undelivered;
* duplicated: accepted more than once; unflagged: duplicated without any attempt row with
  ``possible_duplicate``; flagged_single: some attempt flagged, accepted at most once;
* on_wire_at_faults: at each fault instant, the transactions open on the server (MAIL received,
  no final reply, refusal or close yet); the bound for flagged_single;
* stuck: at the end, ``sending`` or ``queued`` messages (the daemon has drained and stopped),
  and ``failed``/``held`` ones the scenario did not expect;
* tracebacks: "Traceback (most recent call last)" in the product processes' stderr;
* phantom: failed attempt rows (no recipient sent) of messages the server saw nothing of during
  the attempt (no MAIL, data or fault for that key between its start and its end, a second
  either side), beyond one per connection-level fault (greeting, EHLO: key unknown) and one per
  transaction cut off by a daemon kill (the contract records those at the next start); an
  attempt that could not connect at all (the server was down) is the dead destination's one
  attempt row, not a phantom; nor is an attempt in progress while the server was being
  killed (its command was in the dead server's socket buffer: it was tried, unread).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tests.faults.harness import Event

TRACEBACK = "Traceback (most recent call last)"
_CLOSING = {"accept", "refuse", "vanish", "close"}
# The server was down: the message tried is the one attempt row a dead destination gets (SPEC
# §4), not a bystander of a broken batch.
_NO_CONNECTION = "cannot connect to "
_SEEN = {"mail", "data", "body", "fault", "refuse", "vanish", "accept"}


@dataclass(frozen=True)
class MessageRow:
    queue_id: str
    state: str
    pending: int


@dataclass(frozen=True)
class AttemptRow:
    queue_id: str
    started_at: float
    duration: float
    exit_code: int
    possible_duplicate: bool
    sent: bool
    reply: str = ""


def read_queue(url: str) -> tuple[list[MessageRow], list[AttemptRow]]:
    """Every message (state, pending recipients) and every attempt, read with plain SQL."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            messages = [
                MessageRow(q, s, int(p))
                for q, s, p in conn.execute(
                    sa.text(
                        "SELECT m.queue_id, m.state, (SELECT count(*) FROM recipients r"
                        " WHERE r.message_id = m.id AND r.state = 'pending') FROM messages m"
                    )
                )
            ]
            attempts = []
            for q, started, duration, code, dup, replies, reply in conn.execute(
                sa.text(
                    "SELECT m.queue_id, a.started_at, a.duration, a.exit_code,"
                    " a.possible_duplicate, a.recipient_replies, a.reply"
                    " FROM attempts a JOIN messages m ON m.id = a.message_id"
                    " ORDER BY a.started_at, a.id"
                )
            ):
                parsed = json.loads(replies) if isinstance(replies, str) else replies
                sent = any(r.get("state") == "sent" for r in parsed or [])
                attempts.append(
                    AttemptRow(
                        q, float(started), float(duration), int(code), bool(dup), sent, reply or ""
                    )
                )
    finally:
        engine.dispose()
    return messages, attempts


def open_transactions(events: Sequence[Event], at: float, slack: float = 0.05) -> int:
    """Transactions open on the server at `at`: MAIL received (up to `slack` s later, the log
    trails the wire a little), no final reply, refusal or close before `at`."""
    open_by_conn: dict[str, str | None] = {}
    for event in events:
        if event.kind == "mail" and event.at <= at + slack:
            open_by_conn[event.conn] = event.key
        elif event.at > at:
            continue
        elif event.kind in _CLOSING or (
            event.kind == "fault" and event.detail.split(":")[0] in {"MAIL", "RCPT", "DATA"}
        ):
            open_by_conn.pop(event.conn, None)
    return len(open_by_conn)


@dataclass
class Figures:
    """One scenario's result; `line()` is the printed summary, `problems()` the broken rules."""

    name: str
    messages: int
    faults: int
    seconds: float
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unflagged: list[str] = field(default_factory=list)
    flagged_single: list[str] = field(default_factory=list)
    on_wire: int = 0
    stuck: list[str] = field(default_factory=list)
    tracebacks: int = 0
    phantom: int = 0
    phantom_rows: list[str] = field(default_factory=list)  # the unexplained rows, for the report
    extra: dict[str, Any] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)  # the scenario's own checks that failed

    def with_extra(self, **values: Any) -> Figures:
        self.extra.update(values)
        return self

    def line(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"{self.name}: lost={len(self.lost)} duplicated={len(self.duplicated)}"
            f" unflagged={len(self.unflagged)} flagged_single={len(self.flagged_single)}"
            f" on_wire_at_faults={self.on_wire} stuck={len(self.stuck)}"
            f" tracebacks={self.tracebacks} phantom={self.phantom}"
            f" violations={len(self.other)}{extra}"
            f" ({self.messages} messages, {self.faults} faults, {self.seconds:.1f} s)"
        )

    def problems(self) -> list[str]:
        """The done-when criteria this run breaks (empty: the contract held)."""
        found = []
        if self.lost:
            found.append(f"lost {sorted(self.lost)[:10]}")
        if self.unflagged:
            found.append(f"duplicated without a possible-duplicate flag {self.unflagged[:10]}")
        if len(self.flagged_single) > self.on_wire:
            found.append(
                f"{len(self.flagged_single)} flagged but delivered once, more than the"
                f" {self.on_wire} on the wire at the faults"
            )
        if self.stuck:
            found.append(f"stuck {self.stuck[:10]}")
        if self.tracebacks:
            found.append(f"{self.tracebacks} traceback(s)")
        if self.phantom:
            found.append(
                f"{self.phantom} phantom failed attempt row(s) among {self.phantom_rows[:10]}"
            )
        return found + self.other


def measure(
    name: str,
    *,
    keys: dict[str, str],
    events: Sequence[Event],
    url: str,
    stderr: Iterable[str],
    fault_times: Sequence[float],
    kill_times: Sequence[float] = (),
    server_kills: Sequence[tuple[float, float]] = (),
    seconds: float,
    expected_unsent: Collection[str] = (),
) -> Figures:
    """The figures of a finished scenario. `keys` maps message key to queue id; `fault_times`
    are the instants of every fault (daemon kills included), `kill_times` those of daemon
    kills alone; `server_kills` the (before, after) instants of each SIGKILL of the server;
    `expected_unsent` the keys meant to end failed or held (or deleted)."""
    messages, attempts = read_queue(url)
    key_of = {queue_id: key for key, queue_id in keys.items()}
    accepted = Counter(e.key for e in events if e.kind in {"accept", "vanish"} and e.key)
    flagged = {
        key_of[a.queue_id] for a in attempts if a.possible_duplicate and a.queue_id in key_of
    }
    figures = Figures(name, len(keys), len(fault_times), seconds)
    figures.lost = sorted(k for k in keys if accepted[k] == 0 and k not in expected_unsent)
    figures.duplicated = sorted(k for k in keys if accepted[k] > 1)
    figures.unflagged = sorted(k for k in figures.duplicated if k not in flagged)
    figures.flagged_single = sorted(k for k in flagged if accepted[k] <= 1)
    figures.on_wire = sum(open_transactions(events, at) for at in fault_times)
    for row in messages:
        key = key_of.get(row.queue_id, row.queue_id)
        if row.state in {"sending", "queued"}:
            figures.stuck.append(f"{key}:{row.state}" + ("(done)" if not row.pending else ""))
        elif row.state in {"failed", "held"} and key not in expected_unsent:
            figures.stuck.append(f"{key}:{row.state}")
    figures.tracebacks = sum(text.count(TRACEBACK) for text in stderr)
    figures.phantom, figures.phantom_rows = _phantom(
        attempts, key_of, events, kill_times, server_kills
    )
    return figures


def _phantom(
    attempts: Sequence[AttemptRow],
    key_of: dict[str, str],
    events: Sequence[Event],
    kill_times: Sequence[float],
    server_kills: Sequence[tuple[float, float]],
) -> tuple[int, list[str]]:
    """How many failed attempt rows are unexplained beyond the allowance, and a description of
    each unexplained one (key, start, duration, reply)."""
    seen: dict[str, list[float]] = {}
    for event in events:
        if event.kind in _SEEN and event.key:
            seen.setdefault(event.key, []).append(event.at)
    unexplained: list[str] = []
    for row in attempts:
        if row.exit_code == 0 or row.sent or row.reply.startswith(_NO_CONNECTION):
            continue
        end = row.started_at + row.duration
        if any(row.started_at <= after and end >= before for before, after in server_kills):
            continue  # in progress while the server died: tried, its command unread
        key = key_of.get(row.queue_id, "")
        times = seen.get(key, [])
        low, high = row.started_at - 1.0, row.started_at + row.duration + 1.0
        if not any(low <= at <= high for at in times):
            unexplained.append(
                f"{key or row.queue_id}@{row.started_at:.3f}+{row.duration:.3f}:{row.reply[:60]}"
            )
    allowance = sum(1 for e in events if e.kind == "fault" and e.key is None)
    allowance += sum(open_transactions(events, at) for at in kill_times)
    return max(0, len(unexplained) - allowance), unexplained
