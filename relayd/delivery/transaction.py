"""One message on an open connection: MAIL, RCPT, DATA (pipelined if offered), final replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relayd.accounts.account import Account
from relayd.delivery.classify import Failure, classify, combine
from relayd.delivery.ehlo import Capabilities
from relayd.delivery.result import DeliveryResult, Disposition, Event, RecipientResult, Reply
from relayd.delivery.wire import Abort, Wire, encode

MAX_COMMAND = 4094  # msmtp's SMTP_MAXCMDLEN in 1.8.23
PIPELINE_LIMIT = 100  # commands in flight, as msmtp


class StoredBody(Protocol):
    """A body read from the store a chunk at a time as it is sent (a big message)."""

    @property
    def size(self) -> int:
        """The stored bytes (messages.size), known before reading them."""
        ...

    @property
    def last(self) -> bytes:
        """The last stored byte (b"" for an empty body)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The stored bytes in order; raises Abort if they cannot all be read."""
        ...


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to send: the envelope and the stored bytes (CRLF line ends, not dot-stuffed).

    `smtputf8`/`eightbit` default to detection: a non-ASCII address / a byte ≥ 0x80. With
    `body`, the bytes are streamed from it and `data` is unused (`eightbit` is then assumed
    unless given).
    """

    sender: str
    recipients: Sequence[str]
    data: bytes
    smtputf8: bool | None = None
    eightbit: bool | None = None
    body: StoredBody | None = None

    @property
    def size(self) -> int:
        """The SIZE msmtp compares: the bytes, and the CRLF it adds to a last line without one."""
        if self.body is not None:
            size, last = self.body.size, self.body.last
        else:
            size, last = len(self.data), self.data[-1:]
        return size + (2 if size and last != b"\n" else 0)


@dataclass
class Progress:
    """Each recipient's outcome so far (by position, as msmtp sends duplicates too)."""

    recipients: tuple[str, ...]
    results: dict[int, RecipientResult] = field(default_factory=dict)
    first: Failure | None = None
    final: Reply | None = None
    dot_sent: bool = False  # past this, a broken connection may leave the mail delivered

    def sent(self, index: int, reply: Reply) -> None:
        self.results[index] = RecipientResult(self.recipients[index], Disposition.SENT, reply)
        self.final = reply

    def fail(self, index: int, failure: Failure) -> None:
        self.results[index] = failure.for_recipient(self.recipients[index])
        self.first = self.first or failure

    def fail_rest(self, failure: Failure) -> None:
        for index in range(len(self.recipients)):
            if index not in self.results:
                self.fail(index, failure)

    def result(self) -> DeliveryResult:
        ordered = [self.results[i] for i in range(len(self.recipients))]
        return combine(ordered, self.first, self.final)


class Transaction:
    """The dialogue for one message on `wire`, after the greeting (and login) went well.

    `run` fills `progress`; it raises Abort when the connection cannot go on (broken, or RSET
    refused after a refused transaction): the session then ends it and keeps the progress.
    """

    def __init__(
        self,
        wire: Wire,
        account: Account,
        capabilities: Capabilities,
        message: OutgoingMessage,
        envelope: Sequence[str] = (),
    ) -> None:
        self.wire = wire
        self.account = account
        self.capabilities = capabilities
        self.message = message
        self.progress = Progress(tuple(message.recipients))
        # MAIL and RCPT lines already made and checked for `message` (when it was announced
        # with the previous message's data); `announced`: those of the message announced now.
        self._envelope_lines = envelope
        self.announced: list[str] = []

    async def run(
        self, *, sent_ahead: bool, following: OutgoingMessage | None
    ) -> OutgoingMessage | None:
        """Send the message. `sent_ahead`: its MAIL, RCPT and DATA went out with the previous
        message's data. Returns `following` if its envelope went out with this message's data
        (its replies then follow this message's final reply)."""
        wire, message, progress = self.wire, self.message, self.progress
        if self._envelope_lines:
            lines, early = list(self._envelope_lines), None
        else:
            lines, early = self._envelope(message)
        rcpts = lines[1:]
        if early is not None:
            progress.fail_rest(early)
            return None
        ask: Callable[[str], Awaitable[Reply]] = wire.command
        pipelined = self.capabilities.pipelining
        if pipelined:  # MAIL, every RCPT and DATA in one burst; the replies are then taken in turn
            got, abort = await self._pipeline([*lines, "DATA"], sent=sent_ahead)
            pending = iter(got)

            async def ask(line: str) -> Reply:
                reply = next(pending, None)
                if reply is None:
                    raise abort or Abort(classify(Event.INVALID_REPLY))
                return reply

        reply = await ask(lines[0])
        if reply.code != 250:
            progress.fail_rest(classify(Event.MAIL, reply, address=message.sender))
            if pipelined and len(got) == len(lines) + 1 and got[-1].code == 354:
                await self._abandon_data()
            await self._recover()
            return None
        accepted: list[int] = []
        for index, line in enumerate(rcpts):
            reply = await ask(line)
            if reply.code in (250, 251):
                accepted.append(index)
            else:
                address = progress.recipients[index]
                progress.fail(index, classify(Event.RCPT, reply, address=address))
        if not accepted:
            if pipelined and (await ask("DATA")).code == 354:
                await self._abandon_data()
            await self._recover()
            return None
        reply = await ask("DATA")
        if reply.code != 354:
            progress.fail_rest(classify(Event.DATA, reply))
            await self._recover()
            return None
        ahead = self._announce(following) if pipelined else []
        await wire.send_data(message.body.chunks() if message.body else message.data, then=ahead)
        self.announced = ahead[:-1]  # without its DATA
        progress.dot_sent = True
        await self._finish(accepted)
        return following if ahead else None

    def _mail_line(self, message: OutgoingMessage, smtputf8: bool) -> str:
        sender = "" if message.sender.upper() == "MAILER-DAEMON" else message.sender
        line = f"MAIL FROM:<{sender}>"
        if self.account.dsn_return:
            line += f" RET={self.account.dsn_return}"
        eightbit = message.eightbit
        if eightbit is None:
            eightbit = message.body is not None or not message.data.isascii()
        if eightbit and self.capabilities.eightbitmime:
            line += " BODY=8BITMIME"
        return line + (" SMTPUTF8" if smtputf8 else "")

    def _rcpt_line(self, recipient: str) -> str:
        notify = self.account.dsn_notify
        return f"RCPT TO:<{recipient}>" + (f" NOTIFY={notify}" if notify else "")

    def _precheck(
        self, message: OutgoingMessage, lines: Sequence[str], smtputf8: bool
    ) -> Failure | None:
        """What fails before anything is sent: SMTPUTF8 missing, SIZE exceeded, long commands."""
        caps = self.capabilities
        if smtputf8 and not caps.smtputf8:
            return classify(Event.NO_SMTPUTF8)
        size = message.size
        limit = caps.size_limit
        if limit is not None and size > limit:
            return classify(Event.SIZE_EXCEEDED, size=size, limit=limit)
        if any(len(encode(line)) > MAX_COMMAND for line in lines):
            return classify(Event.COMMAND_TOO_LONG)
        return None

    def _envelope(self, message: OutgoingMessage) -> tuple[list[str], Failure | None]:
        """MAIL and RCPT lines for `message`, or what fails before anything is sent."""
        smtputf8 = message.smtputf8
        if smtputf8 is None:
            smtputf8 = not all(a.isascii() for a in (message.sender, *message.recipients))
        rcpts = [self._rcpt_line(r) for r in message.recipients]
        lines = [self._mail_line(message, smtputf8), *rcpts]
        return lines, self._precheck(message, lines, smtputf8)

    def _announce(self, following: OutgoingMessage | None) -> list[str]:
        """The envelope of `following` to send with this message's data, if it can go early."""
        if following is None or not following.recipients:
            return []
        lines, early = self._envelope(following)
        if early is not None or len(lines) + 1 > PIPELINE_LIMIT:
            return []  # it takes the ordinary way (and fails there before sending anything)
        return [*lines, "DATA"]

    async def _finish(self, accepted: Sequence[int]) -> None:
        """Read the reply to the final dot (LMTP: one per accepted recipient)."""
        progress = self.progress
        if self.account.protocol == "lmtp":
            for index in accepted:
                reply = await self.wire.read_reply()
                if reply.code == 250:
                    progress.sent(index, reply)
                else:
                    address = progress.recipients[index]
                    progress.fail(index, classify(Event.LMTP_RECIPIENT, reply, address=address))
            return
        reply = await self.wire.read_reply()
        if reply.code != 250:
            progress.fail_rest(classify(Event.END, reply))
            return
        for index in accepted:
            progress.sent(index, reply)

    async def _pipeline(
        self, lines: Sequence[str], *, sent: bool = False
    ) -> tuple[list[Reply], Abort | None]:
        """Send in bursts of PIPELINE_LIMIT and read every reply; stop at a broken connection.
        `sent`: the lines (one burst) went out already, with the previous message's data."""
        replies: list[Reply] = []
        try:
            for start in range(0, len(lines), PIPELINE_LIMIT):
                batch = lines[start : start + PIPELINE_LIMIT]
                if not sent:
                    await self.wire.send(batch)
                for _ in batch:
                    replies.append(await self.wire.read_reply())
        except Abort as abort:
            return replies, abort
        return replies, None

    async def _abandon_data(self) -> None:
        """A 354 nobody wanted (pipelining): end the empty data and ignore the reply."""
        await self.wire.send_data(b"")
        await self.wire.read_reply()

    async def _recover(self) -> None:
        """RSET after a refused transaction so the connection can carry the next message;
        if that fails, the connection is done for (Abort)."""
        reply = await self.wire.command("RSET")
        if reply.code != 250:
            raise Abort(classify(Event.RSET, reply))
