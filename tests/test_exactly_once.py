"""Exactly once, and honest about it: the runner's side of SPEC §4's ownership invariants.

Each test injects its fault for real (a SQLite write lock held by another connection, a server
that drops the connection, never greets, refuses connections or rejects the login) and checks
what reached the server against what the queue says: nothing lost, every possible duplicate
flagged and no other, no attempt row for mail that never went on the wire, nothing stuck.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.daemon import lifecycle, wirelog
from relayd.daemon.runner import Runner
from relayd.settings import Delivery, Retry, Settings
from relayd.store.queued import State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import write_msmtprc
from tests.store_helpers import counts, list_messages, message
from tests.upstream import Fault, Features, UpstreamServer


def _settings(tmp_path: Path, **delivery: int) -> Settings:
    return Settings(
        database=f"sqlite:///{tmp_path / 'q.sqlite3'}",
        delivery=Delivery(**delivery),
        retry=Retry(),
    )


def _rc(port: int, extra: str = "") -> None:
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {port}\nfrom me@example.org\n{extra}")


def _drain(store: SqlStore, settings: Settings) -> Runner:
    runner = Runner(store, settings, owner="test-runner")
    asyncio.run(asyncio.wait_for(runner.drain(["default"]), timeout=60))
    return runner


def _attempts(store: SqlStore, queue_id: str) -> list[tuple[int, bool, str | None]]:
    return [(a.exit_code, a.possible_duplicate, a.note) for a in store.attempts(queue_id)]


def test_a_result_the_store_refuses_is_kept_and_retried_until_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 1: a result commit that fails (here: another process holds the write lock beyond
    # the store's busy timeout) must not release the message unrecorded.
    settings = _settings(tmp_path, connections_per_account=1)
    with UpstreamServer() as upstream, SqlStore.open(settings.database, timeout=0.2) as store:
        _rc(upstream.port)
        upstream.fail("END", Fault(delay=0.5))
        ids = enqueue_many(store, [message(number=n) for n in range(3)], time.time())
        locker = sqlite3.connect(
            tmp_path / "q.sqlite3", isolation_level=None, check_same_thread=False
        )
        released = threading.Event()

        def hold_the_lock() -> None:
            time.sleep(0.3)  # the claim is made; the first final reply is on its way
            locker.execute("BEGIN IMMEDIATE")
            time.sleep(2.0)  # several failed commits (0.2 s busy timeout each, retried)
            locker.execute("COMMIT")
            released.set()

        thread = threading.Thread(target=hold_the_lock)
        thread.start()
        try:
            runner = _drain(store, settings)
        finally:
            thread.join()
            locker.close()
        assert released.is_set()
        assert "retrying the commit" in caplog.text  # the fault did hit a result's commit
        assert "the queue is writable again" in caplog.text
        assert runner.recorder.failing is None
        assert len(upstream.transactions) == 3  # each sent once, none again
        for queue_id in ids:
            found = store.get(queue_id)
            assert found is not None and found.state is State.SENT
            assert _attempts(store, queue_id) == [(0, False, None)]


def test_a_drop_after_the_final_dot_flags_only_that_message(tmp_path: Path) -> None:
    # Item 4: the server may have the message: its next attempt is a possible duplicate; the
    # rest of the batch never went on the wire, gets no attempt row and no flag (item 5).
    settings = _settings(tmp_path, connections_per_account=1)
    with UpstreamServer() as upstream, SqlStore.open(settings.database) as store:
        _rc(upstream.port)
        first, *rest = enqueue_many(store, [message(number=n) for n in range(4)], time.time())
        upstream.fail("END", Fault(drop=True))
        runner = Runner(store, settings, owner="test-runner")

        async def one_connection() -> None:  # one claim, one connection: the drop ends it
            claimed = await runner._claim("default", "test-runner/1")
            await runner._deliver(claimed, "test-runner/1", wirelog.WireLog("t/1"))

        asyncio.run(one_connection())
        dropped = store.get(first)
        assert dropped is not None and (dropped.state, dropped.lease_lost) == (State.QUEUED, True)
        for queue_id in rest:
            untouched = store.get(queue_id)
            assert untouched is not None
            assert (untouched.state, untouched.lease_lost, untouched.attempts) == (
                State.QUEUED,
                False,
                0,
            )
            assert store.attempts(queue_id) == []
        upstream.clear_faults()
        store.make_due(time.time())
        _drain(store, settings)
        assert _attempts(store, first)[-1] == (0, True, None)
        assert all(_attempts(store, q) == [(0, False, None)] for q in rest)
        assert counts(store) == {("default", State.SENT): 4}


def test_a_connection_broken_mid_batch_returns_the_rest_untouched(tmp_path: Path) -> None:
    # Item 5: one message's RCPT kills the connection; the ones after it are not failed.
    settings = _settings(tmp_path, connections_per_account=1)
    with UpstreamServer() as upstream, SqlStore.open(settings.database) as store:
        _rc(upstream.port)
        batch = [message(number=n, recipients=(f"r{n}@example.org",)) for n in range(5)]
        ids = enqueue_many(store, batch, time.time())
        upstream.fail("RCPT", Fault(drop=True), address="r2@example.org")
        _drain(store, settings)
        by_id = {m.queue_id: m for m in list_messages(store)}
        # Before it: sent. It: one failed attempt, retried later. After it: sent on a new
        # connection, with exactly one attempt each: no phantom failure.
        assert [by_id[q].state for q in ids] == [State.SENT] * 2 + [State.QUEUED] + [State.SENT] * 2
        assert [len(store.attempts(q)) for q in ids] == [1, 1, 1, 1, 1]
        assert [m.attempts for m in (by_id[q] for q in ids)] == [1, 1, 1, 1, 1]
        assert len(upstream.transactions) == 4


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections (the kernel's backlog) and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture
def refusing_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


@pytest.mark.parametrize("server", ["silent_port", "refusing_port"])
def test_a_dead_destination_costs_one_failure_per_connection(
    tmp_path: Path, server: str, request: pytest.FixtureRequest
) -> None:
    # Item 10: 10,000 due messages and a server that never greets (a black hole, a captive
    # portal) or refuses: one pass costs one timeout per connection, not one per message.
    port = request.getfixturevalue(server)
    settings = _settings(tmp_path, timeout=1)
    with SqlStore.open(settings.database) as store:
        _rc(port)
        now = time.time()
        enqueue_many(store, [message(number=n) for n in range(10_000)], now)
        started = time.monotonic()
        _drain(store, settings)
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, elapsed  # two connections at once, one 1 s timeout each
        assert counts(store) == {("default", State.QUEUED): 10_000}
        with store.reading() as conn:
            tried = conn.exec_driver_sql("SELECT count(*) FROM attempts").scalar_one()
            leased = conn.exec_driver_sql(
                "SELECT count(*) FROM messages WHERE lease_owner IS NOT NULL"
            ).scalar_one()
            early = conn.exec_driver_sql(
                "SELECT count(*) FROM messages WHERE next_attempt_at < ?", (now + 59,)
            ).scalar_one()
        assert tried <= settings.delivery.connections_per_account
        assert leased == 0 and early == 0  # all deferred to the next try, none stuck


def test_a_rejected_login_holds_the_batch_without_phantom_attempts(tmp_path: Path) -> None:
    # The connection fails at AUTH (only the user can fix it): the message tried is held with
    # its attempt; the rest of its batch is held with the same reason and no attempt row.
    settings = _settings(tmp_path, connections_per_account=1, messages_per_connection=10)
    features = Features(auth=("PLAIN",))
    with UpstreamServer(features=features) as upstream, SqlStore.open(settings.database) as store:
        _rc(upstream.port, "auth plain\nuser user\npassword wrong\n")
        ids = enqueue_many(store, [message(number=n) for n in range(4)], time.time())
        _drain(store, settings)
        found = [store.get(q) for q in ids]
        assert [m.state if m else None for m in found] == [State.HELD] * 4
        assert [len(store.attempts(q)) for q in ids] == [1, 0, 0, 0]
        assert len({m.reason for m in found if m}) == 1
        assert upstream.transactions == []


def test_the_wire_journal_tells_what_may_have_reached_the_server(tmp_path: Path) -> None:
    where = str(tmp_path / "wire")
    journal = wirelog.WireLog("daemon-h-1/7", where)
    journal.sending("AAA")
    journal.sending("BBB")
    leases = [("AAA", "daemon-h-1/7"), ("BBB", "daemon-h-1/7"), ("CCC", "daemon-h-1/7")]
    assert wirelog.interrupted(leases, where) == {"AAA", "BBB"}  # CCC never went out
    # No journal (the claim's file is gone, or another host's claim): every lease counts.
    assert wirelog.interrupted([("DDD", "daemon-h-2/1")], where) == {"DDD"}
    # A journal from another boot may have lost its tail in the page cache: every lease.
    path = Path(journal.path)
    path.write_text("relayd-wire 1 another-boot\nAAA\n")
    assert wirelog.interrupted(leases, where) == {"AAA", "BBB", "CCC"}
    journal.close()
    assert not path.exists()
    wirelog.WireLog("daemon-h-1/8", where).close(keep=True)
    assert wirelog.on_wire("daemon-h-1/8", where) == set()
    wirelog.forget(["daemon-h-1/8"], where)
    assert wirelog.on_wire("daemon-h-1/8", where) is None
    wirelog.WireLog("daemon-h-1/9", where).close(keep=True)  # its claim's results are in
    wirelog.WireLog("daemon-h-1/10", where).close(keep=True)  # still leased
    assert wirelog.prune(["daemon-h-1/10"], where) == 1
    assert wirelog.on_wire("daemon-h-1/9", where) is None
    assert wirelog.on_wire("daemon-h-1/10", where) == set()


def test_a_dead_daemon_of_this_host_is_told_from_a_live_one() -> None:
    # On a shared (PostgreSQL) queue a restarted daemon returns its dead predecessor's leases
    # at once, with the journals it left here, instead of waiting for them to expire.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = lifecycle.default_owner().rpartition("-")[0]
    assert lifecycle.dead_here(f"{here}-{dead.pid}/3")
    assert not lifecycle.dead_here(f"{lifecycle.default_owner()}/3")  # this very process
    assert not lifecycle.dead_here(f"daemon-elsewhere.00000000-{dead.pid}/3")
    assert not lifecycle.dead_here(f"flush-{here}-{dead.pid}")
