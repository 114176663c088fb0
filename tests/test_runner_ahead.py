"""The runner claims a connection's next batch while the current one is on the wire, and a
stopping runner puts such a batch back untouched: nothing of it was sent, so nothing of it is
marked as a possible duplicate. Real queue file, upstream fixture on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

from relayd import paths, settings
from relayd.runner import Runner
from relayd.store.queued import State
from relayd.store.sql import SqlStore
from tests.store_helpers import message
from tests.test_daemon import rc_for, upstream
from tests.upstream import Fault, UpstreamServer

__all__ = ["upstream"]  # a pytest fixture, used by name

ONE_AT_A_TIME = "[delivery]\nconnections_per_account = 1\nmessages_per_connection = 1\n"


def test_a_batch_claimed_ahead_goes_back_unmarked_on_stop(upstream: UpstreamServer) -> None:
    rc_for(upstream.port)
    config = settings.parse(ONE_AT_A_TIME, None, default_database=paths.database_url())
    upstream.fail("DATA", Fault(delay=3.0))  # the first message stays on the wire
    with SqlStore.open(paths.database_url()) as store:
        first, second, third = store.enqueue_many([message(n) for n in range(3)], time.time())

        async def run() -> None:
            runner = Runner(store, config, owner="test-runner")
            runner.kick("default")
            deadline = time.monotonic() + 10
            while store.states_of([second])[second][0] is not State.SENDING:
                assert time.monotonic() < deadline, "the next batch was never claimed ahead"
                await asyncio.sleep(0.02)
            assert store.states_of([third])[third][0] is State.QUEUED  # one batch ahead only
            await runner.stop(grace=0.0)

        asyncio.run(run())
        ahead = store.get(second)
        assert ahead is not None
        assert (ahead.state, ahead.lease_owner, ahead.lease_lost) == (State.QUEUED, None, False)
        assert ahead.attempts == 0
        assert store.get(first) is not None
