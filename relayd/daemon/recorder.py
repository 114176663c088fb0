"""Group commit of attempt results: each is committed right after its final reply, together with
the others that arrived while the previous commit was on its way to the disk. `Delivered` is an
attempt as committed: what the runner counts and the notices act on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from relayd.delivery.result import DeliveryResult
from relayd.store.interface import RunnerStore
from relayd.store.prepared import PreparedRecord
from relayd.store.queued import AttemptRecord, Outcome, QueuedMessage


@dataclass(frozen=True)
class Delivered:
    """A message's attempt: the result, the state it moved to, and what was sent to whom."""

    message: QueuedMessage
    result: DeliveryResult
    outcome: Outcome
    recipients: tuple[str, ...]
    data: bytes  # what was sent (bounces quote its headers)
    changed: bool = True  # False: the record did not move the message (lease lost, deleted)


class Recorder:
    """Collects attempt records and commits them in one transaction per fsync.

    While a commit runs (in a thread: it blocks on fsync), new records wait; when it ends, all
    of them go in the next transaction. So a lone message is committed at once, and under load
    the commits carry as many results as arrived during one fsync, instead of one fsync each.
    Every record goes to the store even if whoever waits for it is cancelled.
    """

    def __init__(self, store: RunnerStore) -> None:
        self._store = store
        self._waiting: list[tuple[PreparedRecord, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def record(self, record: AttemptRecord) -> asyncio.Future[bool]:
        """Queue `record` for the next commit; the future says whether the message changed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # The parameters are made here, on the loop: the committing thread only calls the
        # driver, so it never holds the GIL for long while the loop waits on a socket call.
        self._waiting.append((self._store.prepare(record), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def drain(self) -> None:
        """Wait until every record queued so far is committed (or has failed)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    changed = await asyncio.to_thread(
                        self._store.commit_prepared, [prepared for prepared, _ in batch]
                    )
                except Exception as exc:  # the queue cannot be written: each waiter sees it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), ok in zip(batch, changed, strict=True):
                    if not future.done():  # its waiter may have been cancelled
                        future.set_result(ok)
        finally:
            self._flusher = None
