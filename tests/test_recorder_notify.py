"""The group-committing Recorder and the notify command, against a real SQLite queue and /bin/sh."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from relayd.accounts.stored import account_for
from relayd.daemon import drain
from relayd.daemon.notify import Notifier
from relayd.daemon.recorder import Recorder
from relayd.daemon.runner import Runner
from relayd.settings import Settings
from relayd.store.prepared import PreparedRecord
from relayd.store.queued import Attempt, AttemptRecord, Outcome, Recipient, RecipientState, State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import write_msmtprc
from tests.store_helpers import message
from tests.test_architecture import graph
from tests.upstream import UpstreamServer

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> SqlStore:
    return SqlStore.open(f"sqlite:///{tmp_path / 'q.sqlite3'}")


def sent(queue_id: str, owner: str) -> AttemptRecord:
    attempt = Attempt(
        T0, 0.01, "mx", False, False, 0, 250, "ok", (Recipient(0, "a", RecipientState.SENT),)
    )
    return AttemptRecord(queue_id, attempt, Outcome(State.SENT), owner)


def counted_commits(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group commit `store` makes from now on."""
    batches: list[int] = []
    real = store.commit_prepared

    def counting(batch: list[PreparedRecord]) -> list[bool]:
        batches.append(len(batch))
        return real(batch)

    monkeypatch.setattr(store, "commit_prepared", counting)
    return batches


def test_records_arriving_during_a_commit_share_the_next_one(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(50)], T0)
    store.claim_due("default", T0, 300, "r", 50)
    batches = counted_commits(store, monkeypatch)

    async def run() -> list[bool]:
        recorder = Recorder(store)
        recorder.GATHER = 0.0  # a commit starts at the next loop turn
        futures = []
        for queue_id in ids:  # a result every loop turn, while commits run in a thread
            futures.append(recorder.record(sent(queue_id, "r")))
            await asyncio.sleep(0)
        return list(await asyncio.gather(*futures))

    assert asyncio.run(run()) == [True] * 50
    assert sum(batches) == 50
    assert 1 < len(batches) < 50  # committed as they came, the later ones grouped
    assert all(store.get(q).state is State.SENT for q in ids)  # type: ignore[union-attr]


def test_a_commit_waits_a_moment_for_more_results(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(3)], T0)
    store.claim_due("default", T0, 300, "r", 3)
    batches = counted_commits(store, monkeypatch)

    async def run() -> tuple[list[bool], float]:
        recorder = Recorder(store)
        recorder.GATHER = 0.2
        started = time.monotonic()
        futures = [recorder.record(sent(ids[0], "r"))]
        await asyncio.sleep(0.05)  # the others come later, within the gathering time
        futures += [recorder.record(sent(queue_id, "r")) for queue_id in ids[1:]]
        changed = await asyncio.wait_for(asyncio.gather(*futures), 10)
        return list(changed), time.monotonic() - started

    changed, took = asyncio.run(run())
    assert changed == [True] * 3
    assert batches == [3]  # one commit for the three
    assert took >= 0.2  # it waited for the gathering time: nobody asked for the results


def test_flush_commits_at_once_what_someone_waits_for(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(20)], T0)
    store.claim_due("default", T0, 300, "r", 20)
    batches = counted_commits(store, monkeypatch)

    async def run() -> list[bool]:
        recorder = Recorder(store)
        recorder.GATHER = 600.0  # without flush the test would time out
        futures = [recorder.record(sent(queue_id, "r")) for queue_id in ids[:10]]
        await asyncio.sleep(0)  # the commit is gathering
        futures += [recorder.record(sent(queue_id, "r")) for queue_id in ids[10:]]
        recorder.flush()
        changed = await asyncio.wait_for(asyncio.gather(*futures), 10)
        (late,) = enqueue_many(store, [message(number=99)], T0)
        store.claim_due("default", T0, 300, "s", 1)
        recorder.record(sent(late, "s"))
        await asyncio.wait_for(recorder.drain(), 10)  # drain commits without gathering too
        return list(changed)

    assert asyncio.run(run()) == [True] * 20
    assert batches == [20, 1]


def test_a_connection_does_not_wait_for_the_gathering_time_at_the_end_of_its_batch(
    tmp_path: Path,
) -> None:
    settings = Settings(database=f"sqlite:///{tmp_path / 'q.sqlite3'}")
    with UpstreamServer(timeout=20) as upstream, SqlStore.open(settings.database) as store:
        write_msmtprc(
            f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
        )
        now = time.time()
        enqueue_many(store, [message(number=n) for n in range(3)], now)
        claimed = store.claim_due("default", now, 300, "r", 3)

        async def run() -> drain.Drained:
            recorder = Recorder(store)
            recorder.GATHER = 600.0  # deliver_claimed flushes, or this times out
            account = account_for("default", None, ())
            delivering = drain.deliver_claimed(
                store, account, claimed, settings, owner="r", recorder=recorder
            )
            return await asyncio.wait_for(delivering, 30)

        drained = asyncio.run(run())
    assert [d.outcome.state.value for d in drained.delivered] == ["sent"] * 3
    assert len(upstream.transactions) == 3


def test_held_mail_of_a_gone_account_does_not_wait_for_the_gathering_time(
    store: SqlStore,
) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(2)], T0)
    claimed = store.claim_due("default", T0, 300, "r", 2)

    async def run() -> None:
        runner = Runner(store, Settings(database="sqlite://"), owner="r")
        runner.recorder.GATHER = 600.0  # the hold flushes, or this times out
        await asyncio.wait_for(runner._hold(claimed, "account gone", "r"), 30)

    asyncio.run(run())
    assert all(store.get(q).state is State.HELD for q in ids)  # type: ignore[union-attr]


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
