"""A recording SMTP server on 127.0.0.1 for tests: keeps every transaction, can be made to fail."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

#: The points of a transaction where a test can script the server's behaviour.
#: ``DATA`` is the reply to the DATA command itself, ``END`` the reply after the final dot.
Stage = Literal["MAIL", "RCPT", "DATA", "END"]

_DEFAULT_REPLIES: dict[Stage, str] = {
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "END": "250 2.0.0 Ok: queued",
}


@dataclass(frozen=True)
class Transaction:
    """One mail transaction as the client sent it: paths verbatim, data dot-unstuffed."""

    mail_from: str
    mail_params: str
    rcpt_tos: tuple[str, ...]
    rcpt_params: tuple[str, ...]
    data: bytes
    reply: str  # the reply to the final dot; "" when the connection was dropped instead


@dataclass(frozen=True)
class Fault:
    """What the server does at one stage instead of its normal reply."""

    reply: str | None = None  # e.g. "451 4.3.0 Try again later"; None keeps the normal reply
    delay: float = 0.0  # seconds to wait before replying (or dropping)
    drop: bool = False  # close the connection instead of replying


@dataclass
class _Partial:
    """The envelope of the transaction in progress on one connection."""

    mail_from: str | None = None
    mail_params: str = ""
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_params: list[str] = field(default_factory=list)


def _split_path(arg: str, keyword: str) -> tuple[str, str] | None:
    """`FROM:<a@b> RET=HDRS` → (`a@b`, `RET=HDRS`); None when the syntax is wrong."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip(" ")
    if not rest.startswith("<"):
        return None
    close = rest.rfind(">")
    if close < 0:
        return None
    return rest[1:close], rest[close + 1 :].strip()


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP with permissive MAIL/RCPT (paths recorded verbatim) and scripted faults."""

    # msmtp sends long lines unchanged (research/msmtp.md §5.4); aiosmtpd's default is 1001.
    line_length_limit = 16 * 1024 * 1024

    def __init__(self, server: UpstreamServer, **kwargs: Any) -> None:
        super().__init__(_DataHandler(server), **kwargs)
        self._upstream = server
        self._partial = _Partial()

    async def _scripted(self, stage: Stage, address: str | None = None) -> str | None:
        """Apply the fault for this stage; return the reply to send, or None if dropped."""
        fault = self._upstream.fault_for(stage, address)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            assert self.transport is not None
            self.transport.close()
            return None
        return fault.reply or _DEFAULT_REPLIES[stage]

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        path = _split_path(arg or "", "FROM:")
        if path is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        reply = await self._scripted("MAIL", path[0])
        if reply is None:
            return
        if reply.startswith("2"):
            self._partial = _Partial(mail_from=path[0], mail_params=path[1])
            # aiosmtpd's DATA checks these fields.
            assert self.envelope is not None
            self.envelope.mail_from = path[0]
        await self.push(reply)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self._partial.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        path = _split_path(arg or "", "TO:")
        if path is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        reply = await self._scripted("RCPT", path[0])
        if reply is None:
            return
        if reply.startswith("2"):
            self._partial.rcpt_tos.append(path[0])
            self._partial.rcpt_params.append(path[1])
            assert self.envelope is not None
            self.envelope.rcpt_tos.append(path[0])
        await self.push(reply)

    async def smtp_DATA(self, arg: str) -> None:
        fault = self._upstream.fault_for("DATA", None)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            assert self.transport is not None
            self.transport.close()
            return
        if fault.reply is not None:
            await self.push(fault.reply)
            return
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self._partial = _Partial()
        await super().smtp_RSET(arg)

    def take_partial(self) -> _Partial:
        """The envelope of the transaction that just ended; the next one starts empty."""
        partial, self._partial = self._partial, _Partial()
        return partial


class _DataHandler:
    """aiosmtpd handler: turns the end of DATA into a recorded Transaction."""

    def __init__(self, server: UpstreamServer) -> None:
        self._server = server

    async def handle_DATA(self, smtp: _RecordingSMTP, session: Session, envelope: Envelope) -> str:
        partial = smtp.take_partial()
        assert partial.mail_from is not None
        content = envelope.original_content
        assert isinstance(content, bytes)
        fault = self._server.fault_for("END", None)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        reply = "" if fault.drop else fault.reply or _DEFAULT_REPLIES["END"]
        self._server.record(
            Transaction(
                mail_from=partial.mail_from,
                mail_params=partial.mail_params,
                rcpt_tos=tuple(partial.rcpt_tos),
                rcpt_params=tuple(partial.rcpt_params),
                data=content,
                reply=reply,
            )
        )
        if fault.drop:
            assert smtp.transport is not None
            smtp.transport.close()
            # Nobody reads this: aiosmtpd's write after close is a no-op.
            return "421 4.4.2 dropped"
        return reply


class UpstreamServer:
    """An SMTP server on 127.0.0.1 (ephemeral port) in its own thread, recording transactions.

    Use as a context manager. ``fail(stage, ...)`` scripts a fault; ``transactions`` lists what
    arrived. Everything is bounded by ``timeout``.
    """

    def __init__(self, *, timeout: float = 10.0, hostname: str = "upstream.test") -> None:
        self.timeout = timeout
        self.hostname = hostname
        self.port = 0
        self._transactions: list[Transaction] = []
        self._faults: dict[tuple[Stage, str | None], Fault] = {}
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- scripting ----------------------------------------------------------------------------

    def fail(self, stage: Stage, fault: Fault, *, address: str | None = None) -> None:
        """From now on, answer `stage` with `fault`: for every command, or only for the MAIL or
        RCPT whose path is `address` (which wins over a fault for all)."""
        with self._cond:
            self._faults[(stage, address)] = fault

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def fault_for(self, stage: Stage, address: str | None) -> Fault:
        with self._cond:
            return self._faults.get((stage, address)) or self._faults.get((stage, None)) or Fault()

    # -- recording ----------------------------------------------------------------------------

    def record(self, transaction: Transaction) -> None:
        with self._cond:
            self._transactions.append(transaction)
            self._cond.notify_all()

    @property
    def transactions(self) -> list[Transaction]:
        with self._cond:
            return list(self._transactions)

    def take(self) -> list[Transaction]:
        """Return the transactions recorded so far and forget them."""
        with self._cond:
            taken, self._transactions = self._transactions, []
            return taken

    def wait_for(self, count: int, timeout: float | None = None) -> list[Transaction]:
        """Block until `count` transactions have arrived (TimeoutError after `timeout`)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self._transactions) >= count, timeout or self.timeout
            ):
                raise TimeoutError(f"{len(self._transactions)} of {count} transactions arrived")
            return list(self._transactions)

    # -- lifecycle ----------------------------------------------------------------------------

    def _factory(self) -> _RecordingSMTP:
        assert self._loop is not None
        return _RecordingSMTP(
            self,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            timeout=self.timeout,
            loop=self._loop,
        )

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            loop.create_server(self._factory, host="127.0.0.1", port=0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(self.timeout):
            raise TimeoutError("the upstream SMTP server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> UpstreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
