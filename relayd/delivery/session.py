"""One upstream SMTP/LMTP connection as msmtp makes it: connect, TLS, EHLO, AUTH, messages, QUIT."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from relayd.accounts.account import Account
from relayd.delivery import auth, ehlo, tls
from relayd.delivery.classify import Failure, classify, for_all
from relayd.delivery.ehlo import Capabilities
from relayd.delivery.result import DeliveryResult, Event, Reply
from relayd.delivery.transaction import OutgoingMessage as OutgoingMessage
from relayd.delivery.transaction import Transaction
from relayd.delivery.wire import Abort, Wire, connect
from relayd.delivery.wire import DebugSink as DebugSink
from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

PasswordSource = Callable[[Account], Awaitable[str | None] | str | None]
#: The server refused the OAuth2 token given (334/535): a fresh one, or None (RelaydError holds).
TokenRenewal = Callable[[Account, str], Awaitable[str | None]]


@dataclass
class ServerFacts:
    """What the session learnt about the server, for --serverinfo and the logs."""

    address: str | None = None  # the numeric address connected to (not via a proxy or socket)
    greeting: Reply | None = None
    ehlo: Reply | None = None  # the EHLO/LHLO reply in force (None after a HELO fallback)
    helo: Reply | None = None  # the HELO reply when EHLO was refused
    ehlo_before_tls: Reply | None = None  # with STARTTLS: the reply before it
    capabilities: Capabilities = field(default_factory=Capabilities)
    tls_version: str | None = None
    tls_cipher: str | None = None
    peer_certificate: bytes | None = None  # DER
    auth_method: str | None = None


# -- the session ---------------------------------------------------------------------------------


class Session:
    """One connection to the account's server, carrying any number of messages.

    ``async with Session(account) as s: result = await s.send(message)``. Nothing the network or
    the server does raises: a failure to connect, secure or log in is kept in `failure` and
    every `send()` returns it as that message's result. A connection that breaks ends the
    session the same way; `alive` tells whether to open a new one for the next message.
    `password` is asked (once, only if the AUTH method needs it) instead of `account.password`;
    it may raise RelaydError to hold the mail with its text and code. `timeout` bounds the
    connect and every read and write when the account has no `timeout` of its own. `renew`
    gives a fresh XOAUTH2/OAUTHBEARER token when the server refused the one given; AUTH is then
    tried once more on the same connection. `debug`
    receives the dialogue as msmtp -d prints it (`--> `, `<-- `, no line ends), AUTH masked.
    """

    def __init__(
        self,
        account: Account,
        *,
        password: PasswordSource | None = None,
        renew: TokenRenewal | None = None,
        timeout: float | None = None,
        debug: DebugSink | None = None,
    ) -> None:
        self.account = account
        self._renew = renew
        self.facts = ServerFacts()
        self.failure: Failure | None = None
        self._password = password
        self._timeout = float(account.timeout) if account.timeout else timeout
        self._debug = debug
        self._wire: Wire | None = None
        self._context: ssl.SSLContext | None = None
        self._state = "new"  # → "open" → "closed"
        self._busy = False  # in the middle of a dialogue: cancelled there, say no QUIT
        # The next message whose MAIL, RCPT and DATA went out with the previous message's data
        # (RFC 2920 §3.1): its replies follow that message's final reply.
        self._ahead: OutgoingMessage | None = None

    @property
    def alive(self) -> bool:
        return self._wire is not None and self.failure is None

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self, *, login: bool = True) -> Failure | None:
        """Connect, secure, greet; with `login` also check DSN and authenticate (--serverinfo
        does not). Returns the failure, if any."""
        if self._state != "new":
            raise RuntimeError("a session is opened once")
        self._state, self._busy = "open", True
        try:
            await self._connect()
            await self._greet()
            if login:
                await self._login()
        except Abort as abort:
            await self._end(abort.failure, quit=abort.quit)
        self._busy = False
        return self.failure

    async def send(
        self, message: OutgoingMessage, following: OutgoingMessage | None = None
    ) -> DeliveryResult:
        """Deliver one message on this connection (opening it first if needed).

        `following` is the message the caller sends next on this connection, if known: with
        PIPELINING its envelope goes out in the same write as this message's data, saving a
        round trip, and the next `send` must then be for exactly that message.
        """
        if self._ahead is not None and message is not self._ahead:
            raise ValueError("the message announced as following must be sent next")
        if not message.recipients:
            raise ValueError("a message without recipients")  # refused at submission (64)
        if self._state == "new":
            await self.open()
        if self._state == "closed":
            raise RuntimeError("send() on a closed session")
        if self.failure is not None:
            return for_all(self.failure, message.recipients)
        assert self._wire is not None  # open without a failure
        sent_ahead, self._ahead = self._ahead is message, None
        transaction = Transaction(self._wire, self.account, self.facts.capabilities, message)
        progress = transaction.progress
        self._busy = True  # stays set if cancelled in the middle
        try:
            self._ahead = await transaction.run(sent_ahead=sent_ahead, following=following)
        except Abort as abort:
            progress.fail_rest(abort.failure)
            await self._end(abort.failure, quit=False)
            self._busy = False
            return replace(progress.result(), possibly_delivered=progress.dot_sent)
        self._busy = False
        return progress.result()

    async def etrn(self, argument: str) -> Reply | Failure:
        """msmtp --rmqs: `ETRN argument` on the open session; the reply, or the failure."""
        if self._state == "new":
            await self.open()
        if self.failure is not None or self._wire is None:
            return self.failure or classify(Event.ETRN)
        if not self.facts.capabilities.etrn:
            failure = classify(Event.NO_ETRN)
            await self._end(failure, quit=True)
            return failure
        try:
            reply = await self._wire.command(f"ETRN {argument}")
        except Abort as abort:
            await self._end(abort.failure, quit=False)
            return abort.failure
        if 250 <= reply.code <= 253:
            return reply
        if reply.code in (458, 459):
            return classify(Event.ETRN_UNABLE, reply)
        return classify(Event.ETRN_INVALID if reply.code in (500, 501) else Event.ETRN, reply)

    async def close(self) -> None:
        """QUIT (if the connection is healthy and idle, not cancelled mid-dialogue) and close."""
        if self._state != "closed":
            self._state = "closed"
            idle = not self._busy and self._ahead is None  # else QUIT could become data
            await self._end(None, quit=self.failure is None and idle)

    # -- opening --------------------------------------------------------------------------------

    async def _connect(self) -> None:
        account = self.account
        failure = auth.not_compiled_in(account.auth)
        if failure is None and account.tls:
            context = tls.client_context(account)
            if isinstance(context, Failure):
                failure = context
            else:
                self._context = context
        if failure is not None:
            raise Abort(failure)
        self._wire = await connect(account, self._timeout, self._debug)
        if not account.socket and not account.proxy_host:
            peer = self._wire.writer.get_extra_info("peername")
            self.facts.address = str(peer[0]) if peer else None
        if self._context is not None and not account.tls_starttls:
            await self._secure(self._context)

    async def _secure(self, context: ssl.SSLContext) -> None:
        assert self._wire is not None
        await self._wire.start_tls(context, tls.server_name(self.account))
        ssl_object = self._wire.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        failure = tls.check_pin(self.account, der)
        if failure is not None:
            raise Abort(failure)
        if ssl_object is not None:
            self.facts.tls_version = ssl_object.version()
            self.facts.tls_cipher = ssl_object.cipher()[0]
            self.facts.peer_certificate = der

    async def _greet(self) -> None:
        assert self._wire is not None
        greeting = self.facts.greeting = await self._wire.read_reply()
        if greeting.code != 220:
            raise Abort(classify(Event.GREETING, greeting))
        await self._hello()
        if self._context is None or not self.account.tls_starttls:
            return
        if not self.facts.capabilities.starttls:
            raise Abort(classify(Event.NO_STARTTLS), quit=True)
        reply = await self._wire.command("STARTTLS")
        if reply.code != 220:
            raise Abort(classify(Event.STARTTLS, reply))
        if self._wire.buffered:  # plaintext after the 220: an injection
            raise Abort(classify(Event.STARTTLS))
        self.facts.ehlo_before_tls = self.facts.ehlo
        await self._secure(self._context)
        await self._hello()

    async def _hello(self) -> None:
        assert self._wire is not None
        domain = self.account.domain
        if self.account.protocol == "lmtp":
            reply = await self._wire.command(f"LHLO {domain}")
            if reply.code != 250:
                raise Abort(classify(Event.LHLO, reply))
        else:
            reply = await self._wire.command(f"EHLO {domain}")
            if reply.code != 250:
                reply = await self._wire.command(f"HELO {domain}")
                if reply.code != 250:
                    raise Abort(classify(Event.HELO, reply))
                self.facts.ehlo, self.facts.helo = None, reply
                self.facts.capabilities = Capabilities()
                return
        self.facts.ehlo, self.facts.capabilities = reply, ehlo.parse(reply.lines)

    async def _login(self) -> None:
        account, caps = self.account, self.facts.capabilities
        if (account.dsn_return or account.dsn_notify) and not caps.dsn:
            raise Abort(classify(Event.NO_DSN), quit=True)
        if account.auth is None:
            return
        if caps.auth is None:
            raise Abort(classify(Event.NO_AUTH), quit=True)
        method = auth.choose(account.auth, caps.auth, self.facts.tls_version is not None)
        if isinstance(method, Failure):
            raise Abort(method)
        if method != "EXTERNAL" and not account.user:
            raise Abort(classify(Event.AUTH_NO_USER, method=method))
        password = ""
        if auth.needs_password(method):
            found = await self._lookup_password()
            if found is None:
                raise Abort(classify(Event.AUTH_NO_PASSWORD, method=method))
            password = found
        mech = auth.mechanism(
            method, account.user or "", password, account.host or "", account.port
        )
        failure = await auth.authenticate(mech, self._exchange)
        if failure is not None and self._renew is not None and auth.token_refused(mech, failure):
            fresh = await self._lookup(self._renew, password)
            if fresh is not None:
                mech = auth.mechanism(
                    method, account.user or "", fresh, account.host or "", account.port
                )
                failure = await auth.authenticate(mech, self._exchange)
        if failure is not None:
            raise Abort(failure)
        self.facts.auth_method = method

    async def _exchange(self, line: str, secret: bool) -> Reply:
        assert self._wire is not None
        if not secret:
            return await self._wire.command(line)
        shown = line.rsplit(" ", 1)[0] + " ********" if line.startswith("AUTH ") else "********"
        return await self._wire.command(line, shown)

    async def _lookup_password(self) -> str | None:
        source = self._password
        if source is None:
            return self.account.password
        return await self._lookup(source)

    async def _lookup(self, source: Callable[..., object], *refused: str) -> str | None:
        """A password (or token) from `source`; its RelaydError becomes the session's failure
        (held, or retried when its exit code is EX_TEMPFAIL: a token endpoint that is down)."""
        try:
            if inspect.iscoroutinefunction(source):
                value = await source(self.account, *refused)
            else:  # passwordeval, keyrings and prompts block: keep the loop free
                value = await asyncio.to_thread(source, self.account, *refused)
            if inspect.isawaitable(value):
                value = await value
        except RelaydError as exc:
            for_now = exc.exit_code == ExitCode.TEMPFAIL
            event = Event.PASSWORD_UNAVAILABLE if for_now else Event.PASSWORD_LOOKUP
            failure = classify(event, reason=exc.message)
            raise Abort(replace(failure, exit_code=exc.exit_code)) from None
        return value if isinstance(value, str) else None

    async def _end(self, failure: Failure | None, *, quit: bool) -> None:
        """Record why the session ended and close the connection (after QUIT if asked)."""
        self.failure = self.failure or failure
        self._ahead = None
        wire, self._wire = self._wire, None
        if wire is None:
            return
        if quit:
            with contextlib.suppress(Abort):  # closing anyway
                await wire.command("QUIT")
        await wire.close()


async def deliver(
    account: Account,
    messages: Sequence[OutgoingMessage],
    *,
    password: PasswordSource | None = None,
    renew: TokenRenewal | None = None,
    timeout: float | None = None,
    debug: DebugSink | None = None,
) -> list[DeliveryResult]:
    """Send `messages` through the account, in order, on as few connections as possible: a new
    one only when the previous broke after it had carried mail. One result per message."""
    results: list[DeliveryResult] = []
    remaining = list(messages)
    while remaining:
        async with Session(
            account, password=password, renew=renew, timeout=timeout, debug=debug
        ) as session:
            opened = session.failure is None
            while remaining and (session.alive or not opened):
                results.append(await session.send(remaining.pop(0)))
    return results
