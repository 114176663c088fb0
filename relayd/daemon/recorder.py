"""Group commit of attempt results: each is committed within milliseconds of its final reply,
together with the others that arrived meanwhile. `Delivered` is an attempt as committed: what the
runner counts and the notices act on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from relayd.delivery.result import DeliveryResult
from relayd.errors import RelaydError
from relayd.store.interface import RunnerStore
from relayd.store.prepared import PreparedRecord
from relayd.store.queued import AttemptRecord, Outcome, QueuedMessage

log = logging.getLogger("relayd.daemon.recorder")


@dataclass(frozen=True)
class Delivered:
    """A message's attempt: the result, the state it moved to, and what was sent to whom."""

    message: QueuedMessage
    result: DeliveryResult
    outcome: Outcome
    recipients: tuple[str, ...]
    data: bytes  # what was sent (bounces quote its headers); of a streamed body, its start
    changed: bool = True  # False: the record did not move the message (lease lost, deleted)


class Recorder:
    """Collects attempt records and commits them in one transaction per fsync.

    A commit starts GATHER seconds after the first record that waits for it, or at once when
    someone waits for the records (`flush`: a connection at the end of its batch, a stop).
    While it runs (in a thread: it blocks on fsync), new records wait for the next one. So
    under load each commit carries the results of a few milliseconds, dozens of messages,
    instead of the one or two that arrive during one fast fsync: the commit's fixed costs (the
    transaction, the fsync, waking the thread and handing the interpreter lock back and forth
    with the event loop) are paid once for all of them. Every record goes to the store even if
    whoever waits for it is cancelled.

    A commit that fails (disk full, a write lock held too long) is retried, with the records
    that arrive meanwhile, until it succeeds: a result the server gave is never dropped, and
    its message stays leased to this runner (fenced) until then. Only `abandon()` (the daemon
    is stopping) gives up: the waiters then see the error, and the messages stay leased for
    the next start to return, flagged as possible duplicates.
    """

    RETRY_FIRST = 0.2  # seconds before the first retry of a failed commit
    RETRY_MAX = 5.0
    GATHER = 0.01  # seconds a commit waits for more results (unless someone waits for them)

    def __init__(self, store: RunnerStore) -> None:
        self._store = store
        self._waiting: list[tuple[PreparedRecord, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._abandoned = asyncio.Event()
        self.failing: RelaydError | None = None  # the last commit failure while retrying
        self._hurry = False  # someone waits for the records: commit without gathering
        self._gathering: asyncio.Future[None] | None = None  # ends the gathering early

    def record(self, record: AttemptRecord) -> asyncio.Future[bool]:
        """Queue `record` for the next commit; the future says whether the message changed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # The parameters are made here, on the loop: the committing thread only calls the
        # driver, so it never holds the GIL for long while the loop waits on a socket call.
        self._waiting.append((self._store.prepare(record), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    def flush(self) -> None:
        """Commit the records queued so far without waiting for more: someone waits for them."""
        if self._flusher is None:  # nothing queued
            return
        self._hurry = True
        if self._gathering is not None and not self._gathering.done():
            self._gathering.set_result(None)

    async def drain(self) -> None:
        """Wait until every record queued so far is committed (or abandoned)."""
        while self._flusher is not None:
            self.flush()
            await asyncio.shield(self._flusher)

    def abandon(self) -> None:
        """Stop retrying failed commits: their waiters get the error (a daemon stopping)."""
        self._abandoned.set()

    async def _flush(self) -> None:
        batch: list[tuple[PreparedRecord, asyncio.Future[bool]]] = []
        try:
            delay = self.RETRY_FIRST
            while self._waiting or batch:
                if not batch and not self._hurry:
                    await self._gather()
                batch, self._waiting = batch + self._waiting, []
                self._hurry = False
                try:
                    changed = await asyncio.to_thread(
                        self._store.commit_prepared, [prepared for prepared, _ in batch]
                    )
                except RelaydError as exc:
                    if self._abandoned.is_set():
                        _fail(batch, exc)
                        batch = []
                        continue
                    if self.failing is None:
                        log.error(
                            "%s; %d result(s) kept in memory, retrying the commit",
                            exc.message,
                            len(batch),
                        )
                    self.failing = exc
                    with contextlib.suppress(TimeoutError):  # or until abandoned
                        await asyncio.wait_for(self._abandoned.wait(), delay)
                    delay = min(delay * 2, self.RETRY_MAX)
                    continue
                except Exception as exc:  # a bug: its waiters see it, the others go on
                    _fail(batch, exc)
                    batch = []
                    continue
                if self.failing is not None:
                    log.warning("the queue is writable again: %d result(s) recorded", len(batch))
                    self.failing, delay = None, self.RETRY_FIRST
                for (_, future), ok in zip(batch, changed, strict=True):
                    if not future.done():  # its waiter may have been cancelled
                        future.set_result(ok)
                batch = []
        except BaseException as exc:  # cancelled: no waiter may hang
            _fail(batch + self._waiting, exc)
            self._waiting = []
            raise
        finally:
            self._flusher = None

    async def _gather(self) -> None:
        """Let results arrive for GATHER seconds, or until `flush`."""
        loop = asyncio.get_running_loop()
        self._gathering = gathering = loop.create_future()
        timer = loop.call_later(self.GATHER, _end, gathering)
        try:
            await gathering
        finally:
            timer.cancel()
            self._gathering = None


def _end(gathering: asyncio.Future[None]) -> None:
    if not gathering.done():
        gathering.set_result(None)


def _fail(batch: list[tuple[PreparedRecord, asyncio.Future[bool]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
