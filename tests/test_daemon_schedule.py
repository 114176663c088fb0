"""The daemon's APScheduler jobs take their run times from the daemon's clock, not the wall clock.

The clock here is years away from the real time, so a run time computed with `time.time()` or
APScheduler's own `datetime.now()` cannot pass for one computed with it; and since the jobs lie
in the future, APScheduler runs none of them while the test looks.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest

from relayd.daemon import lifecycle, retention
from relayd.settings import Settings
from relayd.store.queued import Attempt, AttemptRecord, Outcome, State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.store_helpers import message, record_attempts

NOW = 2_000_000_000.0  # May 2033
SCAN_INTERVAL = 30.0
RETRY_IN = 10.0  # before the next periodic scan, so the scan adds a one-shot job for it


def at(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def test_jobs_run_at_times_of_the_daemons_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "no-systemd-here"))
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")  # a ping every 10 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    with SqlStore.open(url) as store:
        [queue_id] = enqueue_many(store, [message()], NOW)
        store.claim_due("default", NOW, 300, "r", 1)
        record_attempts(
            store,
            [
                AttemptRecord(
                    queue_id,
                    Attempt(NOW, 0.1, "mx", False, False, 75, 451, "try later"),
                    Outcome(State.QUEUED, NOW + RETRY_IN, "try later"),
                    "r",
                )
            ],
        )

        async def run() -> dict[str, datetime.datetime | None]:
            life = lifecycle._Lifecycle(
                store, Settings(database=url), None, SCAN_INTERVAL, 1.0, lambda: NOW
            )
            life._schedule()
            try:
                await life._scan()
                return {job.id: job.next_run_time for job in life.scheduler.get_jobs()}
            finally:
                life.scheduler.shutdown(wait=False)

        jobs = asyncio.run(run())
    assert jobs == {
        "scan": at(NOW),
        "leases": at(NOW + SCAN_INTERVAL),
        "retain": at(NOW + retention.START_DELAY),
        "watchdog": at(NOW),
        "retry-at": at(NOW + RETRY_IN),
    }
