"""The submit socket's shared parts: a per-uid rate limit, and the group commit that stores
submissions arriving together in one transaction (one fsync) and answers each after it."""

# Why the committer composes: the SMTP listener hands it functions that make the message
# (header rules, account choice): run in the commit's thread, a batch costs one hop to a thread
# instead of two per message.

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from relayd.errors import QueueError, RelaydError
from relayd.store.records import NewMessage
from relayd.sysexits import ExitCode

log = logging.getLogger("relayd.submit")

Work = NewMessage | Callable[[], NewMessage]  # a message, or what composes it
_Job = tuple[asyncio.AbstractEventLoop, list[tuple[Work, "asyncio.Future[str]"]]]
IDLE_SECONDS = 5.0  # the commit thread ends after this long without a batch


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


class BatchStore(Protocol):
    """Where a group commit goes: SqlStore, or a SQLite queue's `store.batch.BatchWriter`."""

    def enqueue_many(self, batch: Sequence[NewMessage], now: float) -> Sequence[str]:
        """Store `batch` in one transaction; their queue ids, in order (all or none)."""
        ...


class Committer:
    """Group commit: messages handed in while a commit runs are stored together in the next
    one; each caller gets its queue id (or the error) only after its commit. Functions handed
    in are called in the commit's thread to compose their message (their RelaydError is that
    caller's answer). `on_commit` runs on the event loop after each commit that stored any;
    `lock` (when given) is held around each transaction."""

    def __init__(
        self,
        store: BatchStore,
        on_commit: Callable[[], None] | None = None,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.store = store
        self.on_commit = on_commit
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self._pending: list[tuple[Work, asyncio.Future[str]]] = []
        self._busy = False  # a batch is being stored, or about to be
        # The commit thread: one of the committer's own, fed batches through `_jobs`, ended
        # after IDLE_SECONDS without work (a thread pool's hand-off costs more per batch).
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread_lock = threading.Lock()
        self._thread_alive = False

    async def add(self, message: Work, now: float) -> str:
        """Store `message`; its queue id once committed. A cancelled caller does not stop it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((message, future))
        if not self._busy:  # what arrives in this turn of the event loop joins the batch
            self._busy = True
            loop.call_soon(self._next, loop)
        return await future

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """(On the loop) hand the pending messages to the commit thread as one batch."""
        batch, self._pending = self._pending, []
        if not batch:
            self._busy = False
            return
        with self._thread_lock:
            self._jobs.put((loop, batch))
            if not self._thread_alive:
                self._thread_alive = True
                threading.Thread(target=self._serve, name="relayd-commit", daemon=True).start()

    def _serve(self) -> None:
        """(The commit thread) store each batch, answer on its loop; end when idle."""
        while True:
            try:
                loop, batch = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._thread_lock:
                    if self._jobs.empty():
                        self._thread_alive = False
                        return
                continue
            try:
                outcomes = self._store([work for work, _ in batch])
            except Exception as exc:  # nothing was stored
                outcomes = [_unexpected(exc)] * len(batch)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._done, loop, batch, outcomes)

    def _done(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: Sequence[tuple[Work, asyncio.Future[str]]],
        outcomes: Sequence[str | RelaydError],
    ) -> None:
        """(On the loop) answer each caller of a committed batch, then start the next one."""
        try:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RelaydError):
                    _settle(future, error=outcome)
                else:
                    _settle(future, result=outcome)
            stored = not all(isinstance(o, RelaydError) for o in outcomes)
            if self.on_commit is not None and stored:
                self.on_commit()
        finally:
            self._next(loop)  # never left busy: the messages waiting go in the next batch

    def _store(self, batch: Sequence[Work]) -> list[str | RelaydError]:
        """(In a thread) compose what needs it, store the rest in one transaction."""
        made = [_compose(work) for work in batch]
        with self.lock:
            stored = iter(self._enqueue([m for m in made if isinstance(m, NewMessage)]))
        return [next(stored) if isinstance(m, NewMessage) else m for m in made]

    def _enqueue(self, batch: Sequence[NewMessage]) -> list[str | RelaydError]:
        if not batch:
            return []
        try:
            return list(self.store.enqueue_many(batch, time.time()))
        except Exception as exc:
            if len(batch) > 1:  # one bad message must not sink the others: one at a time
                return [outcome for message in batch for outcome in self._enqueue([message])]
            return [exc if isinstance(exc, RelaydError) else _unexpected(exc)]


def _compose(work: Work) -> NewMessage | RelaydError:
    if isinstance(work, NewMessage):
        return work
    try:
        return work()
    except RelaydError as err:
        return err
    except Exception as exc:  # relayd's bug: this message only, logged with its traceback
        log.exception("cannot compose a message")
        return _unexpected(exc)


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
