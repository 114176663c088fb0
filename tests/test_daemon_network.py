"""The daemon's network-awareness glue: when the watch reports the network back, mail whose last
attempt never reached a server is due at once and a scan starts; other mail keeps its backoff."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relayd.daemon import lifecycle as daemon
from relayd.settings import Settings
from relayd.store.queued import Attempt, AttemptRecord, Outcome, State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.store_helpers import list_messages, message, record_attempts


def test_network_up_makes_offline_failures_due_and_scans(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    now = time.time()
    with SqlStore.open(url) as store:
        offline, refused = enqueue_many(store, [message(number=n) for n in range(2)], now)
        store.claim_due("default", now, 300, "r", 2)
        later = now + 3600
        record_attempts(
            store,
            [
                AttemptRecord(
                    offline,
                    Attempt(now, 0.1, "mx", False, False, 75, None, "cannot connect"),
                    Outcome(State.QUEUED, later, "cannot connect", network_failure=True),
                    "r",
                ),
                AttemptRecord(
                    refused,
                    Attempt(now, 0.1, "mx", False, False, 69, 451, "try later"),
                    Outcome(State.QUEUED, later, "try later"),
                    "r",
                ),
            ],
        )
        woken: list[bool] = []

        async def run() -> None:
            life = daemon._Lifecycle(store, Settings(database=url), None, 30.0, 1.0, time.time)
            life.wake = lambda: woken.append(True)  # type: ignore[method-assign]
            await life._network_up()

        asyncio.run(run())
        due = {m.queue_id: m.next_attempt_at for m in list_messages(store, State.QUEUED)}
    made_due = due[offline]
    assert made_due is not None and made_due <= time.time()
    assert due[refused] == later
    assert woken == [True]
