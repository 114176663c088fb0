"""The classification table, row by row: msmtp.md §3 (exit code, text), SPEC §4 (disposition)."""

from __future__ import annotations

import errno
import socket

import pytest

from relayd.delivery.classify import (
    RULES,
    classify,
    combine,
    for_all,
    host_not_found,
    io_failure,
    strerror,
)
from relayd.delivery.result import Disposition, Event, RecipientResult, Reply
from relayd.sysexits import ExitCode

SENT, RETRY, FAIL, HOLD = (
    Disposition.SENT,
    Disposition.RETRY,
    Disposition.FAIL,
    Disposition.HOLD,
)
R421 = Reply(421, ("4.3.2 closing",))
R451 = Reply(451, ("4.3.0 try later",))
R454 = Reply(454, ("4.7.0 temporary authentication failure",))
R535 = Reply(535, ("5.7.8 bad credentials",))
R550 = Reply(550, ("5.1.1 no such user",))
R552 = Reply(552, ("5.3.4 too big",))
R554 = Reply(554, ("5.7.1 rejected",))
R502 = Reply(502, ("5.5.2 no",))
NAMES: dict[str, object] = {
    "host": "H",
    "target": "H, port 25",
    "address": "a@example.org",
    "method": "PLAIN",
}
NAMES |= {"reason": "R", "ip": "10.0.0.1", "file": "F", "key": "K", "cert": "C"}
NAMES |= {"size": 20, "limit": 10}

# (event, reply, exit code, disposition, text) — restated from the research and the spec, not
# derived from the table under test.
ROWS = [
    (
        Event.AUTH_NOT_COMPILED_IN,
        None,
        69,
        HOLD,
        "support for authentication method PLAIN is not compiled in",
    ),
    (Event.TLS_TRUST_FILE, None, 66, HOLD, "cannot set X509 trust file F for TLS session: R"),
    (Event.TLS_CRL_FILE, None, 66, HOLD, "cannot set X509 CRL file F for TLS session: R"),
    (
        Event.TLS_KEY_FILE,
        None,
        66,
        HOLD,
        "cannot set X509 key file K and/or X509 cert file C for TLS session: R",
    ),
    (Event.HOST_NOT_FOUND, None, 68, RETRY, "cannot locate host H: R"),
    (Event.SOCKET, None, 71, RETRY, "cannot create socket: R"),
    (Event.BIND, None, 71, RETRY, "cannot bind source ip 10.0.0.1: R"),
    (Event.CONNECT, None, 75, RETRY, "cannot connect to H, port 25: R"),
    (Event.PROXY, None, 69, RETRY, "proxy failure: R"),
    (Event.READ, None, 74, RETRY, "network read errorR"),
    (Event.WRITE, None, 74, RETRY, "network write errorR"),
    (Event.EMPTY_REPLY, None, 76, RETRY, "the server sent an empty reply"),
    (Event.INVALID_REPLY, None, 76, RETRY, "the server sent an invalid reply"),
    (
        Event.LONG_REPLY,
        None,
        76,
        RETRY,
        "Rejecting server reply that is longer than 50 lines. Increase SMTP_MAXLINES.",
    ),
    (Event.TLS_HANDSHAKE, None, 76, RETRY, "TLS handshake failed: R"),
    (Event.TLS_CERTIFICATE, None, 69, HOLD, "TLS certificate verification failed: R"),
    (Event.GREETING, R421, 76, RETRY, "cannot get initial OK message from server"),
    (Event.GREETING, R554, 76, RETRY, "cannot get initial OK message from server"),
    (Event.HELO, R502, 76, RETRY, "SMTP server does not accept EHLO or HELO commands"),
    (Event.LHLO, R502, 76, RETRY, "command LHLO failed"),
    (Event.NO_STARTTLS, None, 69, HOLD, "the server does not support TLS via the STARTTLS command"),
    (Event.STARTTLS, R454, 76, RETRY, "command STARTTLS failed"),
    (Event.STARTTLS, R554, 76, RETRY, "command STARTTLS failed"),
    (Event.NO_DSN, None, 69, HOLD, "the server does not support DSN"),
    (Event.NO_AUTH, None, 69, HOLD, "the server does not support authentication"),
    (
        Event.AUTH_METHOD_NOT_OFFERED,
        None,
        69,
        HOLD,
        "the server does not support authentication method PLAIN",
    ),
    (Event.AUTH_NO_SECURE_METHOD, None, 69, HOLD, "cannot use a secure authentication method"),
    (Event.AUTH_NO_USABLE_METHOD, None, 69, HOLD, "cannot find a usable authentication method"),
    (Event.AUTH_NO_USER, None, 69, HOLD, "authentication method PLAIN needs a user name"),
    (Event.AUTH_NO_PASSWORD, None, 69, HOLD, "authentication method PLAIN needs a password"),
    (Event.PASSWORD_LOOKUP, None, 78, HOLD, "R"),
    (Event.PASSWORD_UNAVAILABLE, None, 75, RETRY, "R"),
    (
        Event.AUTH_BAD_CHALLENGE,
        None,
        76,
        RETRY,
        "authentication method PLAIN: server sent invalid challenge",
    ),
    (Event.AUTH_REJECTED, R535, 77, HOLD, "authentication failed (method PLAIN)"),
    (Event.AUTH_REJECTED, R454, 77, RETRY, "authentication failed (method PLAIN)"),
    (Event.AUTH_REJECTED, None, 77, RETRY, "authentication failed (method PLAIN)"),
    (
        Event.COMMAND_TOO_LONG,
        None,
        65,
        FAIL,
        "Cannot send command because it is longer than 4094 characters. Increase SMTP_MAXCMDLEN.",
    ),
    (
        Event.SIZE_EXCEEDED,
        None,
        69,
        FAIL,
        "the mail is larger than the server's maximum message size (20 > 10 bytes)",
    ),
    (
        Event.NO_SMTPUTF8,
        None,
        65,
        FAIL,
        "the server does not support SMTPUTF8, needed for a non-ASCII address",
    ),
    (Event.MAIL, R451, 69, RETRY, "envelope from address a@example.org not accepted by the server"),
    (Event.MAIL, R550, 65, FAIL, "envelope from address a@example.org not accepted by the server"),
    (Event.MAIL, R421, 69, RETRY, "envelope from address a@example.org not accepted by the server"),
    (Event.RCPT, R451, 69, RETRY, "recipient address a@example.org not accepted by the server"),
    (Event.RCPT, R550, 65, FAIL, "recipient address a@example.org not accepted by the server"),
    (Event.DATA, R451, 69, RETRY, "the server does not accept mail data"),
    (Event.DATA, R554, 65, FAIL, "the server does not accept mail data"),
    (Event.END, R451, 69, RETRY, "the server did not accept the mail"),
    (Event.END, R554, 69, FAIL, "the server did not accept the mail"),
    (Event.END, R552, 69, FAIL, "the server did not accept the mail"),
    (Event.LMTP_RECIPIENT, R451, 69, RETRY, "the server refuses to send the mail to a@example.org"),
    (Event.LMTP_RECIPIENT, R550, 69, FAIL, "the server refuses to send the mail to a@example.org"),
    (Event.RSET, R502, 76, RETRY, "command RSET failed"),
    (Event.NO_ETRN, None, 69, RETRY, "the server does not support Remote Message Queue Starting"),
    (
        Event.ETRN_UNABLE,
        Reply(458, ("x",)),
        69,
        RETRY,
        "the server is unable to fulfill the request",
    ),
    (
        Event.ETRN_INVALID,
        Reply(501, ("x",)),
        65,
        RETRY,
        "invalid argument for Remote Message Queue Starting",
    ),
    (Event.ETRN, Reply(550, ("x",)), 76, RETRY, "command ETRN failed"),
]


@pytest.mark.parametrize(
    ("event", "reply", "code", "disposition", "text"),
    ROWS,
    ids=[f"{row[0].name}-{row[1].code if row[1] else 'none'}" for row in ROWS],
)
def test_row(
    event: Event, reply: Reply | None, code: int, disposition: Disposition, text: str
) -> None:
    failure = classify(event, reply, **NAMES)
    assert (failure.exit_code, failure.disposition, failure.error) == (code, disposition, text)
    assert failure.reply is reply and failure.event is event


def test_every_event_has_a_row_and_a_test() -> None:
    assert set(RULES) == set(Event)
    assert {row[0] for row in ROWS} == set(Event)


@pytest.mark.parametrize("event", [Event.MAIL, Event.RCPT, Event.DATA, Event.AUTH_REJECTED])
def test_odd_reply_codes_keep_msmtps_exit_code_but_are_retried(event: Event) -> None:
    """msmtp: `400 ≤ status ≤ 499 ? 69 : 65`; a 2xx/3xx where 250 was due is not permanent."""
    failure = classify(event, Reply(354, ("go ahead",)), **NAMES)
    assert failure.disposition is RETRY
    assert failure.exit_code == (77 if event is Event.AUTH_REJECTED else 65)


def test_dns_failure_text_comes_from_getaddrinfo() -> None:
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    failure = host_not_found(exc, "mail.invalid")
    assert (failure.exit_code, failure.error) == (
        ExitCode.NOHOST,
        "cannot locate host mail.invalid: Name or service not known",
    )
    # msmtp 1.8.23 does not tell EAI_AGAIN apart (1.8.24 does): still 68, still retried.
    again = host_not_found(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "h")
    assert (again.exit_code, again.disposition) == (ExitCode.NOHOST, RETRY)


def test_io_failures_read_like_msmtp() -> None:
    assert io_failure(TimeoutError(), writing=False).error == (
        "network read error: the operation timed out"
    )
    reset = ConnectionResetError(errno.ECONNRESET, "reset")
    assert io_failure(reset, writing=True).error == "network write error: Connection reset by peer"
    assert io_failure(None, writing=False).error == "network read error"
    assert strerror(TimeoutError()) == "Connection timed out"
    assert strerror(OSError(errno.ECONNREFUSED, "x")) == "Connection refused"


def test_for_all_gives_every_recipient_the_failure() -> None:
    failure = classify(Event.GREETING, R421)
    result = for_all(failure, ["a@x", "b@x"])
    assert (result.disposition, result.exit_code, result.reply) == (RETRY, 76, R421)
    assert [(r.address, r.disposition, r.error) for r in result.recipients] == [
        ("a@x", RETRY, failure.error),
        ("b@x", RETRY, failure.error),
    ]


def test_combine_retries_before_holding_before_failing() -> None:
    ok = Reply(250, ("2.0.0 queued",))
    sent = RecipientResult("a@x", SENT, ok)
    refused = classify(Event.RCPT, R550, address="b@x")
    failed = RecipientResult("b@x", FAIL, R550, refused.error)
    later = RecipientResult("c@x", RETRY, R451)
    assert combine([sent], None, ok).disposition is SENT
    assert combine([sent], None, ok).exit_code == 0
    partial = combine([sent, failed], refused, ok)
    assert (partial.disposition, partial.exit_code, partial.reply) == (FAIL, 65, R550)
    assert combine([sent, failed, later], refused, ok).disposition is RETRY
