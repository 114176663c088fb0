"""`queue list` streams: batches of rows, each read in its own transaction, printed as they come."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import sqlalchemy as sa

from relayd.store import location
from relayd.store.listing import pages
from relayd.store.records import State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import sendmail_env
from tests.store_helpers import BACKENDS, database_url, message
from tests.test_daemon import RELAYD

T0 = 1_700_000_000.0
BATCH = 2_000  # relayd.store.listing's batch
QUEUED = 5_000  # three batches; the first one's text is far more than a pipe holds


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    with database_url(request.param, tmp_path) as url, SqlStore.open(url) as opened:
        yield opened


def test_a_listing_reads_a_batch_at_a_time_and_sees_later_changes(store: SqlStore) -> None:
    ids = enqueue_many(store, [message(n) for n in range(QUEUED)], T0)
    reads: list[int] = []

    def reading() -> AbstractContextManager[sa.Connection]:
        reads.append(len(reads))
        return store.reading()

    listed = pages(reading, None, None)
    first = next(listed)
    assert first.queue_id == ids[0]
    assert reads == [0]  # one batch read for the first message, not the whole queue
    # Between batches no read transaction is open: changes to messages not read yet show.
    assert store.delete([ids[-1]]) == (ids[-1],)
    assert store.hold([ids[-2]], "wait") == (ids[-2],)
    rest = list(listed)
    assert [m.queue_id for m in rest] == ids[1:-1]
    assert rest[-1].state == State.HELD.value
    assert len(reads) == -(-QUEUED // BATCH)  # ceil: the last batch is short, so no extra read
    assert [m.queue_id for m in store.listing([State.HELD])] == [ids[-2]]
    assert [m.queue_id for m in store.listing(None, "nobody")] == []


def test_queue_list_prints_its_first_lines_before_reading_the_whole_queue() -> None:
    with SqlStore.open(location.database_url()) as store:
        ids = enqueue_many(store, [message(n) for n in range(QUEUED)], T0)
        env = sendmail_env()
        proc = subprocess.Popen(
            [RELAYD, "queue", "list"],
            env=env,
            cwd=env["HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            heading = proc.stdout.readline().decode()
            first = proc.stdout.readline().decode()
            # `relayd queue list` now waits on the full pipe within its first batch: the last
            # message, in the third batch, has not been read yet.
            assert "Queue ID" in heading
            assert first.startswith(ids[0])
            assert store.delete([ids[-1]]) == (ids[-1],)
            rest, errors = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, errors
    text = rest.decode()
    assert ids[-2] in text and ids[-1] not in text
    assert text.rstrip().endswith(f"in {QUEUED - 1} Requests.")
