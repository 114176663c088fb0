"""A live runner's lease never expires under an open transaction: renewed while on the wire."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from relayd.accounts.stored import account_for
from relayd.daemon import drain, retry
from relayd.settings import Delivery, Settings
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import write_msmtprc
from tests.store_helpers import message
from tests.upstream import Fault, UpstreamServer


def test_a_slow_final_reply_keeps_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 1 s delivery timeout makes a 4 s lease; the account's own timeout (msmtprc) is longer,
    # and the server takes 2.5 s for each final reply: two messages outlive the lease.
    settings = Settings(
        database=f"sqlite:///{tmp_path / 'q.sqlite3'}", delivery=Delivery(timeout=1)
    )
    lease = retry.lease_seconds(settings)
    assert lease == 4
    expired: list[list[object]] = []
    done = threading.Event()
    with UpstreamServer(timeout=20) as upstream, SqlStore.open(settings.database) as store:
        write_msmtprc(
            f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
            "timeout 10\n"
        )
        upstream.fail("END", Fault(delay=2.5))
        now = time.time()
        enqueue_many(store, [message(number=n) for n in range(2)], now)
        claimed = store.claim_due("default", now, lease, "r", 2)
        renewals: list[float] = []
        real = store.extend_lease

        def spy(owner: str, until: float) -> int:
            assert owner == "r"
            renewals.append(until)
            return real(owner, until)

        def sweep() -> None:  # what another daemon's lease sweep would see meanwhile
            while not done.wait(0.2):
                found = store.leases(expired_by=time.time())
                if found:
                    expired.append(list(found))

        monkeypatch.setattr(store, "extend_lease", spy)
        sweeper = threading.Thread(target=sweep)
        sweeper.start()
        try:
            drained = asyncio.run(
                drain.deliver_claimed(
                    store, account_for("default", None, ()), claimed, settings, owner="r"
                )
            )
        finally:
            done.set()
            sweeper.join()
    assert [d.outcome.state.value for d in drained.delivered] == ["sent"] * 2
    assert len(upstream.transactions) == 2
    assert expired == []
    assert len(renewals) >= 3 and renewals[-1] > now + lease


def test_a_refused_connection_reads_one_body_and_returns_the_rest_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination that refuses the connection: only the message whose attempt is recorded
    has its body read (for its log line and a bounce's headers); the others go back to the
    queue untouched and unread, instead of a read-ahead group read for nothing."""
    settings = Settings(database=f"sqlite:///{tmp_path / 'q.sqlite3'}")
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {port}\nfrom me@example.org\n")
    with SqlStore.open(settings.database) as store:
        now = time.time()
        ids = enqueue_many(store, [message(number=n) for n in range(5)], now)
        claimed = store.claim_due("default", now, retry.lease_seconds(settings), "r", 5)
        asked: list[list[str]] = []
        real = store.read_data_many

        def spy(queue_ids: list[str]) -> dict[str, bytes]:
            asked.append(list(queue_ids))
            return real(queue_ids)

        monkeypatch.setattr(store, "read_data_many", spy)
        drained = asyncio.run(
            drain.deliver_claimed(
                store, account_for("default", None, ()), claimed, settings, owner="r"
            )
        )
        assert asked == [[claimed[0].queue_id]]
        assert drained.dead is not None and len(drained.delivered) == 1
        assert sorted(drained.returned) == sorted(m.queue_id for m in claimed[1:])
        assert sorted(ids) == sorted(m.queue_id for m in claimed)


def test_after_a_refused_connection_the_next_pass_claims_one_message_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination found down: the next pass claims a single message (a probe) instead of a
    connection's worth that it would give back when the connection is refused again; once a
    connection carries mail again, claims are full-sized."""
    from relayd.daemon.runner import Runner
    from relayd.settings import Retry

    settings = Settings(
        database=f"sqlite:///{tmp_path / 'q.sqlite3'}",
        delivery=Delivery(connections_per_account=1, messages_per_connection=50),
        retry=Retry(),
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {closed}\nfrom me@example.org\n")
    with SqlStore.open(settings.database) as store:
        limits: list[int] = []
        real = store.claim_rows

        def spy(*args: object, **kwargs: object) -> object:
            limits.append(int(args[4]))  # type: ignore[call-overload]
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "claim_rows", spy)
        runner = Runner(store, settings, owner="test-runner")

        def drain(count: int) -> None:
            enqueue_many(store, [message(number=n) for n in range(count)], time.time())
            limits.clear()
            asyncio.run(asyncio.wait_for(runner.drain(["default"]), timeout=60))

        drain(5)
        assert limits == [50]  # the destination was not known to be down
        drain(3)
        assert limits == [1]  # refused again: one message claimed, none given back
        with UpstreamServer() as upstream:
            write_msmtprc(
                f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
            )
            drain(3)
            assert limits == [1, 50, 50]  # the probe got through: full claims again
            assert len(upstream.transactions) == 3
