"""The one table: network errors and SMTP replies → msmtp exit code and text, relayd disposition."""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from relayd.delivery.result import DeliveryResult, Disposition, Event, RecipientResult, Reply
from relayd.sysexits import ExitCode

RETRY, FAIL, HOLD = Disposition.RETRY, Disposition.FAIL, Disposition.HOLD


@dataclass(frozen=True)
class Verdict:
    """msmtp's exit code for an event, and what relayd does with the message."""

    exit_code: ExitCode
    disposition: Disposition


@dataclass(frozen=True)
class Rule:
    """One row: msmtp's error text, the verdict without a reply or for a 4xx reply, and the
    verdict for any other reply (its disposition holds for 5xx; odd codes are retried)."""

    text: str
    temporary: Verdict
    permanent: Verdict | None = None


def _v(code: ExitCode, disposition: Disposition) -> Verdict:
    return Verdict(code, disposition)


EX = ExitCode
# fmt: off
RULES: dict[Event, Rule] = {
    Event.AUTH_NOT_COMPILED_IN: Rule("support for authentication method {method} is not compiled in", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.TLS_TRUST_FILE: Rule("cannot set X509 trust file {file} for TLS session: {reason}", _v(EX.NOINPUT, HOLD)),  # noqa: E501
    Event.TLS_CRL_FILE: Rule("cannot set X509 CRL file {file} for TLS session: {reason}", _v(EX.NOINPUT, HOLD)),  # noqa: E501
    Event.TLS_KEY_FILE: Rule("cannot set X509 key file {key} and/or X509 cert file {cert} for TLS session: {reason}", _v(EX.NOINPUT, HOLD)),  # noqa: E501
    Event.HOST_NOT_FOUND: Rule("cannot locate host {host}: {reason}", _v(EX.NOHOST, RETRY)),
    Event.SOCKET: Rule("cannot create socket: {reason}", _v(EX.OSERR, RETRY)),
    Event.BIND: Rule("cannot bind source ip {ip}: {reason}", _v(EX.OSERR, RETRY)),
    Event.CONNECT: Rule("cannot connect to {target}: {reason}", _v(EX.TEMPFAIL, RETRY)),
    Event.PROXY: Rule("proxy failure: {reason}", _v(EX.UNAVAILABLE, RETRY)),
    Event.READ: Rule("network read error{reason}", _v(EX.IOERR, RETRY)),
    Event.WRITE: Rule("network write error{reason}", _v(EX.IOERR, RETRY)),
    Event.EMPTY_REPLY: Rule("the server sent an empty reply", _v(EX.PROTOCOL, RETRY)),
    Event.INVALID_REPLY: Rule("the server sent an invalid reply", _v(EX.PROTOCOL, RETRY)),
    Event.LONG_REPLY: Rule("Rejecting server reply that is longer than 50 lines. Increase SMTP_MAXLINES.", _v(EX.PROTOCOL, RETRY)),  # noqa: E501
    Event.TLS_HANDSHAKE: Rule("TLS handshake failed: {reason}", _v(EX.PROTOCOL, RETRY)),
    Event.TLS_CERTIFICATE: Rule("TLS certificate verification failed: {reason}", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.GREETING: Rule("cannot get initial OK message from server", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),  # noqa: E501
    Event.HELO: Rule("SMTP server does not accept EHLO or HELO commands", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),  # noqa: E501
    Event.LHLO: Rule("command LHLO failed", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),
    Event.NO_STARTTLS: Rule("the server does not support TLS via the STARTTLS command", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.STARTTLS: Rule("command STARTTLS failed", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),
    Event.NO_DSN: Rule("the server does not support DSN", _v(EX.UNAVAILABLE, HOLD)),
    Event.NO_AUTH: Rule("the server does not support authentication", _v(EX.UNAVAILABLE, HOLD)),
    Event.AUTH_METHOD_NOT_OFFERED: Rule("the server does not support authentication method {method}", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.AUTH_NO_SECURE_METHOD: Rule("cannot use a secure authentication method", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.AUTH_NO_USABLE_METHOD: Rule("cannot find a usable authentication method", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.AUTH_NO_USER: Rule("authentication method {method} needs a user name", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.AUTH_NO_PASSWORD: Rule("authentication method {method} needs a password", _v(EX.UNAVAILABLE, HOLD)),  # noqa: E501
    Event.PASSWORD_LOOKUP: Rule("{reason}", _v(EX.CONFIG, HOLD)),  # the lookup's own exit code
    Event.PASSWORD_UNAVAILABLE: Rule("{reason}", _v(EX.TEMPFAIL, RETRY)),
    Event.AUTH_BAD_CHALLENGE: Rule("authentication method {method}: server sent invalid challenge", _v(EX.PROTOCOL, RETRY)),  # noqa: E501
    Event.AUTH_REJECTED: Rule("authentication failed (method {method})", _v(EX.NOPERM, RETRY), _v(EX.NOPERM, HOLD)),  # noqa: E501
    Event.COMMAND_TOO_LONG: Rule("Cannot send command because it is longer than 4094 characters. Increase SMTP_MAXCMDLEN.", _v(EX.DATAERR, FAIL)),  # noqa: E501
    Event.SIZE_EXCEEDED: Rule("the mail is larger than the server's maximum message size ({size} > {limit} bytes)", _v(EX.UNAVAILABLE, FAIL)),  # noqa: E501
    Event.NO_SMTPUTF8: Rule("the server does not support SMTPUTF8, needed for a non-ASCII address", _v(EX.DATAERR, FAIL)),  # noqa: E501
    Event.MAIL: Rule("envelope from address {address} not accepted by the server", _v(EX.UNAVAILABLE, RETRY), _v(EX.DATAERR, FAIL)),  # noqa: E501
    Event.RCPT: Rule("recipient address {address} not accepted by the server", _v(EX.UNAVAILABLE, RETRY), _v(EX.DATAERR, FAIL)),  # noqa: E501
    Event.DATA: Rule("the server does not accept mail data", _v(EX.UNAVAILABLE, RETRY), _v(EX.DATAERR, FAIL)),  # noqa: E501
    Event.END: Rule("the server did not accept the mail", _v(EX.UNAVAILABLE, RETRY), _v(EX.UNAVAILABLE, FAIL)),  # noqa: E501
    Event.LMTP_RECIPIENT: Rule("the server refuses to send the mail to {address}", _v(EX.UNAVAILABLE, RETRY), _v(EX.UNAVAILABLE, FAIL)),  # noqa: E501
    Event.RSET: Rule("command RSET failed", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),
    Event.NO_ETRN: Rule("the server does not support Remote Message Queue Starting", _v(EX.UNAVAILABLE, RETRY)),  # noqa: E501
    Event.ETRN_UNABLE: Rule("the server is unable to fulfill the request", _v(EX.UNAVAILABLE, RETRY), _v(EX.UNAVAILABLE, RETRY)),  # noqa: E501
    Event.ETRN_INVALID: Rule("invalid argument for Remote Message Queue Starting", _v(EX.DATAERR, RETRY), _v(EX.DATAERR, RETRY)),  # noqa: E501
    Event.ETRN: Rule("command ETRN failed", _v(EX.PROTOCOL, RETRY), _v(EX.PROTOCOL, RETRY)),
}
# fmt: on


# A provider's "you send too much" (SPEC §8): the whole account pauses with a growing back-off
# instead of each message retrying on its own, and a 5xx of this kind is retried, not failed.
# Each row: the reply code or enhanced status it applies to (None: any 4xx/5xx), and a pattern
# its text must match (None: any text). Gmail: 421 4.7.0 "Try again later", 550 5.4.5 "Daily
# user sending limit exceeded"; Microsoft 365: 432/452 4.3.2 "… limit exceeded", 554 5.2.0
# "…SubmissionQuotaExceededException"; Yahoo: 421 4.7.0 "[TS01] … deferred due to … volume".
_TOO_MUCH = (
    r"\brate\b|rate.?limit|too many (?:messages|mails?|e-?mails|connections|requests|sessions"
    r"|concurrent)|sending (?:quota|limit|rate)|quota ?exceeded|throttl"
)
RATE_LIMITS: tuple[tuple[str | None, str | None], ...] = (
    ("421", None),
    ("4.7.0", _TOO_MUCH + r"|try again later|temporarily deferred|unusual (?:volume|activity)"),
    ("4.3.2", _TOO_MUCH + r"|limit|exceeded"),
    ("5.4.5", None),
    (None, _TOO_MUCH),
)
_NOT_A_RATE = frozenset({"5.2.2", "4.2.2"})  # the recipient's mailbox is full: its quota


def rate_limited(reply: Reply | None) -> bool:
    """Whether `reply` is a provider's rate limit (`RATE_LIMITS`, the one table of them)."""
    if reply is None or not 400 <= reply.code <= 599 or reply.enhanced in _NOT_A_RATE:
        return False
    text = " ".join(reply.lines)
    for where, pattern in RATE_LIMITS:
        if where is not None and where not in (str(reply.code), reply.enhanced):
            continue
        if pattern is None or re.search(pattern, text, re.IGNORECASE):
            return True
    return False


# Failures before any server answered: what an offline machine sees (SPEC §4 "network-down").
NETWORK_EVENTS = frozenset({Event.HOST_NOT_FOUND, Event.SOCKET, Event.CONNECT})


@dataclass(frozen=True)
class Failure:
    """One classified event: what msmtp would exit with and say, and what relayd does."""

    event: Event
    exit_code: ExitCode
    disposition: Disposition
    error: str
    reply: Reply | None = None
    rate_limited: bool = False  # the reply is a provider's rate limit (`RATE_LIMITS`)

    def for_recipient(self, address: str) -> RecipientResult:
        """This failure as one recipient's outcome."""
        return RecipientResult(address, self.disposition, self.reply, self.error, self.event)


def classify(event: Event, reply: Reply | None = None, **names: object) -> Failure:
    """Apply the table: `names` fill the text (`host`, `address`, `method`, `reason`, …)."""
    rule = RULES[event]
    verdict = rule.temporary
    disposition = verdict.disposition
    if reply is not None and rule.permanent is not None and not 400 <= reply.code <= 499:
        verdict = rule.permanent
        disposition = verdict.disposition if 500 <= reply.code <= 599 else RETRY
    throttled = rate_limited(reply)
    if throttled and disposition is FAIL:  # the provider's quota: the mail goes later
        disposition = RETRY
    text = rule.text.format(**names)
    return Failure(event, verdict.exit_code, disposition, text, reply, throttled)


# -- operating-system errors ---------------------------------------------------------------------


def strerror(exc: OSError) -> str:
    """The C library's text for the error, as msmtp prints it."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return os.strerror(errno.ETIMEDOUT)
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def host_not_found(exc: socket.gaierror, host: str) -> Failure:
    """getaddrinfo failed (msmtp 1.8.23 maps EAI_AGAIN here too)."""
    reason = exc.strerror or str(exc)
    return classify(Event.HOST_NOT_FOUND, host=host, reason=reason)


def io_failure(exc: OSError | None, *, writing: bool) -> Failure:
    """A failed read or write; `None` is a short read without an error (msmtp's bare text)."""
    if exc is None:
        reason = ""
    elif isinstance(exc, TimeoutError):
        reason = ": the operation timed out"
    else:
        reason = f": {strerror(exc)}"
    return classify(Event.WRITE if writing else Event.READ, reason=reason)


# -- per-message results ------------------------------------------------------------------------


def for_all(failure: Failure, recipients: Sequence[str]) -> DeliveryResult:
    """A failure that decides the whole message: every recipient shares its disposition."""
    return DeliveryResult(
        disposition=failure.disposition,
        exit_code=failure.exit_code,
        error=failure.error,
        reply=failure.reply,
        recipients=tuple(failure.for_recipient(r) for r in recipients),
        network=failure.event in NETWORK_EVENTS,
        rate_limited=failure.rate_limited,
    )


def combine(
    recipients: Sequence[RecipientResult], first: Failure | None, final: Reply | None
) -> DeliveryResult:
    """The message's result from its recipients': retry if any must be retried, else hold,
    else fail, else sent. The exit code and text are the first failure's, as msmtp stops there."""
    states = {r.disposition for r in recipients}
    for disposition in (RETRY, HOLD, FAIL):
        if disposition in states:
            break
    else:
        disposition = Disposition.SENT
    if first is None:
        return DeliveryResult(disposition, ExitCode.OK, None, final, tuple(recipients))
    throttled = first.rate_limited or any(rate_limited(r.reply) for r in recipients)
    return DeliveryResult(
        disposition,
        first.exit_code,
        first.error,
        first.reply,
        tuple(recipients),
        rate_limited=throttled,
    )
