"""`[limits.ACCOUNT]` in the runner: budgets shared through the queue, pauses after rate replies.

Real aiosmtpd upstream on loopback, real SQLite files and PostgreSQL schemas; windows of a few
seconds keep the tests short, every wait is bounded. Checked each time: what reached the server
against what the queue says (nothing lost, nothing stuck, no attempt for mail held back).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from relayd import settings as settings_module
from relayd.daemon.runner import Runner
from relayd.settings import Settings
from relayd.store.budget import Budgets, clock_time
from relayd.store.queued import Lease, State
from relayd.store.sql import SqlStore
from relayd.store.tables import rate_pauses
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import write_msmtprc
from tests.store_helpers import BACKENDS, database_url, list_messages, message
from tests.upstream import Fault, Stage, UpstreamServer

TOO_MANY = "421 4.7.0 Too many messages, slow down"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as found:
        yield found


def _settings(url: str, limits: str, *, connections: int = 2) -> Settings:
    """Settings parsed from a real relayd.toml text: the limits of account `default`."""
    text = (
        f'database = "{url}"\n[delivery]\nconnections_per_account = {connections}\n'
        f"[limits.default]\n{limits}\n"
    )
    return settings_module.parse(text, "relayd.toml", default_database=url)


def _rc(port: int) -> None:
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {port}\nfrom me@example.org\n")


def _drain(store: SqlStore, settings: Settings) -> Runner:
    runner = Runner(store, settings, owner=f"test-{threading.get_ident()}")
    asyncio.run(asyncio.wait_for(runner.drain(["default"]), timeout=30))
    return runner


@contextmanager
def _faulty(
    url: str, stage: Stage, reply: str, count: int
) -> Iterator[tuple[UpstreamServer, SqlStore, list[str]]]:
    """An upstream that answers `stage` with `reply`, and `count` messages queued for it."""
    with UpstreamServer() as upstream, SqlStore.open(url) as store:
        _rc(upstream.port)
        upstream.fail(stage, Fault(reply=reply))
        yield upstream, store, enqueue_many(store, [message(n) for n in range(count)], time.time())


def _mails(upstream: UpstreamServer) -> int:
    """How many MAIL commands the server got: one per message tried."""
    return sum(1 for command in upstream.commands if command.startswith("MAIL"))


def _wait_until(when: float) -> None:
    """Sleep until the clock passes `when` (bounded: the windows here are seconds long)."""
    delay = when - time.time() + 0.05
    assert delay < 10
    time.sleep(max(delay, 0))


def _subjects(upstream: UpstreamServer) -> list[bytes]:
    return [t.data.split(b"\r\n", 1)[0] for t in upstream.transactions]


def test_over_the_message_budget_mail_waits_with_the_reason_then_goes_in_arrival_order(
    url: str,
) -> None:
    settings = _settings(url, 'messages = "5/3s"')
    with UpstreamServer() as upstream, SqlStore.open(url) as store:
        _rc(upstream.port)
        ids = enqueue_many(store, [message(number=n) for n in range(8)], time.time())
        _drain(store, settings)
        assert _subjects(upstream) == [b"Subject: test %d" % n for n in range(5)]
        waiting = list_messages(store, State.QUEUED)
        assert [m.queue_id for m in waiting] == ids[5:]
        until = waiting[0].next_attempt_at
        assert until is not None and {m.next_attempt_at for m in waiting} == {until}
        assert {m.reason for m in waiting} == {f"rate limit (5/3s) until {clock_time(until)}"}
        assert {m.attempts for m in waiting} == {0}  # held back, never tried
        assert [a for m in waiting for a in store.attempts(m.queue_id)] == []
        _drain(store, settings)  # still inside the window: nothing more goes
        assert len(upstream.transactions) == 5
        _wait_until(until)
        _drain(store, settings)
        assert _subjects(upstream) == [b"Subject: test %d" % n for n in range(8)]
        assert {m.state for m in list_messages(store)} == {State.SENT}


def test_the_recipients_budget_counts_recipients(url: str) -> None:
    settings = _settings(url, 'recipients = "5/3s"', connections=1)
    two = ("a@example.org", "b@example.org")
    with UpstreamServer() as upstream, SqlStore.open(url) as store:
        _rc(upstream.port)
        ids = enqueue_many(store, [message(n, recipients=two) for n in range(4)], time.time())
        _drain(store, settings)
        # 2 + 2 recipients fit in 5; the third message's 2 would make 6
        assert [len(t.rcpt_tos) for t in upstream.transactions] == [2, 2]
        waiting = list_messages(store, State.QUEUED)
        assert [m.queue_id for m in waiting] == ids[2:]
        assert waiting[0].reason is not None and waiting[0].reason.startswith("rate limit (5/3s)")
        assert waiting[0].next_attempt_at is not None
        _wait_until(waiting[0].next_attempt_at)
        _drain(store, settings)
        assert len(upstream.transactions) == 4
        assert {m.state for m in list_messages(store)} == {State.SENT}


def test_two_runners_on_two_connections_share_one_budget(url: str) -> None:
    # Two daemons on one queue: two stores (two engines, two connection pools), draining the
    # same account at the same time. Together they never send more than the budget.
    settings = _settings(url, 'messages = "6/1m"')
    with UpstreamServer() as upstream, SqlStore.open(url) as first, SqlStore.open(url) as second:
        _rc(upstream.port)
        enqueue_many(first, [message(number=n) for n in range(20)], time.time())
        threads = [threading.Thread(target=_drain, args=(s, settings)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(upstream.transactions) == 6
        assert len({t.data for t in upstream.transactions}) == 6  # none twice
        states = [m.state for m in list_messages(first)]
        assert (states.count(State.SENT), states.count(State.QUEUED)) == (6, 14)


def test_concurrent_spends_on_two_store_connections_cannot_overspend(url: str) -> None:
    # The budget itself, hammered: threads on two stores spend one message at a time.
    limits = _settings(url, 'messages = "25/1m"\nrecipients = "40/1m"').limits_for("default")
    assert limits is not None
    granted: list[int] = []
    with SqlStore.open(url) as first, SqlStore.open(url) as second:

        def spend(store: SqlStore, worker: int) -> None:
            budgets = Budgets(store)
            for n in range(20):
                lease = Lease(f"none-{worker}-{n}", "nobody")  # no such message: nothing moves
                admitted, _ = budgets.spend("default", limits, [(lease, 1 + n % 2)], time.time())
                granted.append(1 + n % 2 if admitted else 0)

        threads = [
            threading.Thread(target=spend, args=(store, index))
            for index, store in enumerate((first, second, first, second))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(granted) == 80
    messages_sent = sum(1 for g in granted if g)
    assert messages_sent <= 25 and sum(granted) <= 40
    # …and spent, not lost to the races: one window or the other is used up
    assert messages_sent == 25 or sum(granted) >= 39


def test_a_rate_reply_pauses_the_whole_account_with_one_attempt(url: str) -> None:
    settings = _settings(url, 'backoff = "2s"\nbackoff_max = "1m"', connections=1)
    started = time.time()
    with _faulty(url, "MAIL", TOO_MANY, 5) as (upstream, store, ids):
        _drain(store, settings)
        assert _mails(upstream) == 1  # one attempt for the account, not one per message
        attempts = [a for queue_id in ids for a in store.attempts(queue_id)]
        assert [(a.reply_code, a.exit_code) for a in attempts] == [(421, 69)]
        waiting = list_messages(store, State.QUEUED)
        assert [m.queue_id for m in waiting] == ids  # nothing lost, all waiting in order
        until = waiting[0].next_attempt_at
        assert until is not None and {m.next_attempt_at for m in waiting} == {until}
        assert started + 2 <= until <= time.time() + 2
        paused = f"account paused until {clock_time(until)}"
        reason = f"rate limited by the server ({TOO_MANY}); {paused}"
        assert {m.reason for m in waiting} == {reason}

        # Kicked again during the pause (a new submission): nothing is tried.
        enqueue_many(store, [message(number=9)], time.time())
        _drain(store, settings)
        assert _mails(upstream) == 1
        assert list_messages(store, State.QUEUED)[-1].reason == reason

        # The pause ends, the server still refuses: the next pause is twice as long.
        _wait_until(until)
        second = time.time()
        _drain(store, settings)
        assert _mails(upstream) == 2
        later = list_messages(store, State.QUEUED)[0].next_attempt_at
        assert later is not None and second + 4 <= later <= time.time() + 4
        with store.reading() as conn:
            assert conn.execute(sa.select(rate_pauses.c.level)).scalar_one() == 2

        # The server accepts again: everything goes, and the back-off starts over.
        upstream.clear_faults()
        _wait_until(later)
        _drain(store, settings)
        assert len(upstream.transactions) == 6
        assert {m.state for m in list_messages(store)} == {State.SENT}
        with store.reading() as conn:
            assert conn.execute(sa.select(rate_pauses.c.level)).scalar_one() == 0


def test_a_rate_reply_in_the_greeting_pauses_the_account_too(url: str) -> None:
    settings = _settings(url, 'backoff = "1m"')
    too_many = "421 4.7.0 Too many connections, slow down"
    with _faulty(url, "GREETING", too_many, 4) as (upstream, store, ids):
        _drain(store, settings)
        # two connections may each have met the greeting; the account paused once
        assert 1 <= upstream.commands.count("CONNECT") <= 2
        attempts = [a for queue_id in ids for a in store.attempts(queue_id)]
        assert 1 <= len(attempts) <= 2 and {a.reply_code for a in attempts} == {421}
        waiting = list_messages(store, State.QUEUED)
        assert [m.queue_id for m in waiting] == ids  # none held, none failed, none lost
        assert len({m.next_attempt_at for m in waiting}) == 1
        assert all(m.reason and "account paused until" in m.reason for m in waiting)
        with store.reading() as conn:
            assert conn.execute(sa.select(rate_pauses.c.level)).scalar_one() == 1


def test_a_quota_5xx_is_retried_after_the_pause_not_failed(url: str) -> None:
    settings = _settings(url, 'backoff = "1s"', connections=1)
    quota = "550 5.4.5 Daily user sending limit exceeded"
    with _faulty(url, "END", quota, 3) as (upstream, store, ids):
        _drain(store, settings)
        assert len(upstream.transactions) == 1  # the data went once, then the account paused
        waiting = list_messages(store, State.QUEUED)
        assert [m.queue_id for m in waiting] == ids
        assert waiting[0].reason is not None and "5.4.5" in waiting[0].reason


def test_other_replies_still_retry_message_by_message(url: str) -> None:
    settings = _settings(url, 'messages = "100/1m"', connections=1)
    with _faulty(url, "MAIL", "451 4.3.0 Try again later", 3) as (upstream, store, ids):
        _drain(store, settings)
        assert _mails(upstream) == 3
        for queue_id in ids:
            assert [a.reply_code for a in store.attempts(queue_id)] == [451]
        with store.reading() as conn:
            paused = sa.select(sa.func.count()).where(rate_pauses.c.level > 0)
            assert conn.execute(paused).scalar() == 0


def test_an_account_without_limits_reads_no_budget(tmp_path: Path) -> None:
    # The drain's cost without [limits.ACCOUNT]: not one statement more (every statement the
    # SQLite connections run is traced, the driver-level fast paths too); with a table, the
    # same trace sees the budget read.
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    plain = settings_module.parse(f'database = "{url}"\n', "relayd.toml", default_database=url)
    statements: list[str] = []

    def trace(dbapi: sqlite3.Connection, _record: object) -> None:
        dbapi.set_trace_callback(statements.append)

    with UpstreamServer() as upstream, SqlStore.open(url) as store:
        _rc(upstream.port)
        sa.event.listen(store.engine, "connect", trace)
        store.engine.dispose()  # new connections, each traced
        enqueue_many(store, [message(number=n) for n in range(20)], time.time())
        _drain(store, plain)
        assert len(upstream.transactions) == 20
        assert any("UPDATE messages" in s for s in statements)  # the trace saw the drain
        assert not [s for s in statements if "rate_" in s]
        enqueue_many(store, [message(number=n) for n in range(20, 25)], time.time())
        _drain(store, _settings(url, 'messages = "100/1m"'))
        assert len(upstream.transactions) == 25
        assert [s for s in statements if "rate_budgets" in s]
