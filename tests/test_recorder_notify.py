"""The group-committing Recorder and the notify command, against a real SQLite queue and /bin/sh."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from relayd.daemon.notify import Notifier
from relayd.daemon.recorder import Recorder
from relayd.store.prepared import PreparedRecord
from relayd.store.queued import Attempt, AttemptRecord, Outcome, Recipient, RecipientState, State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.store_helpers import message
from tests.test_architecture import graph

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> SqlStore:
    return SqlStore.open(f"sqlite:///{tmp_path / 'q.sqlite3'}")


def sent(queue_id: str, owner: str) -> AttemptRecord:
    attempt = Attempt(
        T0, 0.01, "mx", False, False, 0, 250, "ok", (Recipient(0, "a", RecipientState.SENT),)
    )
    return AttemptRecord(queue_id, attempt, Outcome(State.SENT), owner)


def test_records_arriving_during_a_commit_share_the_next_one(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(50)], T0)
    store.claim_due("default", T0, 300, "r", 50)
    batches: list[int] = []
    real = store.commit_prepared

    def counting(batch: list[PreparedRecord]) -> list[bool]:
        batches.append(len(batch))
        return real(batch)

    monkeypatch.setattr(store, "commit_prepared", counting)

    async def run() -> list[bool]:
        recorder = Recorder(store)
        futures = []
        for queue_id in ids:  # a result every loop turn, while commits run in a thread
            futures.append(recorder.record(sent(queue_id, "r")))
            await asyncio.sleep(0)
        return list(await asyncio.gather(*futures))

    assert asyncio.run(run()) == [True] * 50
    assert sum(batches) == 50 and batches[0] == 1  # the first is committed alone, at once
    assert len(batches) < 50  # the others were grouped
    assert all(store.get(q).state is State.SENT for q in ids)  # type: ignore[union-attr]


def test_a_cancelled_waiter_does_not_lose_its_record(store: SqlStore) -> None:
    (queue_id,) = enqueue_many(store, [message()], T0)
    store.claim_due("default", T0, 300, "r", 1)

    async def run() -> None:
        recorder = Recorder(store)
        waiter = asyncio.ensure_future(recorder.record(sent(queue_id, "r")))
        await asyncio.sleep(0)
        waiter.cancel()
        await recorder.drain()

    asyncio.run(run())
    found = store.get(queue_id)
    assert found is not None and found.state is State.SENT


def test_a_failing_commit_reaches_every_waiter(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(batch: list[PreparedRecord]) -> list[bool]:
        raise OSError("disk full")

    monkeypatch.setattr(store, "commit_prepared", broken)

    async def run() -> list[BaseException | bool]:
        recorder = Recorder(store)
        futures = [recorder.record(sent(f"Q{n}", "r")) for n in range(3)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, OSError) for r in results)


def test_the_notify_command_gets_id_state_and_reason(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    script = tmp_path / "hook"
    script.write_text(
        "#!/bin/sh\n"
        f'exec python3 -c \'import json, os, sys; json.dump({{"argv": sys.argv[1:], '
        f'"env": {{k: v for k, v in os.environ.items() if k.startswith("RELAYD_")}}, '
        f'"stdin": sys.stdin.read()}}, open("{out}", "w"))\' "$@"\n'
    )
    script.chmod(0o755)

    async def run() -> None:
        notifier = Notifier(f"{script} --from-relayd")
        notifier.notify("ABC123", "held", "auth failed; it's 'quoted'", account="w", sender="s@x")
        await notifier.wait(timeout=10)

    asyncio.run(run())
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["--from-relayd", "ABC123", "held", "auth failed; it's 'quoted'"]
    assert seen["stdin"] == ""
    assert seen["env"]["RELAYD_QUEUE_ID"] == "ABC123"
    assert seen["env"]["RELAYD_STATE"] == "held"
    assert seen["env"]["RELAYD_REASON"] == "auth failed; it's 'quoted'"
    assert (seen["env"]["RELAYD_ACCOUNT"], seen["env"]["RELAYD_SENDER"]) == ("w", "s@x")


def test_a_hanging_notify_command_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> float:
        notifier = Notifier("sleep 30; true", timeout=0.3)
        started = asyncio.get_running_loop().time()
        notifier.notify("ABC123", "failed", "550", account="w", sender="s@x")
        await notifier.wait(timeout=10)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(run()) < 5
    assert "killed after" in caplog.text


def test_a_failing_notify_command_is_logged_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        notifier = Notifier("echo oops >&2; exit 3")
        notifier.notify("ABC123", "failed", "550", account="w", sender="s@x")
        await notifier.wait(timeout=10)

    asyncio.run(run())
    assert "exited 3: oops" in caplog.text


def test_no_command_no_process() -> None:
    async def run() -> int:
        notifier = Notifier(None)
        notifier.notify("ABC123", "failed", "550", account="w", sender="s@x")
        return len(asyncio.all_tasks())

    assert asyncio.run(run()) == 1  # only the test's own task
    assert os.environ.get("RELAYD_QUEUE_ID") is None


def test_notices_do_not_import_the_drain() -> None:
    # What a delivery came to is a plain record kept with the recorder, not in the drain step.
    assert "relayd.daemon.drain" not in graph()["relayd.daemon.notices"]
