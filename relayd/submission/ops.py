"""The queue commands users run through the host submit socket (SPEC §7): anyone may list
the queue, but other users' envelopes are hidden; show, hold, release and delete act only on
the caller's own messages (root may do everything); flush makes due what it names."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from relayd.daemon import actions
from relayd.daemon.services import Context
from relayd.store.listing import Listed
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.submission import queuelist
from relayd.submission.protocol import Refused
from relayd.sysexits import ExitCode
from relayd.text import display_headers

_BATCH = 1000  # listing rows read per trip to the store's thread
_RAW_CHUNK = 48 * 1024


def may_see(uid: int, owner: int | None) -> bool:
    """Root sees every envelope; a user sees its own."""
    return uid == 0 or owner == uid


def wire_listed(message: Listed, uid: int) -> list[Any]:
    """A listing row for `uid`: another user's has no sender, recipients or reason."""
    if may_see(uid, message.owner_uid):
        return [*message[:-1], [list(r) for r in message.recipients]]
    return [*message._replace(sender="", reason=None)[:-1], []]


class QueueOps:
    """The handlers, by op name, for `SubmitServer.handlers`."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def store(self) -> SqlStore:
        return self.context.store

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "list": self.list_,
            "show": self.show,
            "hold": self.hold,
            "release": self.release,
            "delete": self.delete,
            "flush": self.flush,
        }

    async def list_(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        states = hello.get("states")
        try:
            chosen = None if states is None else tuple(State(s) for s in states)
        except (TypeError, ValueError):
            raise Refused(f"bad states {states!r}", ExitCode.USAGE) from None
        account = hello.get("account")
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue[list[Listed] | None] = asyncio.Queue(maxsize=2)

        def produce() -> None:
            """Read the listing in one thread (one connection), a batch at a time; the
            bounded queue keeps a slow reader from holding the whole queue in memory."""
            try:
                rows = iter(
                    self.store.listing(chosen, account if isinstance(account, str) else None)
                )
                while batch := _take(rows, _BATCH):
                    asyncio.run_coroutine_threadsafe(batches.put(batch), loop).result()
            finally:
                asyncio.run_coroutine_threadsafe(batches.put(None), loop).result()

        reading = asyncio.ensure_future(asyncio.to_thread(produce))
        try:
            while (batch := await batches.get()) is not None:
                for message in batch:
                    await send({"listed": wire_listed(message, uid)})
        finally:
            while not reading.done():  # let the reader finish (a client that left)
                with contextlib.suppress(asyncio.QueueEmpty):
                    batches.get_nowait()
                await asyncio.sleep(0.01)
        await reading
        return 0, ""

    async def show(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        queue_id = _one_id(hello)

        def read() -> tuple[Any, ...]:
            message = self.store.get(queue_id)
            if message is None:
                return None, None, (), iter(())
            chunks = self.store.read_data_chunks(queue_id)  # a chunk at a time, never whole
            return message, next(chunks, None), self.store.attempts(queue_id), chunks

        message, first, attempts, rest = await asyncio.to_thread(read)
        if message is None:
            raise Refused(f"{queue_id}: no such message", ExitCode.UNAVAILABLE)
        if not may_see(uid, message.uid):
            raise Refused(_not_yours(queue_id), ExitCode.NOPERM)
        if hello.get("raw"):
            if first is None:
                raise Refused(f"{queue_id}: {queuelist.PURGED}", ExitCode.NOINPUT)
            chunk = first
            while chunk is not None:
                for start in range(0, len(chunk), _RAW_CHUNK):
                    piece = chunk[start : start + _RAW_CHUNK]
                    await send({"raw": base64.b64encode(piece).decode("ascii")})
                chunk = await asyncio.to_thread(next, rest, None)
            return 0, ""
        head = None
        if first is not None:
            head = await asyncio.to_thread(queuelist.header_head, itertools.chain([first], rest))
        headers = None if head is None else display_headers(head)
        await send({"record": queuelist.show_record(message, attempts, headers)})
        return 0, ""

    async def hold(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        return await self._change(hello, uid, send, hold=True)

    async def release(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        return await self._change(hello, uid, send, hold=False)

    async def _change(
        self, hello: dict[str, Any], uid: int, send: Send, *, hold: bool
    ) -> tuple[int, str]:
        ids, lines, refused = await self._owned(hello, uid)
        code, wake = 0, False
        if ids:
            code, wake = await asyncio.to_thread(
                actions.hold_or_release,
                self.store,
                ids,
                hold=hold,
                say=lambda line: lines.append(("say", line)),
                complain=lambda line: lines.append(("complain", line)),
            )
        if wake:
            self.context.wake()
        return await _finish(send, lines, code, refused)

    async def delete(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        ids, lines, refused = await self._owned(hello, uid)
        code = 0
        if ids:
            code = await asyncio.to_thread(
                actions.delete,
                self.store,
                ids,
                say=lambda line: lines.append(("say", line)),
                complain=lambda line: lines.append(("complain", line)),
            )
        return await _finish(send, lines, code, refused)

    async def flush(self, hello: dict[str, Any], uid: int, send: Send) -> tuple[int, str]:
        """Every queued message due now (as `postqueue -f` lets anyone), or the caller's own
        that it names."""
        lines: list[tuple[str, str]] = []
        refused = False
        ids: list[str] | None = None
        if hello.get("ids"):
            ids, lines, refused = await self._owned(hello, uid)
        account = hello.get("account")
        flushed: list[str] = []
        if ids is None or ids:
            flushed = list(
                await asyncio.to_thread(
                    self.store.make_due,
                    time.time(),
                    ids,
                    account if isinstance(account, str) else None,
                )
            )
        for queue_id in sorted(set(ids or ()) - set(flushed)):
            lines.append(("complain", f"{queue_id}: no such queued message"))
        if flushed:
            self.context.wake()
            lines.append(("say", f"{len(flushed)} message(s) due now; the daemon delivers them"))
        else:
            lines.append(("say", "nothing to flush"))
        missing = bool(ids) and len(flushed) < len(ids or ())
        return await _finish(send, lines, ExitCode.UNAVAILABLE if missing else 0, refused)

    async def _owned(
        self, hello: dict[str, Any], uid: int
    ) -> tuple[list[str], list[tuple[str, str]], bool]:
        """The named ids the caller may act on, a refusal line for each other, and whether
        any was refused."""
        ids = hello.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise Refused("no queue ids given", ExitCode.USAGE)
        owners = await asyncio.to_thread(self.store.owners_of, ids)
        lines: list[tuple[str, str]] = []
        allowed = []
        for queue_id in ids:
            if queue_id in owners and not may_see(uid, owners[queue_id]):
                lines.append(("complain", _not_yours(queue_id)))
            else:
                allowed.append(queue_id)
        return allowed, lines, len(allowed) < len(ids)


Send = Callable[[dict[str, Any]], Any]


def _take(rows: Iterator[Listed], count: int) -> list[Listed]:
    batch = []
    for message in rows:
        batch.append(message)
        if len(batch) == count:
            break
    return batch


def _one_id(hello: dict[str, Any]) -> str:
    queue_id = hello.get("id")
    if not isinstance(queue_id, str) or not queue_id:
        raise Refused("no queue id given", ExitCode.USAGE)
    return queue_id


def _not_yours(queue_id: str) -> str:
    return f"{queue_id}: another user's message (only its owner and root may do that)"


async def _finish(
    send: Send, lines: list[tuple[str, str]], code: int, refused: bool
) -> tuple[int, str]:
    for kind, line in lines:
        await send({kind: line})
    if refused:
        return ExitCode.NOPERM, ""
    return code, ""
