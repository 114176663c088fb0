"""`[retain]`: old sent and failed bodies are purged (SQLite and PostgreSQL), the record stays,
the SQLite file gives the space back, the daemon's job does it, `queue show` says so."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relayd.cli import app
from relayd.cli.queue_list import PURGED_LINE
from relayd.daemon import lifecycle, retention
from relayd.errors import QueueError
from relayd.settings import Retain, Settings
from relayd.store import fastpath, location, retain
from relayd.store.database import Database
from relayd.store.queued import Attempt, Outcome, Recipient, RecipientState, State
from relayd.store.sql import SqlStore
from relayd.store.tables import messages
from relayd.submission.queuelist import PURGED
from relayd.sysexits import ExitCode
from tests.queue_fill import enqueue_many
from tests.store_helpers import BACKENDS, database_url, message, record_attempt

NOW = 2_000_000_000.0  # the fake clock: May 2033
DAY = 86_400.0
KEEP = Retain(sent=7 * 86_400, failed=30 * 86_400)  # the defaults, spelled out
SENT_BEFORE, FAILED_BEFORE = NOW - KEEP.sent, NOW - KEEP.failed


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    with SqlStore.open(url) as opened:
        yield opened


def finished(store: SqlStore, state: State, at: float, number: int = 0) -> str:
    """A message that ended `state` (sent or failed) at an attempt started at `at`."""
    queue_id = store.enqueue(message(number), at - 60)
    recipient = RecipientState.SENT if state is State.SENT else RecipientState.FAILED
    code = 250 if state is State.SENT else 550
    result = (Recipient(0, "rcpt@example.org", recipient, code, "done"),)
    exit_code = ExitCode.OK if state is State.SENT else ExitCode.UNAVAILABLE
    attempt = Attempt(at, 0.5, "mx.example.org", True, True, exit_code, code, "done", result)
    assert record_attempt(store, queue_id, attempt, Outcome(state, reason="done"))
    return queue_id


def untried(store: SqlStore, state: State, created: float, number: int = 0) -> str:
    """A message in `state` never attempted (no last attempt time), arrived at `created`."""
    queue_id = store.enqueue(message(number), created)
    with store.engine.begin() as conn:
        conn.execute(
            messages.update().where(messages.c.queue_id == queue_id).values(state=state.value)
        )
    return queue_id


def test_purge_takes_old_sent_and_failed_bodies_and_keeps_the_record(store: SqlStore) -> None:
    old_sent = finished(store, State.SENT, SENT_BEFORE - 1, 1)
    young_sent = finished(store, State.SENT, SENT_BEFORE + 1, 2)
    exactly_sent = finished(store, State.SENT, SENT_BEFORE, 3)  # not *older* than retain.sent
    old_failed = finished(store, State.FAILED, FAILED_BEFORE - 1, 4)
    # Older than retain.sent, younger than retain.failed: a failed body stays.
    young_failed = finished(store, State.FAILED, SENT_BEFORE - DAY, 5)
    never_tried = untried(store, State.SENT, SENT_BEFORE - 1, 6)  # by its arrival time
    never_tried_young = untried(store, State.FAILED, FAILED_BEFORE + 1, 7)
    ancient = NOW - 365 * DAY
    waiting = {
        state: untried(store, state, ancient, 10 + n)
        for n, state in enumerate((State.QUEUED, State.HELD, State.SENDING))
    }
    before = {q: store.read_data(q) for q in (old_sent, old_failed, never_tried)}

    assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == 3
    for queue_id in (old_sent, old_failed, never_tried):
        assert store.read_data(queue_id) is None
        kept = store.get(queue_id)  # the record, envelope and recipients stay
        assert kept is not None and kept.sender == "sender@example.org"
        assert [r.address for r in kept.recipients] == ["rcpt@example.org"]
        assert kept.size == len(before[queue_id] or b"")
    assert len(store.attempts(old_sent)) == 1 and len(store.attempts(old_failed)) == 1
    for queue_id in (young_sent, exactly_sent, young_failed, never_tried_young, *waiting.values()):
        assert store.read_data(queue_id) is not None, queue_id
    assert {s: (store.get(q) or pytest.fail()).state for s, q in waiting.items()} == {
        s: s for s in waiting
    }
    assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == 0  # nothing left to purge
    assert store.read_data_many([old_sent, young_sent]) == {young_sent: store.read_data(young_sent)}


def test_purge_deletes_in_bounded_batches(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    database = Database.open(url)
    try:
        store = SqlStore(database)
        ids = [finished(store, State.SENT, SENT_BEFORE - 1, n) for n in range(10)]
        transactions: list[str] = []
        real = database.transaction

        def counted(action: str, *, write: bool = True) -> AbstractContextManager[Any]:
            transactions.append(action)
            return real(action, write=write)

        monkeypatch.setattr(database, "transaction", counted)
        assert retain.purge(database, SENT_BEFORE, FAILED_BEFORE, batch=3) == 10
        assert transactions == ["purge message bodies"] * 4  # 3 + 3 + 3 + 1
        monkeypatch.undo()
        assert all(store.read_data(q) is None for q in ids)
        # A daemon stopping waits for the batch under way, not for the whole purge.
        more = [finished(store, State.FAILED, FAILED_BEFORE - 1, n) for n in range(10)]
        stopped = retain.purge(database, SENT_BEFORE, FAILED_BEFORE, batch=3, stop=lambda: True)
        assert stopped == 3
        assert sum(store.read_data(q) is None for q in more) == 3
    finally:
        database.close()


def test_reclaim_after_a_purge_works_on_both_databases(store: SqlStore) -> None:
    finished(store, State.SENT, SENT_BEFORE - 1)
    assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == 1
    freed = store.reclaim_space()
    if store.engine.dialect.name == "postgresql":
        assert freed == 0
    else:
        assert freed >= 0


# -- the SQLite file gives the space back -------------------------------------------------------

BODY = 50_000
COUNT = 200


def fill_sent(store: SqlStore, count: int = COUNT, at: float = SENT_BEFORE - DAY) -> list[str]:
    """`count` sent messages of BODY random bytes each, last tried at `at`."""
    batch = [message(n, data=os.urandom(BODY)) for n in range(count)]
    ids = enqueue_many(store, batch, at - 60)
    with store.engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(messages.c.queue_id.in_(ids))
            .values(state=State.SENT.value, last_attempt_at=at)
        )
    return ids


def on_disk(path: Path) -> int:
    """The queue's bytes on disk: the database file and its WAL."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def auto_vacuum(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def test_a_purge_shrinks_a_new_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with SqlStore.open(f"sqlite:///{path}") as store:
        assert auto_vacuum(path) == 2  # INCREMENTAL, set before the first table
        ids = fill_sent(store)
        young = fill_sent(store, 2, at=SENT_BEFORE + DAY)
        checkpoint(path)
        before = on_disk(path)
        assert before > COUNT * BODY
        assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == COUNT
        freed = store.reclaim_space()
        after = on_disk(path)
        assert all(store.read_data(q) is None for q in ids)
        assert all(len(store.read_data(q) or b"") == BODY for q in young)
        assert store.get(ids[0]) is not None
    print(f"\nnew file: {before:,} bytes -> {after:,} bytes (freed {freed:,})")
    assert after < 4 * BODY + 200_000  # two bodies left, and the small rows
    assert freed >= COUNT * BODY * 0.9


def test_an_older_file_is_switched_to_incremental_once(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    SqlStore.open(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("PRAGMA auto_vacuum=NONE; VACUUM;")  # as files created before [retain]
    conn.close()
    assert auto_vacuum(path) == 0
    with SqlStore.open(f"sqlite:///{path}") as store:
        fill_sent(store)
        checkpoint(path)
        before = on_disk(path)
        assert auto_vacuum(path) == 0  # opening alone does not switch it
        assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == COUNT
        store.reclaim_space()
        after = on_disk(path)
        assert auto_vacuum(path) == 2
        # From now on a purge gives its space back without a VACUUM.
        fill_sent(store, 100)
        checkpoint(path)
        refilled = on_disk(path)
        assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == 100
        store.reclaim_space()
        again = on_disk(path)
    print(f"\nold file: {before:,} -> {after:,} bytes; refilled {refilled:,} -> {again:,} bytes")
    assert after < 200_000 and again < 200_000
    assert refilled > 100 * BODY


def test_a_queue_created_by_relayd_sendmail_is_incremental(tmp_path: Path) -> None:
    path = tmp_path / "queue" / "q.sqlite3"
    fastpath.enqueue(str(path), message(), NOW)
    assert auto_vacuum(path) == 2


# -- the daemon's job --------------------------------------------------------------------------


def test_the_daemons_job_purges_with_its_settings_and_clock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    keep = Retain(sent=3600, failed=7200)
    with SqlStore.open(url) as store:
        old_sent = finished(store, State.SENT, NOW - 3601, 1)
        young_sent = finished(store, State.SENT, NOW - 3599, 2)
        old_failed = finished(store, State.FAILED, NOW - 7201, 3)
        young_failed = finished(store, State.FAILED, NOW - 3601, 4)

        async def run() -> None:
            life = lifecycle._Lifecycle(
                store, Settings(database=url, retain=keep), None, 30.0, 1.0, lambda: NOW
            )
            await life._retain()

        asyncio.run(run())
        assert store.read_data(old_sent) is None and store.read_data(old_failed) is None
        assert store.read_data(young_sent) is not None
        assert store.read_data(young_failed) is not None


class Broken:
    """A store whose purge fails as given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def purge_bodies(
        self, sent_before: float, failed_before: float, *, stop: Callable[[], bool] | None = None
    ) -> int:
        raise self.error

    def reclaim_space(self) -> int:
        raise AssertionError("not after a failed purge")


class Counting:
    """A store that purges 5 bodies and frees 1 MB, and remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, bool]] = []
        self.reclaimed = 0

    def purge_bodies(
        self, sent_before: float, failed_before: float, *, stop: Callable[[], bool] | None = None
    ) -> int:
        self.calls.append((sent_before, failed_before, stop is not None and stop()))
        return 5

    def reclaim_space(self) -> int:
        self.reclaimed += 1
        return 1_000_000


def test_the_job_reclaims_after_a_purge_unless_the_daemon_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "relayd.daemon.retention")
    store = Counting()
    assert asyncio.run(retention.run(store, KEEP, NOW)) == 5  # type: ignore[arg-type]
    assert (store.calls, store.reclaimed) == ([(SENT_BEFORE, FAILED_BEFORE, False)], 1)
    assert "purged the bodies of 5 sent or failed message(s)" in caplog.text
    assert "shrank by 1.0 MB" in caplog.text
    stopping = Counting()
    assert retention.purge(stopping, KEEP, NOW, lambda: True) == (5, 0)  # type: ignore[arg-type]
    assert (stopping.calls, stopping.reclaimed) == ([(SENT_BEFORE, FAILED_BEFORE, True)], 0)


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (
            QueueError(
                "cannot purge message bodies in q: the queue database is locked", ExitCode.TEMPFAIL
            ),
            "retain: cannot purge message bodies in q: the queue database is locked",
        ),
        (RuntimeError("first line\nsecond line"), "retain: RuntimeError: first line"),
    ],
)
def test_a_failing_purge_is_one_log_line(
    error: Exception, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "relayd.daemon.retention")
    purged = asyncio.run(retention.run(Broken(error), KEEP, NOW))  # type: ignore[arg-type]
    assert purged == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, logged)]


# -- queue show --------------------------------------------------------------------------------


def test_queue_show_of_a_purged_message_says_so() -> None:
    runner = CliRunner()
    with SqlStore.open(location.database_url()) as store:
        queue_id = finished(store, State.SENT, SENT_BEFORE - 1)
        kept = finished(store, State.SENT, SENT_BEFORE + DAY, 1)
        assert store.purge_bodies(SENT_BEFORE, FAILED_BEFORE) == 1

    result = runner.invoke(app, ["queue", "show", queue_id])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert PURGED_LINE in lines
    assert f"Queue ID: {queue_id}" in lines and "State: sent" in lines
    assert "Sender: sender@example.org" in lines and "  rcpt@example.org: sent (250 done)" in lines
    assert sum("exitcode=EX_OK" in line for line in lines) == 1  # the attempt, as usual
    assert "Headers:" not in lines

    result = runner.invoke(app, ["queue", "show", "--json", queue_id])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert (record["body_purged"], record["headers"], record["state"]) == (True, [], "sent")

    result = runner.invoke(app, ["queue", "show", "--raw", queue_id])
    assert (result.exit_code, result.output) == (
        ExitCode.NOINPUT,
        f"relayd: {queue_id}: {PURGED}\n",
    )

    result = runner.invoke(app, ["queue", "log", queue_id])  # the attempt, without mailsize=
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert "exitcode=EX_OK" in line and "mailsize=" not in line

    result = runner.invoke(app, ["queue", "show", kept])  # a body still there: as before
    assert result.exit_code == 0 and PURGED_LINE not in result.output
    assert "  Subject: test 1" in result.output.splitlines()
    record = json.loads(runner.invoke(app, ["queue", "show", "--json", kept]).output)
    assert record["body_purged"] is False and record["headers"] == [["Subject", "test 1"]]
