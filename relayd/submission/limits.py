"""The submit socket's shared parts: a per-uid rate limit, and the group commit that stores
submissions arriving together in one transaction (one fsync) and answers each after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relayd.errors import QueueError, RelaydError
from relayd.store.records import NewMessage
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode


class RateLimit:
    """A token bucket per uid: `per_minute` messages a minute, bursts up to that many."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, uid: int, per_minute: int, now: float) -> bool:
        """Spend one token of `uid`'s bucket; False when it is empty."""
        tokens, stamp = self._buckets.get(uid, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - stamp) * per_minute / 60.0)
        allowed = tokens >= 1.0
        self._buckets[uid] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class Committer:
    """Group commit: messages handed in while a commit runs are stored together in the next
    one; each caller gets its queue id (or the error) only after its commit."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._pending: list[tuple[NewMessage, asyncio.Future[str]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, message: NewMessage, now: float) -> str:
        """Store `message`; its queue id once committed. A cancelled caller does not stop it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((message, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._commit(batch)

    async def _commit(self, batch: Sequence[tuple[NewMessage, asyncio.Future[str]]]) -> None:
        try:
            ids = await asyncio.to_thread(
                self.store.enqueue_many, [message for message, _ in batch], time.time()
            )
        except Exception as exc:
            if len(batch) > 1:  # one bad message must not sink the others: one at a time
                for one in batch:
                    await self._commit([one])
                return
            error = exc if isinstance(exc, RelaydError) else _unexpected(exc)
            _settle(batch[0][1], error=error)
            return
        for (_, future), queue_id in zip(batch, ids, strict=True):
            _settle(future, result=queue_id)


def _unexpected(exc: Exception) -> RelaydError:
    return QueueError(f"cannot store the message: {exc}", ExitCode.TEMPFAIL)


def _settle(
    future: asyncio.Future[str], *, result: str | None = None, error: RelaydError | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
        future.exception()  # retrieved: a caller that went away leaves no warning behind
    else:
        future.set_result(result or "")
