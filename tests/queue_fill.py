"""Fill a queue fast: many messages in one transaction, for tests and the drain benchmark.

Only relayd and the standard library: `benchmarks/drain.py` runs this in its own venv, which has
no pytest.
"""

from __future__ import annotations

from collections.abc import Iterable

from relayd.store.ids import new_queue_id
from relayd.store.records import NewMessage
from relayd.store.rows import insert_message
from relayd.store.sql import SqlStore


def enqueue_many(store: SqlStore, batch: Iterable[NewMessage], now: float) -> list[str]:
    """Store every message of `batch` in one transaction, all due and arrived at `now`; their
    queue ids.

    Ids come from the clock and a random part, like `SqlStore.enqueue`'s; within the batch they
    are kept distinct, and the id's time part moves on a millisecond every 4,096 messages so its
    random part never runs short.
    """
    ids: list[str] = []
    seen: set[str] = set()
    with store.engine.begin() as conn:
        for index, message in enumerate(batch):
            queue_id = new_queue_id(now + (index >> 12) / 1000)
            while queue_id in seen:
                queue_id = new_queue_id(now + (index >> 12) / 1000)
            seen.add(queue_id)
            insert_message(conn, queue_id, message, now)
            ids.append(queue_id)
    return ids
