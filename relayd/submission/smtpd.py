"""The SMTP listener (SPEC §5): aiosmtpd inside `relayd daemon` (and `relayd-sendmail -bs`),
storing through the same submission code as relayd-sendmail; 250 only after the commit.

The envelope is the client's: MAIL FROM chooses the account as `-f` does (msmtp's rules, then
`default`), RCPT TO are the recipients as given (no `-t`). The headers follow the chosen
account's settings as for a sendmail submission (`set_from_header`, `set_date_header`,
`set_msgid_header`, `remove_bcc_headers`, `undisclosed_recipients`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from relayd.accounts.select import Remembered
from relayd.errors import ConfigError, DataError, QueueError, RelaydError
from relayd.settings import Settings
from relayd.store.records import NewMessage
from relayd.submission import smtp_auth, smtpdata, spooled
from relayd.submission.addresses import check_address
from relayd.text import sanitize

log = logging.getLogger("relayd.smtp")

IDENT = "relayd"
READER_LIMIT = 1 << 16  # bytes the StreamReader buffers before it pauses the socket
TOO_BIG = "552 5.3.4 Message too big ([submit] max_size)"
# aiosmtpd's own replies that need an enhanced status code (we advertise ENHANCEDSTATUSCODES).
_REWRITES = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
}
_DATA_REFUSALS = {
    smtpdata.Outcome.TOO_LONG: "500 Line too long (see RFC5321 4.5.3.1.6)",
    smtpdata.Outcome.TOO_MUCH: "552 Error: Too much mail data",
}
# `<local@domain> PARAMETERS` with a dot-atom local part and a plain domain: the address
# aiosmtpd's parser (email's header parser, slow) would find, and the parameters after it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*([^( \t][^(]*)?"
)


_AIOSMTPD_LOG = logging.getLogger("mail.log")
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _quiet_sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's `sanitized_log` (called with its logger's debug or info for every command
    line), skipped when that logger drops INFO: the daemon keeps it at WARNING."""
    if _AIOSMTPD_LOG.isEnabledFor(logging.INFO):
        _sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _quiet_sanitized_log  # the same records, none built in vain


def options(settings: Settings) -> dict[str, Any]:
    """aiosmtpd's SMTP arguments for `[submit] max_size` and `[listen] timeout`."""
    return {
        "data_size_limit": settings.submit.max_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "ident": IDENT,
        "timeout": settings.listen.timeout,
    }


Compose = Callable[[], NewMessage]


class Ingest(Protocol):
    """Where messages go: the daemon's group commit (or -bs's own store)."""

    async def add(self, message: NewMessage | Compose, now: float) -> str:
        """Compose (given a function: in the ingest's own thread, with the store) and store
        durably, then wake the runner; the queue id."""
        ...


class RelaydSMTP(SMTP):
    """aiosmtpd's SMTP with enhanced status codes on its own refusals, a session limit, and
    AUTH PLAIN/LOGIN against `[listen] users` (only after STARTTLS; required when set).

    aiosmtpd calls its `authenticator` on the event loop and does not await it: ours only
    hands the credentials on (`_deferred`), and `auth_PLAIN`/`auth_LOGIN` check them in a
    thread (scrypt, keyring), then wait FAILURE_DELAY before a 535."""

    def __init__(self, handler: Handler, sessions: Sessions, **kwargs: Any) -> None:
        users = handler.settings().listen.users
        kwargs.update(authenticator=_deferred, auth_require_tls=True, auth_required=bool(users))
        # aiosmtpd sizes its StreamReader by line_length_limit: at 1001 bytes the reader stops
        # and restarts the socket's reading every 2 KB of DATA (epoll calls, an exception per
        # KB). A larger reader limit; a DATA line still may not exceed aiosmtpd's limit, nor a
        # command its command_size_limits.
        self.line_length_limit = READER_LIMIT
        super().__init__(handler, **kwargs)
        self.line_length_limit = SMTP.line_length_limit
        self._handler = handler
        self._sessions = sessions
        self._counted = False
        self._deadline = 0.0  # when the session times out (see _reset_timeout)
        self.spooled: smtpdata.Spool | None = None  # the message of a DATA being handled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._sessions.enter():
            transport.write(b"421 4.7.0 relayd: too many sessions, try again later\r\n")  # type: ignore[attr-defined]
            transport.close()
            return
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:  # refused in connection_made: aiosmtpd never started a session
            return
        self._counted = False
        self._sessions.leave()
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's timeout at every command, without a new timer each time (a cancelled
        one left in the loop's heap): the deadline moves, and the one timer, when it fires
        before the deadline, waits again for what is left."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or self._deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer)

    def _timer(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer)
        else:
            self._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        await super().push(_REWRITES.get(text, text))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parsing, without its parser for plain addresses."""
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain.group(2) or ""

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in blocks (`smtpdata`) instead of by lines."""
        if self._decode_data:  # never ours (decode_data=False): aiosmtpd's own then
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            outcome, content = await smtpdata.read(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if outcome is not smtpdata.Outcome.NOMINAL:
            await self.push(_DATA_REFUSALS[outcome])
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if isinstance(content, smtpdata.Spool):  # a big message: the handler reads the file
            self.spooled, content = content, b""
        self.envelope.content = self.envelope.original_content = content
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if self.spooled is not None:
                self.spooled.close()
                self.spooled = None
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def auth_PLAIN(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        """The outcome of the credentials `_deferred` passed on (others: as they are)."""
        given = result.auth_data
        if not isinstance(given, LoginPassword):
            return result
        users = self._handler.settings().listen.users
        user = sanitize(given.login.decode("utf-8", "replace"))
        peer = _peer(self.session) if self.session is not None else "?"
        if await asyncio.to_thread(smtp_auth.check, users, given.login, given.password):
            log.info("SMTP AUTH from %s as %s", peer, user)
            return AuthResult(success=True, auth_data=user)
        log.warning("SMTP AUTH from %s failed for user %s", peer, user)
        await asyncio.sleep(smtp_auth.FAILURE_DELAY)
        return AuthResult(success=False, handled=False)


def _deferred(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """aiosmtpd's (synchronous) authenticator: the credentials, for `RelaydSMTP._verify`."""
    return AuthResult(success=False, handled=False, auth_data=auth_data)


class Sessions:
    """Counts open SMTP sessions against `[listen] max_sessions`."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit, self.open = limit, 0

    def enter(self) -> bool:
        if self.open >= self.limit():
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


class Handler:
    """aiosmtpd's hooks: account and limits at MAIL and RCPT, the durable store at DATA."""

    def __init__(self, settings: Callable[[], Settings], ingest: Ingest) -> None:
        self.settings, self.ingest = settings, ingest

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        if self.settings().listen.users is None:  # aiosmtpd would offer AUTH after STARTTLS
            responses = [line for line in responses if not line.startswith("250-AUTH ")]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        sender = "" if address == "<>" else address  # aiosmtpd keeps "<>": it must be truthy
        try:
            check_address(sender, allow_empty=True)
        except DataError:
            return "553 5.1.7 Bad sender address syntax"
        if sender and self.settings().listen.require_account:
            try:
                await asyncio.to_thread(_account_for, sender)
            except ConfigError:
                return f"550 5.7.1 No account for sender <{sender}>"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings().listen.max_recipients:
            return "452 4.5.3 Too many recipients"
        try:
            check_address(address)
        except DataError:
            return "553 5.1.3 Bad recipient address syntax"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        spool = server.spooled if isinstance(server, RelaydSMTP) else None
        data: smtpdata.Content
        if spool is not None:
            data, nul, size = spool, spool.nul, spool.size
        else:
            data = envelope.original_content or b""
            nul, size = b"\0" in data, len(data)
        if nul:
            return "554 5.6.0 Message contains NUL bytes (no BINARYMIME here)"
        settings = self.settings()
        if size > settings.submit.max_size:
            return TOO_BIG
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        return await self.store(session, sender, list(envelope.rcpt_tos), data, settings)

    async def store(
        self,
        session: Session,
        sender: str,
        recipients: list[str],
        data: smtpdata.Content,
        settings: Settings,
    ) -> str:
        """Compose the message and store it through the ingest; the reply to DATA."""
        require = settings.listen.require_account
        big = isinstance(data, smtpdata.Spool)  # composed into a file of its own
        try:
            with spooled.wire_file() if big else contextlib.nullcontext() as wire:
                queue_id = await self.ingest.add(
                    lambda: compose(sender, recipients, data, require, wire), time.time()
                )
        except QueueError as err:
            log.warning("SMTP from %s: not stored: %s", _peer(session), err.message)
            return "451 4.3.0 Queue not writable, try again later"
        except ConfigError as err:
            return f"550 5.7.1 {one_line(err.message)}"
        except RelaydError as err:
            return f"554 5.6.0 {one_line(err.message)}"
        log.info("queued %s from %s over SMTP", queue_id, _peer(session))
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _account_for(sender: str) -> None:
    """ConfigError unless an account's `from` matches `sender` (`require_account`)."""
    found = _REMEMBERED.select(
        account_id=None, conffile=None, envelope_from=sender, sendmail_mode=True, emit=_quiet
    )
    if not found.by_from:
        raise ConfigError(f"no account for sender {sender}")


# Account choices of this process's listener, kept while the msmtprc files are unchanged.
_REMEMBERED = Remembered()


def compose(
    sender: str,
    recipients: list[str],
    data: smtpdata.Content,
    require_account: bool,
    wire: IO[bytes] | None = None,
) -> NewMessage:
    """The stored message for an SMTP envelope, made as relayd-sendmail makes it; a spooled
    one is composed a block at a time into `wire` (needed then) and replayed from there."""
    from relayd.submission import sendmail, submit
    from relayd.submission.cmdline import Invocation

    inv = Invocation()
    inv.envelope_from = sender
    if isinstance(data, smtpdata.Spool):
        assert wire is not None
        data.rewind()
        return spooled.compose(
            inv,
            data.read,
            wire,
            envelope=recipients,
            require_account=require_account,
            remembered=_REMEMBERED,
        )
    account, rcpts, scan = sendmail.prepare(
        inv,
        data,
        sendmail.Output(False),
        envelope=recipients,
        require_account=require_account,
        remembered=_REMEMBERED,
    )
    return submit.build(inv, account, data, scan, rcpts, time.time())


def _quiet(_line: str) -> None:
    return None


def _peer(session: Session) -> str:
    peer = session.peer
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def one_line(text: str) -> str:
    return " ".join(text.split())
