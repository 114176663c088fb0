"""The claimed messages' bodies: small ones read a group ahead, big ones streamed as sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

from relayd.delivery.classify import Failure
from relayd.delivery.result import Disposition, Event
from relayd.delivery.wire import Abort
from relayd.errors import RelaydError
from relayd.store.interface import RunnerStore
from relayd.store.queued import MailSize, QueuedMessage
from relayd.sysexits import ExitCode

# Bodies are read from the store a group at a time, at most this many bytes (and at least one
# message) per read: a batch of 100 big messages must not sit in memory at once.
READ_AHEAD_BYTES = 4 << 20
# A body bigger than this is never read whole: it is streamed from the store as it is sent.
STREAM_ABOVE = 1 << 20
HEAD_BYTES = 64 << 10  # what a streamed body keeps of its start (bounces quote the headers)


class Streamed:
    """A big body, read from the store a few rows at a time while it goes out.

    `head`: its first bytes (a bounce quotes the header block). `counted`: msmtp's mailsize
    of what went out, counted as it streamed.
    """

    def __init__(
        self, queue_id: str, size: int, last: bytes, first: bytes, rest: Iterator[bytes]
    ) -> None:
        self._queue_id, self.size, self.last = queue_id, size, last
        self._first, self._rest = first, rest
        self.head = first[:HEAD_BYTES]
        self.counted = MailSize()

    @classmethod
    async def open(cls, store: RunnerStore, message: QueuedMessage) -> Streamed | None:
        """The body of `message`, its first rows read; None if it was deleted since the claim."""
        chunks = store.read_data_chunks(message.queue_id)
        first = await asyncio.to_thread(next, chunks, None)
        last = await asyncio.to_thread(store.read_body_end, message.queue_id)
        if first is None or last is None:
            return None
        return cls(message.queue_id, message.size, last, first, chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stored bytes in order; Abort (no final dot goes out) if they cannot all be read:
        the store failed, or the message was deleted meanwhile."""
        chunk: bytes | None = self._first
        done = 0
        while chunk is not None:
            done += len(chunk)
            self.counted.add(chunk)
            yield chunk
            try:
                chunk = await asyncio.to_thread(next, self._rest, None)
            except RelaydError as exc:
                raise _unreadable(self._queue_id, exc.message) from None
        if done != self.size:
            raise _unreadable(self._queue_id, f"{done} of {self.size} bytes left in the queue")


def _unreadable(queue_id: str, why: str) -> Abort:
    error = f"{queue_id}: cannot read the queued message: {why}"
    return Abort(Failure(Event.READ, ExitCode.IOERR, Disposition.RETRY, error))


class Bodies:
    """The claimed messages' stored bytes, read a bounded group ahead of the one being sent."""

    def __init__(self, store: RunnerStore, messages: Sequence[QueuedMessage]) -> None:
        self._store = store
        self._messages = messages
        self._read: dict[str, bytes] = {}
        self._next = 0  # the first message not read yet

    async def get(self, index: int, ahead: bool = True) -> bytes | Streamed | None:
        """Message `index`'s bytes, or its stream if it is big (None: deleted meanwhile);
        forgets the ones before it. Without `ahead` (the connection is down: nothing more will
        be sent on it) only this message is read, not a group."""
        message = self._messages[index]
        if message.size > STREAM_ABOVE:
            return await Streamed.open(self._store, message)
        if index >= self._next:
            group: list[str] = []
            size = 0
            for later in self._messages[index : None if ahead else index + 1]:
                if later.size > STREAM_ABOVE or (group and size + later.size > READ_AHEAD_BYTES):
                    break
                group.append(later.queue_id)
                size += later.size
            self._next = index + len(group)
            self._read = await asyncio.to_thread(self._store.read_data_many, group)
        return self._read.pop(message.queue_id, None)

    def peek(self, index: int) -> bytes | None:
        """Message `index`'s bytes if they are read already (no waiting), else None."""
        if not index < min(self._next, len(self._messages)):
            return None
        return self._read.get(self._messages[index].queue_id)
