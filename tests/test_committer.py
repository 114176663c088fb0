"""The group commit (relayd.submission.limits.Committer) on a real SQLite queue: messages handed
in together share one commit, functions compose in its thread, one caller's failure is its own,
and the commit's callback (the runner's wake-up) runs once per commit that stored anything."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from relayd.errors import ConfigError, QueueError
from relayd.store.batch import BatchWriter, writer_for
from relayd.store.records import NewMessage
from relayd.store.sql import SqlStore
from relayd.submission import limits
from relayd.submission.limits import Committer
from relayd.sysexits import ExitCode
from tests.store_helpers import list_messages, message


@pytest.mark.parametrize("through", ["sqlstore", "batch-writer"])
def test_a_batch_composes_in_the_commit_thread_and_wakes_once(tmp_path: Path, through: str) -> None:
    store = SqlStore.open(f"sqlite:///{tmp_path / 'queue.db'}")
    writer = BatchWriter(str(tmp_path / "queue.db")) if through == "batch-writer" else None
    woken: list[int] = []
    threads: set[str] = set()

    def make(number: int) -> NewMessage:
        threads.add(threading.current_thread().name)
        if number == 2:
            raise ConfigError("no account for sender x@example.org")
        if number == 3:
            raise KeyError("relayd's bug")
        return message(number)

    async def main() -> list[str | BaseException]:
        committer = Committer(writer or store, on_commit=lambda: woken.append(1))
        calls = [committer.add(lambda n=n: make(n), 0.0) for n in range(5)]  # type: ignore[misc]
        calls.append(committer.add(message(5), 0.0))
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        results = asyncio.run(main())
        assert isinstance(results[2], ConfigError)
        assert isinstance(results[3], QueueError)  # a bug composing: this message only, 451
        stored = [m.queue_id for m in list_messages(store)]
        assert sorted(stored) == sorted(str(results[n]) for n in (0, 1, 4, 5))
        assert threading.main_thread().name not in threads
        assert len(woken) <= 2  # the first message alone, then the rest together
    finally:
        if writer is not None:
            writer.close()
        store.close()


def test_a_locked_queue_answers_every_caller_and_wakes_nobody(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    store = SqlStore.open(f"sqlite:///{path}", timeout=0.2)
    woken: list[int] = []
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the queue past the timeout

    async def main() -> list[str | BaseException]:
        committer = Committer(store, on_commit=lambda: woken.append(1))
        calls = [committer.add(lambda n=n: message(n), 0.0) for n in range(3)]  # type: ignore[misc]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert all(isinstance(r, QueueError) for r in results), results
        assert woken == [] and list_messages(store) == []
    finally:
        store.close()


def test_the_listener_wakes_the_runner_at_once_then_at_most_once_a_pause() -> None:
    """A first commit wakes the runner at once; commits during the pause get one wake-up at
    its end (never none: their mail must not wait for the periodic scan)."""
    from relayd.submission.listener import Paced

    other: list[float] = []

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        woken: list[float] = []
        paced = Paced(lambda: woken.append(loop.time()), 0.2)
        start = loop.time()
        for _ in range(50):
            paced()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.35)
        paced()  # long after: at once again
        cancelled = Paced(lambda: other.append(loop.time()), 0.2)
        cancelled()
        cancelled()
        cancelled.cancel()
        flushed = Paced(lambda: other.append(loop.time()), 0.2)
        flushed()
        flushed()
        flushed.flush()  # a worker's drain: the call due now, not at the end of the pause
        flushed.flush()  # nothing due any more
        await asyncio.sleep(0.25)
        return [t - start for t in woken]

    woken = asyncio.run(main())
    assert len(woken) == 3, woken  # at once, at the end of the pause, later at once again
    assert woken[0] < 0.05 and 0.19 < woken[1] < 0.35 and woken[2] > 0.45
    # cancelled: its second call was cancelled with it; flushed: both calls, the second early
    assert len(other) == 3 and other[2] - other[1] < 0.05, other


def test_a_driver_error_in_the_middle_of_a_batch_stores_none_of_it(tmp_path: Path) -> None:
    """On SQLite the batch goes in through the driver's connection: an error there (here the
    recipients table is gone) is a QueueError naming the queue, and the batch rolls back."""
    path = tmp_path / "queue.db"
    store = SqlStore.open(f"sqlite:///{path}")
    try:
        with sqlite3.connect(path) as breaker:
            breaker.execute("ALTER TABLE recipients RENAME TO recipients_gone")
        try:
            store.enqueue_many([message(n) for n in range(3)], 0.0)
        except QueueError as err:
            assert str(path) in err.message and "store the message" in err.message, err.message
        else:
            raise AssertionError("stored without a recipients table")
        with sqlite3.connect(path) as reader:
            assert reader.execute("SELECT count(*) FROM messages").fetchone() == (0,)
            assert reader.execute("SELECT count(*) FROM bodies").fetchone() == (0,)
    finally:
        store.close()


def test_the_batch_writer_stores_as_sqlstore_does_from_any_thread(tmp_path: Path) -> None:
    """The listener's SQLite commits (store.batch) go through the fast path's INSERTs on one
    connection of their own: the same rows as SqlStore's, a batch per transaction, from the
    threads the committer happens to run in."""
    path = tmp_path / "queue.db"
    store = SqlStore.open(f"sqlite:///{path}")
    writer = writer_for(f"sqlite:///{path}")
    assert writer is not None and writer_for("postgresql+psycopg://h/db") is None
    try:
        writer.open()
        ids: list[str] = []
        for start in (0, 3):  # two threads, one after the other
            thread = threading.Thread(
                target=lambda s=start: ids.extend(
                    writer.enqueue_many([message(n) for n in range(s, s + 3)], 5.0)
                )
            )
            thread.start()
            thread.join(30)
        ids += store.enqueue_many([message(6)], 5.0)
        stored = list_messages(store)
        assert [m.queue_id for m in stored] == ids
        for number, queued in enumerate(stored):
            assert store.read_data(queued.queue_id) == message(number).data
            assert queued.recipients[0].address == "rcpt@example.org"
            assert queued.sender == "sender@example.org" and queued.account == "default"
    finally:
        writer.close()
        store.close()


def test_the_batch_writer_fails_as_a_queue_error_and_recovers(tmp_path: Path) -> None:
    """A locked queue and a broken table are QueueErrors naming the queue (nothing of the batch
    stored); the same writer stores again once the queue is usable."""
    path = tmp_path / "queue.db"
    store = SqlStore.open(f"sqlite:///{path}")
    writer = BatchWriter(str(path), timeout=0.2).open()
    try:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            writer.enqueue_many([message(0)], 0.0)
        except QueueError as err:
            assert err.exit_code == ExitCode.TEMPFAIL and "locked (waited 0.2 s)" in err.message
        else:
            raise AssertionError("stored into a locked queue")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with sqlite3.connect(path) as breaker:
            breaker.execute("ALTER TABLE recipients RENAME TO recipients_gone")
        try:
            writer.enqueue_many([message(n) for n in range(3)], 0.0)
        except QueueError as err:
            assert str(path) in err.message and "store the message" in err.message, err.message
        else:
            raise AssertionError("stored without a recipients table")
        assert list_messages(store) == []
        with sqlite3.connect(path) as fixer:
            fixer.execute("ALTER TABLE recipients_gone RENAME TO recipients")
        (queue_id,) = writer.enqueue_many([message(9)], 0.0)
        assert [m.queue_id for m in list_messages(store)] == [queue_id]
    finally:
        writer.close()
        store.close()


def test_the_batch_writer_refuses_a_queue_of_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SqlStore.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'future'")
    try:
        BatchWriter(str(path)).open()
    except QueueError as err:
        assert "schema not at revision" in err.message and err.exit_code == ExitCode.TEMPFAIL
    else:
        raise AssertionError("opened a queue of another schema")


def test_the_commit_thread_ends_when_idle_and_a_failing_callback_wedges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer's own thread ends after IDLE_SECONDS without a batch and starts again
    with the next one; a wake-up callback that raises does not leave the committer busy."""
    monkeypatch.setattr(limits, "IDLE_SECONDS", 0.05)
    writer = BatchWriter(str(tmp_path / "queue.db"))
    SqlStore.open(f"sqlite:///{tmp_path / 'queue.db'}").close()
    calls: list[int] = []

    def on_commit() -> None:
        calls.append(1)
        raise RuntimeError("a broken wake-up")

    threads: list[threading.Thread] = []

    def make(number: int) -> NewMessage:
        threads.append(threading.current_thread())
        return message(number)

    async def main() -> list[str]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        committer = Committer(writer, on_commit=on_commit)
        first = await committer.add(lambda: make(0), 0.0)
        for _ in range(200):  # bounded: the thread ends within IDLE_SECONDS
            if not threads[0].is_alive():
                break
            await asyncio.sleep(0.01)
        assert not threads[0].is_alive()
        second = await asyncio.wait_for(committer.add(lambda: make(1), 0.0), 10)
        return [first, second]

    try:
        first, second = asyncio.run(main())
        assert first != second and len(calls) == 2
        assert threads[0] is not threads[1] and threads[0].name == "relayd-commit"
    finally:
        writer.close()
