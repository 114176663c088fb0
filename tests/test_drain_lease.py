"""A long batch keeps its lease: the drain step renews the claims it still means to send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relayd.accounts.stored import account_for
from relayd.daemon import drain, retry
from relayd.settings import Settings
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.store_helpers import message
from tests.test_daemon import rc_for
from tests.upstream import UpstreamServer

T0 = 1_700_000_000.0


def test_a_batch_outliving_half_its_lease_renews_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database=f"sqlite:///{tmp_path / 'q.sqlite3'}")
    lease = retry.lease_seconds(settings)
    with UpstreamServer(timeout=20) as upstream, SqlStore.open(settings.database) as store:
        rc_for(upstream.port)
        enqueue_many(store, [message(number=n) for n in range(3)], T0)
        claimed = store.claim_due("default", T0, lease, "r", 3)
        renewals: list[tuple[str, float]] = []
        real = store.extend_lease

        def spy(owner: str, until: float) -> int:
            renewals.append((owner, until))
            return real(owner, until)

        monkeypatch.setattr(store, "extend_lease", spy)
        # Every message takes a third of the lease by this clock: the second one starts
        # past the half.
        ticks = iter(T0 + n * lease / 6 for n in range(100))
        delivered = asyncio.run(
            drain.deliver_claimed(
                store,
                account_for("default", None, ()),
                claimed,
                settings,
                owner="r",
                clock=lambda: next(ticks),
            )
        )
    assert [d.outcome.state.value for d in delivered] == ["sent"] * 3
    assert len(upstream.transactions) == 3
    assert renewals and all(owner == "r" for owner, _ in renewals)
    assert renewals[0][1] > T0 + lease  # pushed beyond the original expiry
