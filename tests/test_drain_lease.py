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
