"""A recording SMTP/LMTP server on loopback for tests: keeps every transaction, fails on request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import scramp
import trustme
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
    auth_mechanism,
)

#: The points of a session where a test can script the server's behaviour. ``GREETING`` is the
#: banner, ``EHLO`` also covers LHLO, ``DATA`` is the reply to the DATA command itself, ``BODY``
#: (drop only) closes the connection after the 354 while the client sends the message, ``END``
#: is the reply after the final dot (per recipient in LMTP mode).
Stage = Literal[
    "GREETING", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "BODY", "END", "ETRN"
]
TlsMode = Literal["starttls", "implicit"]

_DEFAULT_REPLIES: dict[Stage, str] = {
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "END": "250 2.0.0 Ok: queued",
    "ETRN": "250 2.0.0 Queuing started",
}
_AUTH_OK = "235 2.7.0 Authentication successful"
_AUTH_TLS_NEEDED = "538 5.7.11 Encryption required for requested authentication mechanism"


@dataclass(frozen=True)
class Transaction:
    """One mail transaction as the client sent it: paths verbatim, data dot-unstuffed."""

    mail_from: str
    mail_params: str
    rcpt_tos: tuple[str, ...]
    rcpt_params: tuple[str, ...]
    data: bytes
    reply: str  # the reply to the final dot; "" when the connection was dropped instead
    replies: tuple[str, ...] = ()  # LMTP: one final reply per accepted recipient


@dataclass(frozen=True)
class Fault:
    """What the server does at one stage instead of its normal reply."""

    reply: str | None = None  # e.g. "451 4.3.0 Try again later"; None keeps the normal reply
    delay: float = 0.0  # seconds to wait before replying (or dropping)
    drop: bool = False  # close the connection instead of replying


@dataclass(frozen=True)
class Features:
    """What the server advertises in its EHLO/LHLO reply (and enforces)."""

    size: int | None = None  # `SIZE n`, also enforced after DATA (552)
    pipelining: bool = False
    dsn: bool = False  # without it, RET/ENVID/NOTIFY/ORCPT are refused with 555
    eightbitmime: bool = True
    smtputf8: bool = True  # without it, the SMTPUTF8 parameter and non-ASCII paths are refused
    etrn: bool = False
    auth: tuple[str, ...] = ()  # mechanisms on the AUTH line; none = no AUTH line
    auth_needs_tls: bool = False  # advertise and accept AUTH only once TLS is active
    auth_required: bool = False  # MAIL before a successful AUTH gets 530
    extra: tuple[str, ...] = ()  # further EHLO keywords, verbatim


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange the server completed."""

    mechanism: str
    user: str
    success: bool


class Certificates:
    """A trustme CA, a server certificate for 127.0.0.1/localhost/HOSTNAME and a client one."""

    def __init__(self, directory: Path, hostname: str) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost", hostname)
        self.client = self.ca.issue_cert("client@example.org")
        self.ca_file = directory / "ca.pem"
        self.client_cert_file = directory / "client-cert.pem"
        self.client_key_file = directory / "client-key.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client.cert_chain_pems[0].write_to_path(str(self.client_cert_file))
        self.client.private_key_pem.write_to_path(str(self.client_key_file))
        self.server_der = ssl.PEM_cert_to_DER_cert(self.server.cert_chain_pems[0].bytes().decode())

    def fingerprint(self, algorithm: str = "sha256") -> str:
        """The server certificate's fingerprint as msmtp's tls_fingerprint wants it."""
        digest = hashlib.new(algorithm, self.server_der).hexdigest().upper()
        return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate enables AUTH EXTERNAL
        return context


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP with permissive MAIL/RCPT (paths recorded verbatim) and scripted faults."""

    # msmtp sends long lines unchanged (research/msmtp.md §5.4); aiosmtpd's default is 1001.
    line_length_limit = 16 * 1024 * 1024

    def __init__(self, server: UpstreamServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, authenticator=handler.authenticate, **kwargs)
        self._upstream = server
        self._partial = _Partial()

    # -- helpers ------------------------------------------------------------------------------

    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS layer of the connection (STARTTLS or implicit), if any."""
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def _drop(self) -> None:
        assert self.transport is not None
        self.transport.close()

    async def _scripted(self, stage: Stage, address: str | None = None) -> str | None:
        """Apply the fault for this stage: the reply to send instead ("" = the normal one), or
        None when the connection was dropped."""
        fault = self._upstream.fault_for(stage, address)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            self._drop()
            return None
        return fault.reply or ""

    def _params_refused(self, params: str, allowed: set[str]) -> str | None:
        for param in params.split():
            name = param.partition("=")[0].upper()
            if name not in allowed:
                return f"555 5.5.4 Unsupported option: {name}"
        return None

    # -- greeting and hello -------------------------------------------------------------------

    async def _handle_client(self) -> None:
        self._upstream.note("CONNECT")
        reply = await self._scripted("GREETING")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            self._drop()
            return
        await super()._handle_client()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._upstream.note(f"EHLO {hostname}")
        if self._upstream.lmtp:
            await self.push('500 Error: command "EHLO" not recognized')
            return
        await self._hello(hostname)

    async def smtp_LHLO(self, hostname: str) -> None:
        self._upstream.note(f"LHLO {hostname}")
        if not self._upstream.lmtp:
            await self.push('500 Error: command "LHLO" not recognized')
            return
        await self._hello(hostname)

    async def _hello(self, hostname: str) -> None:
        reply = await self._scripted("EHLO")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        self._upstream.note(f"HELO {hostname}")
        if self._upstream.lmtp:
            await self.push('500 Error: command "HELO" not recognized')
            return
        reply = await self._scripted("HELO")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            return
        await super().smtp_HELO(hostname)

    def ehlo_lines(self, hostname: str) -> list[str]:
        """The EHLO/LHLO reply for the current state of the connection."""
        features = self._upstream.features
        tls = self.ssl_object() is not None
        keywords: list[str] = []
        if features.size is not None:
            keywords.append(f"SIZE {features.size}")
        if features.pipelining:
            keywords.append("PIPELINING")
        if features.etrn:
            keywords.append("ETRN")
        if features.dsn:
            keywords.append("DSN")
        if features.eightbitmime:
            keywords.append("8BITMIME")
        if features.smtputf8:
            keywords.append("SMTPUTF8")
        if self._upstream.tls == "starttls" and not tls:
            keywords.append("STARTTLS")
        if features.auth and (tls or not features.auth_needs_tls):
            keywords.append("AUTH " + " ".join(features.auth))
        keywords += features.extra
        lines = [self.hostname, *keywords]
        return [f"250{'-' if i < len(lines) - 1 else ' '}{text}" for i, text in enumerate(lines)]

    async def smtp_STARTTLS(self, arg: str) -> None:
        self._upstream.note("STARTTLS")
        reply = await self._scripted("STARTTLS")
        if reply is None:
            return
        if reply or self._upstream.tls != "starttls" or self.ssl_object() is not None:
            await self.push(reply or "454 4.7.0 TLS not available")
            return
        await super().smtp_STARTTLS(arg)

    # -- AUTH ---------------------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        self._upstream.note(f"AUTH {arg}".rstrip())
        features = self._upstream.features
        mechanism = (arg or "").split(" ")[0].upper()
        if features.auth_needs_tls and self.ssl_object() is None:
            await self.push(_AUTH_TLS_NEEDED)
            return
        if mechanism not in features.auth:
            await self.push("504 5.5.4 Unrecognized authentication type")
            return
        reply = await self._scripted("AUTH")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            return
        await super().smtp_AUTH(arg)

    async def initial_or_challenge(self, args: list[str]) -> bytes | None:
        """The client's initial response, or its answer to an empty challenge."""
        if len(args) > 1:
            return b"" if args[1] == "=" else base64.b64decode(args[1], validate=True)
        answer = await self.challenge_auth("")
        return answer if isinstance(answer, bytes) else None

    # -- the transaction ----------------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._upstream.note(f"MAIL {arg}")
        if await self.check_helo_needed():
            return
        assert self.session is not None
        if self._upstream.features.auth_required and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return
        path = _split_path(arg or "", "FROM:")
        if path is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        reply = await self._scripted("MAIL", path[0])
        if reply is None:
            return
        features = self._upstream.features
        allowed = {"SIZE", "BODY"}
        allowed |= {"SMTPUTF8"} if features.smtputf8 else set()
        allowed |= {"RET", "ENVID"} if features.dsn else set()
        reply = reply or self._params_refused(path[1], allowed) or _DEFAULT_REPLIES["MAIL"]
        if reply.startswith("2"):
            self._partial = _Partial(mail_from=path[0], mail_params=path[1])
            # aiosmtpd's DATA checks these fields.
            assert self.envelope is not None
            self.envelope.mail_from = path[0]
        await self.push(reply)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._upstream.note(f"RCPT {arg}")
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
        allowed = {"NOTIFY", "ORCPT"} if self._upstream.features.dsn else set()
        reply = reply or self._params_refused(path[1], allowed) or _DEFAULT_REPLIES["RCPT"]
        if reply.startswith("2"):
            self._partial.rcpt_tos.append(path[0])
            self._partial.rcpt_params.append(path[1])
            assert self.envelope is not None
            self.envelope.rcpt_tos.append(path[0])
        await self.push(reply)

    async def smtp_DATA(self, arg: str) -> None:
        self._upstream.note("DATA")
        reply = await self._scripted("DATA")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            return
        assert self.envelope is not None
        if self._upstream.fault_for("BODY", None).drop and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._drop()
            return
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self._upstream.note("RSET")
        self._partial = _Partial()
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self._upstream.note("QUIT")
        await super().smtp_QUIT(arg)

    async def smtp_ETRN(self, arg: str) -> None:
        self._upstream.note(f"ETRN {arg}")
        if not self._upstream.features.etrn:
            await self.push('500 Error: command "ETRN" not recognized')
            return
        reply = await self._scripted("ETRN")
        if reply is not None:
            await self.push(reply or _DEFAULT_REPLIES["ETRN"])

    def take_partial(self) -> _Partial:
        """The envelope of the transaction that just ended; the next one starts empty."""
        partial, self._partial = self._partial, _Partial()
        return partial


class _Handler:
    """aiosmtpd handler: the EHLO reply, AUTH mechanisms and the end of DATA."""

    def __init__(self, server: UpstreamServer) -> None:
        self._server = server

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # the client gave up the handshake: expected
            return "454 4.7.0 TLS handshake failed"
        logging.getLogger(__name__).error("upstream fixture error", exc_info=error)
        return f"500 5.3.0 fixture error: {error!r}"

    async def handle_EHLO(
        self, smtp: _RecordingSMTP, session: Session, envelope: Envelope, hostname: str, _: Any
    ) -> list[str]:
        session.host_name = hostname
        return smtp.ehlo_lines(hostname)

    async def handle_DATA(self, smtp: _RecordingSMTP, session: Session, envelope: Envelope) -> str:
        partial = smtp.take_partial()
        assert partial.mail_from is not None
        content = envelope.original_content
        assert isinstance(content, bytes)
        fault = self._server.fault_for("END", None)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        recipients = partial.rcpt_tos if self._server.lmtp else [None]
        replies = tuple(
            self._server.fault_for("END", rcpt).reply or _DEFAULT_REPLIES["END"]
            for rcpt in recipients
        )
        self._server.record(
            Transaction(
                mail_from=partial.mail_from,
                mail_params=partial.mail_params,
                rcpt_tos=tuple(partial.rcpt_tos),
                rcpt_params=tuple(partial.rcpt_params),
                data=content,
                reply="" if fault.drop else "\r\n".join(replies),
                replies=() if fault.drop or not self._server.lmtp else replies,
            )
        )
        if fault.drop:
            assert smtp.transport is not None
            smtp.transport.close()
            # Nobody reads this: aiosmtpd's write after close is a no-op.
            return "421 4.4.2 dropped"
        return "\r\n".join(replies)

    # -- AUTH: PLAIN and LOGIN are aiosmtpd's, they end in authenticate() ----------------------

    def authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user = data.login.decode("utf-8", "replace")
        return self._result(mechanism, user, self._server.password_ok(user, data.password))

    def _result(self, mechanism: str, user: str, success: bool) -> AuthResult:
        self._server.record_auth(AuthAttempt(mechanism, user, success))
        if success:
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        challenge = f"<{secrets.randbelow(10**9)}.{os.getpid()}@{smtp.hostname}>".encode()
        answer = await smtp.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False)
        user, _, digest = answer.decode("utf-8", "replace").rpartition(" ")
        secret = self._server.users.get(user, secrets.token_hex()).encode()
        expected = hmac.new(secret, challenge, "md5").hexdigest()
        return self._result("CRAM-MD5", user, hmac.compare_digest(digest, expected))

    async def _scram(self, smtp: _RecordingSMTP, args: list[str], name: str) -> AuthResult:
        mechanism = scramp.ScramMechanism(name)
        users = self._server.users

        def auth_info(user: str) -> Any:
            return mechanism.make_auth_info(users.get(user, secrets.token_hex()))

        server = mechanism.make_server(auth_info)
        first = await smtp.initial_or_challenge(args)
        if first is None:
            return AuthResult(success=False)
        attributes = dict(
            item.split("=", 1) for item in first.decode().split(",")[2:] if "=" in item
        )
        user = attributes.get("n", "")
        try:
            server.set_client_first(first.decode())
            final = await smtp.challenge_auth(server.get_server_first())
            if not isinstance(final, bytes):
                return AuthResult(success=False)
            server.set_client_final(final.decode())
        except scramp.ScramException:
            return self._result(name, user, False)
        await smtp.challenge_auth(server.get_server_final())  # the client answers empty
        return self._result(name, user, True)

    @auth_mechanism("SCRAM-SHA-1")
    async def auth_SCRAM_SHA_1(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        return await self._scram(smtp, args, "SCRAM-SHA-1")

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM_SHA_256(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        return await self._scram(smtp, args, "SCRAM-SHA-256")

    async def _bearer(
        self, smtp: _RecordingSMTP, args: list[str], name: str, error_answers: set[bytes]
    ) -> AuthResult:
        message = await smtp.initial_or_challenge(args)
        if message is None:
            return AuthResult(success=False)
        fields = dict(
            item.split("=", 1) for item in message.decode().split("\x01")[1:] if "=" in item
        )
        first = message.decode().split("\x01")[0]
        if name == "XOAUTH2":
            user = first.partition("=")[2] if first.startswith("user=") else ""
        else:
            user = first.partition("a=")[2].rstrip(",")
        token = fields.get("auth", "").removeprefix("Bearer ")
        if self._server.bearer_ok(user, token):
            return self._result(name, user, True)
        error = {"status": "invalid_token", "schemes": "Bearer", "scope": "mail"}
        answer = await smtp.challenge_auth(json.dumps(error))
        self._server.record_auth(AuthAttempt(name, user, False))
        if answer not in error_answers:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad SASL answer")
        return AuthResult(success=False, handled=False)

    @auth_mechanism("XOAUTH2")
    async def auth_XOAUTH2(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        return await self._bearer(smtp, args, "XOAUTH2", {b""})

    @auth_mechanism("OAUTHBEARER")
    async def auth_OAUTHBEARER(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        # RFC 7628 wants %x01; msmtp 1.8.23 sends an empty line.
        return await self._bearer(smtp, args, "OAUTHBEARER", {b"\x01", b""})

    @auth_mechanism("EXTERNAL")
    async def auth_EXTERNAL(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        authzid = await smtp.initial_or_challenge(args)
        if authzid is None:
            return AuthResult(success=False)
        tls = smtp.ssl_object()
        has_cert = tls is not None and bool(tls.getpeercert())
        user = authzid.decode("utf-8", "replace")
        return self._result("EXTERNAL", user, has_cert and (not user or user in self._server.users))


class UpstreamServer:
    """An SMTP (or LMTP) server on 127.0.0.1 (ephemeral port) or a UNIX socket, in its own thread.

    Use as a context manager. ``fail(stage, ...)`` scripts a fault; ``transactions`` lists what
    arrived, ``commands`` every command line, ``auth_attempts`` every AUTH exchange. With ``tls``
    the server has a certificate from a fresh test CA: ``certificates.ca_file`` is the trust file,
    ``certificates.fingerprint()`` the pin. Everything is bounded by ``timeout``.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        hostname: str = "upstream.test",
        features: Features | None = None,
        tls: TlsMode | None = None,
        lmtp: bool = False,
        unix: bool = False,
        users: Mapping[str, str] | None = None,
        bearer: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.timeout = timeout
        self.bearer = bearer  # checks XOAUTH2/OAUTHBEARER (user, token); else `users` does
        self.hostname = hostname
        self.features = features or Features()
        self.tls = tls
        self.lmtp = lmtp
        self.users = dict(users if users is not None else {"user": "secret"})
        self.port = 0
        self._directory = tempfile.TemporaryDirectory(prefix="upstream-")
        self.socket_path = str(Path(self._directory.name, "smtp.sock")) if unix else None
        self.certificates = Certificates(Path(self._directory.name), hostname) if tls else None
        self._transactions: list[Transaction] = []
        self._commands: list[str] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._faults: dict[tuple[Stage, str | None], Fault] = {}
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- scripting ----------------------------------------------------------------------------

    def fail(self, stage: Stage, fault: Fault, *, address: str | None = None) -> None:
        """From now on, answer `stage` with `fault`: for every command, or only for the MAIL or
        RCPT whose path is `address` (which wins over a fault for all); at ``END`` in LMTP mode,
        the final reply for the recipient `address`."""
        with self._cond:
            self._faults[(stage, address)] = fault

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def fault_for(self, stage: Stage, address: str | None) -> Fault:
        with self._cond:
            return self._faults.get((stage, address)) or self._faults.get((stage, None)) or Fault()

    def bearer_ok(self, user: str, token: str) -> bool:
        """A bearer token: `bearer` decides (a token server's check), else `users`."""
        if self.bearer is not None:
            return self.bearer(user, token)
        return self.password_ok(user, token.encode())

    def password_ok(self, user: str, secret: bytes) -> bool:
        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), secret)

    # -- recording ----------------------------------------------------------------------------

    def record(self, transaction: Transaction) -> None:
        with self._cond:
            self._transactions.append(transaction)
            self._cond.notify_all()

    def note(self, command: str) -> None:
        with self._cond:
            self._commands.append(command)

    def record_auth(self, attempt: AuthAttempt) -> None:
        with self._cond:
            self._auth_attempts.append(attempt)

    @property
    def transactions(self) -> list[Transaction]:
        with self._cond:
            return list(self._transactions)

    @property
    def commands(self) -> list[str]:
        """Every command line received (AUTH with its initial response), `CONNECT` per session."""
        with self._cond:
            return list(self._commands)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._cond:
            return list(self._auth_attempts)

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
        handler_context = None
        if self.tls == "starttls":
            assert self.certificates is not None
            handler_context = self.certificates.server_context()
        return _RecordingSMTP(
            self,
            _Handler(self),
            data_size_limit=self.features.size or None,
            enable_SMTPUTF8=self.features.smtputf8,
            decode_data=False,
            hostname=self.hostname,
            timeout=self.timeout,
            tls_context=handler_context,
            auth_require_tls=False,  # checked by _RecordingSMTP, which also sees implicit TLS
            loop=self._loop,
        )

    async def _listen(self) -> asyncio.Server:
        if self.socket_path is not None:
            return await asyncio.get_running_loop().create_unix_server(
                self._factory, path=self.socket_path
            )
        context = None
        if self.tls == "implicit":
            assert self.certificates is not None
            context = self.certificates.server_context()
        return await asyncio.get_running_loop().create_server(
            self._factory, host="127.0.0.1", port=0, ssl=context
        )

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(self._listen())
        if self.socket_path is None:
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
        self._directory.cleanup()

    def __enter__(self) -> UpstreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
