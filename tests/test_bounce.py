"""relayd.daemon.bounce: RFC 3464 DSNs parsed back with the email package, and Maildir delivery."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import mailbox
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayd.daemon import bounce
from relayd.daemon.bounce import MaildirError, Notice, build, should_notify, write_maildir
from relayd.errors import RelaydError
from relayd.store.queued import QueuedMessage, Recipient, RecipientState
from relayd.store.records import State

PENDING, SENT, FAILED = RecipientState.PENDING, RecipientState.SENT, RecipientState.FAILED
ARRIVED = 1_795_534_586.0
NOW = ARRIVED + 3600.0
HOST = "laptop.example.org"
REMOTE = "mx.example.com"
ORIGINAL_HEADERS = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net, perm@example.com\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <orig.1@example.org>\r\n"
)
ORIGINAL = ORIGINAL_HEADERS + b"\r\nThe private body, SECRET-BODY-TEXT.\r\n"


@pytest.fixture(autouse=True)
def fixed_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A known zone, one hour east of UTC, so dates are checked to the offset."""
    monkeypatch.setenv("TZ", "UTC-01")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def queued(*recipients: Recipient, sender: str = "alice@example.org") -> QueuedMessage:
    return QueuedMessage(
        queue_id="Q7F3A",
        state=State.FAILED,
        account="work",
        overrides=(),
        config_file=None,
        sender=sender,
        size=len(ORIGINAL),
        smtputf8=False,
        eightbit=False,
        created_at=ARRIVED,
        next_attempt_at=None,
        lease_until=None,
        lease_owner=None,
        attempts=3,
        reason=None,
        uid=1000,
        recipients=recipients,
    )


def rcpt(
    position: int,
    address: str,
    state: RecipientState,
    code: int | None = None,
    text: str | None = None,
) -> Recipient:
    return Recipient(position, address, state, code, text)


@dataclass
class Parsed:
    """A DSN taken apart by the email package."""

    top: email.message.EmailMessage
    text: email.message.EmailMessage
    status: email.message.EmailMessage
    per_message: email.message.EmailMessage
    per_recipient: list[email.message.EmailMessage]
    headers: email.message.EmailMessage


def parse(notice: Notice) -> Parsed:
    top = email.message_from_bytes(notice.data, policy=email.policy.default)
    assert isinstance(top, email.message.EmailMessage)
    assert top.get_content_type() == "multipart/report"
    assert top.get_param("report-type") == "delivery-status"
    assert not top.defects
    parts = top.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 3
    text, status, headers = messages(parts)
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    # The email package reads message/delivery-status as a list of header blocks.
    blocks = messages(status.get_payload())
    assert len(blocks) >= 2
    return Parsed(top, text, status, blocks[0], blocks[1:], headers)


def messages(payload: object) -> list[email.message.EmailMessage]:
    assert isinstance(payload, list)
    assert all(isinstance(item, email.message.EmailMessage) for item in payload)
    return payload


def field(block: email.message.Message, name: str) -> str:
    """A field's raw value, unfolded (RFC 5322 §2.2.3), without any RFC 2047 decoding."""
    values = [value for key, value in block.raw_items() if key.lower() == name.lower()]
    assert len(values) == 1, f"{name}: {values!r}"
    return re.sub(r"\r?\n", "", values[0])


def assert_wire_clean(data: bytes) -> None:
    """CRLF line ends only, every line within 998 octets (RFC 5322 §2.1.1), CRLF at the end."""
    assert data.endswith(b"\r\n")
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    longest = max(len(line) for line in data.split(b"\r\n"))
    assert longest <= 998


def one_of_two_failed() -> Notice:
    message = queued(
        rcpt(0, "bob@example.net", SENT, 250, "2.0.0 Ok: queued as 1"),
        rcpt(1, "perm@example.com", FAILED, 550, "5.1.1 <x>: user unknown"),
    )
    return build(
        message,
        ORIGINAL,
        "failed",
        reporting_mta=HOST,
        remote_mta=REMOTE,
        now=NOW,
        message_id="<dsn.1@laptop.example.org>",
    )


# --- a failed recipient beside a delivered one ----------------------------------------------


def test_failed_notice_envelope_and_top_headers() -> None:
    notice = one_of_two_failed()
    dsn = parse(notice)
    assert (notice.sender, notice.recipient) == ("", "alice@example.org")
    assert (notice.eightbit, notice.smtputf8) == (False, False)
    top = dsn.top
    assert top["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert field(top, "To") == "<alice@example.org>"
    assert top["To"].addresses[0].addr_spec == "alice@example.org"
    assert top["Subject"] == "Undelivered Mail Returned to Sender"
    assert top["Message-ID"] == "<dsn.1@laptop.example.org>"
    assert top["Auto-Submitted"] == "auto-replied"
    assert top["MIME-Version"] == "1.0"
    assert field(top, "Date") == email.utils.formatdate(NOW, localtime=True)
    assert email.utils.parsedate_to_datetime(top["Date"]).timestamp() == NOW
    assert field(top, "Date").endswith("+0100")  # the local zone (TZ), not UTC
    assert "Content-Transfer-Encoding" not in top


def test_failed_notice_lists_only_the_failed_recipient() -> None:
    dsn = parse(one_of_two_failed())
    assert field(dsn.per_message, "Reporting-MTA") == f"dns; {HOST}"
    assert field(dsn.per_message, "X-Relayd-Queue-ID") == "Q7F3A"
    assert field(dsn.per_message, "Arrival-Date") == email.utils.formatdate(ARRIVED, True)
    assert len(dsn.per_recipient) == 1
    block = dsn.per_recipient[0]
    assert field(block, "Final-Recipient") == "rfc822; perm@example.com"
    assert field(block, "Action") == "failed"
    assert field(block, "Status") == "5.1.1"
    assert field(block, "Remote-MTA") == f"dns; {REMOTE}"
    assert field(block, "Diagnostic-Code") == "smtp; 550 5.1.1 <x>: user unknown"
    assert field(block, "Last-Attempt-Date") == email.utils.formatdate(NOW, localtime=True)
    assert "Will-Retry-Until" not in block
    assert b"bob@example.net" not in bytes(dsn.status)


def test_failed_notice_explains_in_words() -> None:
    dsn = parse(one_of_two_failed())
    text = dsn.text.get_content()
    assert "perm@example.com" in text
    assert "550 5.1.1 <x>: user unknown" in text
    assert REMOTE in text
    assert "Q7F3A" in text
    assert "bob@example.net" not in text  # delivered: not the sender's problem
    assert dsn.text.get_content_charset() in ("us-ascii", "utf-8")


def test_failed_notice_returns_the_headers_only() -> None:
    notice = one_of_two_failed()
    dsn = parse(notice)
    assert dsn.headers.get_payload(decode=True) == ORIGINAL_HEADERS
    assert b"SECRET-BODY-TEXT" not in notice.data
    assert "Content-Transfer-Encoding" not in dsn.headers


def test_the_same_inputs_give_the_same_bytes() -> None:
    assert one_of_two_failed().data == one_of_two_failed().data
    assert_wire_clean(one_of_two_failed().data)


def test_a_fresh_message_id_each_time_at_the_reporting_host() -> None:
    message = queued(rcpt(0, "perm@example.com", FAILED, 550, "5.1.1 no"))
    ids = set()
    for _ in range(3):
        notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
        top = parse(notice).top
        msgid = field(top, "Message-ID")
        assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(HOST)}>", msgid)
        ids.add(msgid)
    assert len(ids) == 3


# --- lifetime expiry: pending recipients without a reply ------------------------------------


def test_expired_message_fails_pending_recipients_with_the_reason() -> None:
    reason = "message expired: 5 days in the queue"
    message = queued(
        rcpt(0, "sent@example.net", SENT, 250, "2.0.0 ok"),
        rcpt(2, "never@example.com", PENDING),
        rcpt(1, "perm@example.com", FAILED, 550, "5.7.1 relaying denied"),
        rcpt(3, "slow@example.com", PENDING, 451, "4.4.1 try later"),
        rcpt(4, "plain@example.com", PENDING, 421, "Service not available"),
    )
    notice = build(
        message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=REMOTE, now=NOW, reason=reason
    )
    dsn = parse(notice)
    blocks = {field(b, "Final-Recipient"): b for b in dsn.per_recipient}
    # Envelope order (position), failed and pending alike; the delivered one is left out.
    assert list(blocks) == [
        "rfc822; perm@example.com",
        "rfc822; never@example.com",
        "rfc822; slow@example.com",
        "rfc822; plain@example.com",
    ]
    assert all(field(b, "Action") == "failed" for b in dsn.per_recipient)
    never = blocks["rfc822; never@example.com"]
    assert field(never, "Status") == "5.0.0"
    assert field(never, "Diagnostic-Code") == f"X-Relayd; {reason}"
    assert "Remote-MTA" not in never  # no server answered for it (RFC 3464 §2.3.5)
    assert field(never, "Last-Attempt-Date") == email.utils.formatdate(NOW, localtime=True)
    slow = blocks["rfc822; slow@example.com"]
    assert field(slow, "Status") == "4.4.1"
    assert field(slow, "Diagnostic-Code") == "smtp; 451 4.4.1 try later"
    assert field(slow, "Remote-MTA") == f"dns; {REMOTE}"
    assert field(blocks["rfc822; plain@example.com"], "Status") == "4.0.0"
    assert field(blocks["rfc822; perm@example.com"], "Status") == "5.7.1"
    text = dsn.text.get_content()
    assert reason in text
    assert "never@example.com" in text
    assert "sent@example.net" not in text
    assert_wire_clean(notice.data)


def test_no_reply_and_no_reason_gives_no_diagnostic() -> None:
    message = queued(rcpt(0, "never@example.com", PENDING))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=REMOTE, now=NOW)
    block = parse(notice).per_recipient[0]
    assert "Diagnostic-Code" not in block
    assert field(block, "Status") == "5.0.0"


# --- delayed ------------------------------------------------------------------------------


def delayed_notice() -> Notice:
    message = queued(
        rcpt(0, "done@example.net", SENT, 250, "2.0.0 ok"),
        rcpt(1, "temp@example.com", PENDING, 451, "4.3.0 <temp@example.com>: lookup failure"),
        rcpt(2, "gone@example.com", FAILED, 550, "5.1.1 unknown"),
    )
    return build(
        message,
        ORIGINAL,
        "delayed",
        reporting_mta=HOST,
        remote_mta=REMOTE,
        now=NOW,
        retry_until=ARRIVED + 5 * 86400,
        message_id="<delay.1@laptop.example.org>",
    )


def test_delayed_notice_fields() -> None:
    notice = delayed_notice()
    dsn = parse(notice)
    assert dsn.top["Subject"] == "Delayed Mail (still being retried)"
    assert notice.sender == ""
    assert len(dsn.per_recipient) == 1  # only the pending one: not failed, not sent
    block = dsn.per_recipient[0]
    assert field(block, "Final-Recipient") == "rfc822; temp@example.com"
    assert field(block, "Action") == "delayed"
    assert field(block, "Status") == "4.3.0"
    assert field(block, "Remote-MTA") == f"dns; {REMOTE}"
    assert field(block, "Diagnostic-Code") == ("smtp; 451 4.3.0 <temp@example.com>: lookup failure")
    until = email.utils.formatdate(ARRIVED + 5 * 86400, localtime=True)
    assert field(block, "Will-Retry-Until") == until
    assert field(block, "Last-Attempt-Date") == email.utils.formatdate(NOW, localtime=True)
    assert_wire_clean(notice.data)


def test_delayed_notice_says_it_is_still_retried() -> None:
    text = " ".join(parse(delayed_notice()).text.get_content().split())
    assert "temp@example.com" in text
    assert "451 4.3.0" in text
    assert "Q7F3A" in text
    assert "retried until " + email.utils.formatdate(ARRIVED + 5 * 86400, True) in text
    assert "do not need to send it again" in text
    assert "gone@example.com" not in text
    assert "done@example.net" not in text


def test_delayed_without_retry_until_has_no_will_retry_until() -> None:
    message = queued(rcpt(0, "temp@example.com", PENDING, 451, "4.3.0 later"))
    notice = build(message, ORIGINAL, "delayed", reporting_mta=HOST, remote_mta=None, now=NOW)
    block = parse(notice).per_recipient[0]
    assert "Will-Retry-Until" not in block
    assert "Remote-MTA" not in block  # remote_mta not given


@pytest.mark.parametrize(
    ("action", "code", "text", "status"),
    [
        ("failed", 550, "5.1.1 user unknown", "5.1.1"),
        ("failed", 554, "no enhanced code here", "5.0.0"),
        ("failed", 452, "4.2.2 mailbox full", "4.2.2"),
        ("failed", 451, "try again", "4.0.0"),
        ("failed", None, None, "5.0.0"),
        ("failed", 550, "  5.2.2 leading space", "5.2.2"),
        ("failed", 550, "5.1.10x not a code", "5.0.0"),
        ("delayed", 451, "4.7.1 greylisted", "4.7.1"),
        ("delayed", 421, "closing", "4.0.0"),
        ("delayed", None, None, "4.0.0"),
        # A delayed recipient is transient whatever its last reply said (RFC 3464 §2.3.4).
        ("delayed", 550, "5.1.1 odd", "4.1.1"),
        ("delayed", 554, "odd", "4.0.0"),
    ],
)
def test_status_codes(
    action: bounce.Action, code: int | None, text: str | None, status: str
) -> None:
    message = queued(rcpt(0, "r@example.com", PENDING, code, text))
    notice = build(message, ORIGINAL, action, reporting_mta=HOST, remote_mta=None, now=NOW)
    assert field(parse(notice).per_recipient[0], "Status") == status


# --- multi-line and long replies --------------------------------------------------------------


def test_multi_line_reply_is_one_diagnostic_line() -> None:
    text = "5.7.1 Message rejected\n5.7.1 see https://example.com/why\n5.7.1 ref 42"
    message = queued(rcpt(0, "r@example.com", FAILED, 554, text))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=REMOTE, now=NOW)
    block = parse(notice).per_recipient[0]
    expected = "smtp; 554 5.7.1 Message rejected see https://example.com/why ref 42"
    assert field(block, "Diagnostic-Code") == expected
    assert field(block, "Status") == "5.7.1"
    assert_wire_clean(notice.data)


def test_long_multi_line_reply_is_folded_not_truncated() -> None:
    lines = [f"5.7.1 line {n} " + "word " * 25 for n in range(40)]
    message = queued(rcpt(0, "r@example.com", FAILED, 550, "\r\n".join(lines)))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=REMOTE, now=NOW)
    assert_wire_clean(notice.data)
    diagnostic = field(parse(notice).per_recipient[0], "Diagnostic-Code")
    words = " ".join(line.removeprefix("5.7.1 ") for line in lines).split()
    assert diagnostic == "smtp; 550 5.7.1 " + " ".join(words)
    raw = notice.data.split(b"Diagnostic-Code:", 1)[1].split(b"\r\nLast-Attempt-Date:", 1)[0]
    assert raw.count(b"\r\n ") > 10  # folded
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_an_unbroken_giant_reply_still_keeps_lines_short() -> None:
    message = queued(rcpt(0, "r@example.com", FAILED, 550, "5.0.0 " + "x" * 5000))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=REMOTE, now=NOW)
    assert_wire_clean(notice.data)
    assert not notice.eightbit  # the long text part went quoted-printable, not 8bit
    diagnostic = field(parse(notice).per_recipient[0], "Diagnostic-Code")
    assert diagnostic.replace(" ", "") == "smtp;5505.0.0" + "x" * 5000
    assert "x" * 5000 in parse(notice).text.get_content()


def test_controls_in_replies_cannot_inject_fields() -> None:
    evil = "5.1.1 no\r\nAction: delivered\rStatus: 2.0.0\x00\x0b"
    message = queued(rcpt(0, "r@example.com", FAILED, 550, evil))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert_wire_clean(notice.data)
    block = parse(notice).per_recipient[0]
    assert field(block, "Action") == "failed"
    assert field(block, "Status") == "5.1.1"
    assert field(block, "Diagnostic-Code") == "smtp; 550 5.1.1 no Action: delivered Status: 2.0.0"


# --- 8-bit headers and internationalized addresses -----------------------------------------


EIGHTBIT_HEADERS = (
    b"From: J\xc3\xb6rg <joerg@example.org>\r\n"
    b"Subject: caf\xc3\xa9 \xe9t\xe9 (latin-1, not UTF-8)\r\n"
    b"X-Long: folded\r\n\tcontinuation kept as is\r\n"
)


def test_eightbit_original_headers_are_kept_byte_for_byte() -> None:
    original = EIGHTBIT_HEADERS + b"\r\nbody \xff\r\n"
    message = queued(rcpt(0, "perm@example.com", FAILED, 550, "5.1.1 unknown"))
    notice = build(message, original, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert notice.eightbit
    assert not notice.smtputf8
    assert EIGHTBIT_HEADERS in notice.data
    assert b"body \xff" not in notice.data
    dsn = parse(notice)
    assert dsn.headers["Content-Transfer-Encoding"] == "8bit"
    assert dsn.headers.get_payload(decode=True) == EIGHTBIT_HEADERS
    assert dsn.top["Content-Transfer-Encoding"] == "8bit"
    assert_wire_clean(notice.data)


def test_seven_bit_notice_is_not_flagged() -> None:
    notice = one_of_two_failed()
    assert notice.data.isascii()
    assert not notice.eightbit


def test_non_ascii_sender_needs_smtputf8() -> None:
    sender = "jörg@exämple.de"
    message = queued(rcpt(0, "perm@example.com", FAILED, 550, "5.1.1 unknown"), sender=sender)
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert notice.recipient == sender
    assert notice.sender == ""
    assert notice.smtputf8
    assert notice.eightbit  # the UTF-8 To: field (RFC 6532)
    assert f"To: <{sender}>\r\n".encode() in notice.data
    # The email package reads 8-bit header bytes as surrogate escapes (RFC 6532 UTF-8 here).
    to = field(parse(notice).top, "To").encode("ascii", "surrogateescape").decode("utf-8")
    assert to == f"<{sender}>"
    assert_wire_clean(notice.data)


def test_non_ascii_recipient_is_escaped_in_the_report_and_readable_in_the_text() -> None:
    message = queued(rcpt(0, "zoë@exämple.de", FAILED, 550, "5.1.1 unknown"))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert not notice.smtputf8
    assert not notice.eightbit  # the report stays 7-bit: RFC 6533 xtext and quoted-printable
    dsn = parse(notice)
    assert field(dsn.per_recipient[0], "Final-Recipient") == "utf-8; zo\\x{EB}@ex\\x{E4}mple.de"
    assert "<zoë@exämple.de>" in dsn.text.get_content()
    assert dsn.text.get_content_charset() == "utf-8"


# --- who gets a notice ----------------------------------------------------------------------


def test_should_notify_never_for_the_null_sender() -> None:
    recipient = rcpt(0, "perm@example.com", FAILED, 550, "5.1.1 unknown")
    assert not should_notify(queued(recipient, sender=""))
    assert not should_notify(queued(recipient, sender="<>"))
    assert should_notify(queued(recipient, sender="alice@example.org"))


def test_nothing_to_report_is_refused() -> None:
    message = queued(
        rcpt(0, "sent@example.net", SENT, 250, "2.0.0 ok"),
        rcpt(1, "gone@example.com", FAILED, 550, "5.1.1 unknown"),
    )
    with pytest.raises(ValueError, match="no delayed recipients"):
        build(message, ORIGINAL, "delayed", reporting_mta=HOST, remote_mta=None, now=NOW)
    everyone_sent = queued(rcpt(0, "sent@example.net", SENT, 250, "2.0.0 ok"))
    with pytest.raises(ValueError, match="no failed recipients"):
        build(everyone_sent, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)


def test_surrogate_escaped_bytes_in_a_sender_go_out_as_those_bytes() -> None:
    sender = b"j\xf6rg@example.org".decode("utf-8", "surrogateescape")
    message = queued(rcpt(0, "r\ud800@example.com", FAILED, 550, "5.1.1 x\udcff"), sender=sender)
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert b"To: <j\xf6rg@example.org>\r\n" in notice.data
    assert notice.smtputf8
    assert_wire_clean(notice.data)
    block = parse(notice).per_recipient[0]
    assert field(block, "Final-Recipient") == "utf-8; r\\x{FFFD}@example.com"
    assert field(block, "Diagnostic-Code") == "smtp; 550 5.1.1 x\\x{DCFF}"


# --- the original's header block ------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "block"),
    [
        (b"Subject: only headers\r\n", b"Subject: only headers\r\n"),
        (b"Subject: no final newline", b"Subject: no final newline\r\n"),
        (b"\r\nbody without headers\r\n", b""),
        (b"Subject: x\nTo: y\n\nbody\n", b"Subject: x\r\nTo: y\r\n"),
        (b"Subject: a\rb\r\n\r\nbody\r\n", b"Subject: a\r\nb\r\n"),
    ],
)
def test_header_block_extraction(original: bytes, block: bytes) -> None:
    message = queued(rcpt(0, "r@example.com", FAILED, 550, "5.1.1 no"))
    notice = build(message, original, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert_wire_clean(notice.data)
    assert parse(notice).headers.get_payload(decode=True) == block
    assert b"body" not in notice.data


def test_an_overlong_original_header_line_is_folded_to_the_limit() -> None:
    long_line = b"X-Huge: " + b"y" * 3000
    message = queued(rcpt(0, "r@example.com", FAILED, 550, "5.1.1 no"))
    original = long_line + b"\r\n\r\nbody\r\n"
    notice = build(message, original, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert_wire_clean(notice.data)
    returned = parse(notice).headers.get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert returned.replace(b"\r\n ", b"") == long_line + b"\r\n"


# --- properties over random replies and addresses -------------------------------------------

# Every code point, lone surrogates too (a surrogate-escaped byte from a decoded argv).
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=600)
ADDRESS = st.text(ANY_CHAR, min_size=1, max_size=300)
STATES = st.sampled_from([PENDING, SENT, FAILED])
RECIPIENT = st.builds(
    lambda address, state, code, text: (address, state, code, text),
    ADDRESS,
    STATES,
    st.none() | st.integers(200, 599),
    st.none() | ANY_TEXT,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipients=st.lists(RECIPIENT, min_size=1, max_size=5),
    sender=ADDRESS,
    reason=st.none() | ANY_TEXT,
    action=st.sampled_from(["failed", "delayed"]),
    headers=st.binary(max_size=400),
)
def test_property_any_input_gives_a_clean_parseable_report(
    recipients: list[tuple[str, RecipientState, int | None, str | None]],
    sender: str,
    reason: str | None,
    action: bounce.Action,
    headers: bytes,
) -> None:
    message = queued(
        *(rcpt(i, *fields) for i, fields in enumerate(recipients)),
        sender=sender,
    )
    wanted = {PENDING, FAILED} if action == "failed" else {PENDING}
    reported = [r for r in message.recipients if r.state in wanted]

    def report() -> Notice:
        return build(
            message,
            headers,
            action,
            reporting_mta=HOST,
            remote_mta=REMOTE,
            now=NOW,
            reason=reason,
            retry_until=NOW + 60,
        )

    if not reported:
        with pytest.raises(ValueError):
            report()
        return
    notice = report()
    assert_wire_clean(notice.data)
    assert notice.eightbit == (not notice.data.isascii())
    assert notice.smtputf8 == (not sender.isascii())
    assert notice.sender == ""
    dsn = parse(notice)
    assert len(dsn.per_recipient) == len(reported)
    for block, recipient in zip(dsn.per_recipient, reported, strict=True):
        assert field(block, "Action") == action
        status = field(block, "Status")
        assert re.fullmatch(r"[45]\.\d{1,3}\.\d{1,3}", status)
        if action == "delayed":
            assert status.startswith("4.")
        address_type = field(block, "Final-Recipient").split(";")[0]
        assert address_type == ("rfc822" if recipient.address.isascii() else "utf-8")
    assert bytes(dsn.status).isascii()  # message/delivery-status stays 7-bit


ASCII_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    code=st.integers(400, 599),
    lines=st.lists(st.lists(ASCII_WORD, min_size=1, max_size=12), min_size=1, max_size=20),
)
def test_property_printable_replies_survive_folding(code: int, lines: list[list[str]]) -> None:
    text = "\n".join(" ".join(words) for words in lines)
    # Not starting with an enhanced code, so every line comes through word for word.
    text = "reply " + text
    message = queued(rcpt(0, "r@example.com", FAILED, code, text))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    assert_wire_clean(notice.data)
    expected = f"smtp; {code} " + " ".join(text.split())
    assert field(parse(notice).per_recipient[0], "Diagnostic-Code") == expected


# --- Maildir ----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_maildir_creates_a_private_maildir(tmp_path: Path) -> None:
    notice = one_of_two_failed()
    root = tmp_path / "deep" / "Maildir"
    written = Path(write_maildir(str(root), notice))
    assert written.parent == root / "new"
    assert written.read_bytes() == notice.data
    assert mode(written) == 0o600
    for directory in (root, root / "tmp", root / "new", root / "cur"):
        assert directory.is_dir()
        assert mode(directory) == 0o700
    assert list((root / "tmp").iterdir()) == []
    assert ":" not in written.name  # new/ names carry no info suffix
    box = mailbox.Maildir(str(root), create=False)
    assert [box.get_bytes(key) for key in box.iterkeys()] == [notice.data]


def test_write_maildir_modes_ignore_a_loose_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        written = Path(write_maildir(str(tmp_path / "Mail"), one_of_two_failed()))
    finally:
        os.umask(previous)
    assert mode(written) == 0o600
    assert mode(tmp_path / "Mail") == 0o700
    assert mode(tmp_path / "Mail" / "new") == 0o700


def test_write_maildir_reuses_an_existing_maildir(tmp_path: Path) -> None:
    root = tmp_path / "Mail"
    first = write_maildir(str(root), one_of_two_failed())
    second = write_maildir(str(root), delayed_notice())
    assert first != second
    assert sorted(p.name for p in (root / "new").iterdir()) == sorted(
        Path(p).name for p in (first, second)
    )


def test_write_maildir_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    write_maildir(str(tmp_path / "Mail"), one_of_two_failed())
    assert events == ["fsync file", "rename", "fsync dir"]


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file", "sub-is-a-file"])
def test_write_maildir_unwritable_path_is_a_clear_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if where == "under-a-file":
        target = blocker / "Maildir"
    elif where == "is-a-file":
        target = blocker
    else:
        target = tmp_path / "Mail"
        (target / "tmp").mkdir(parents=True)
        (target / "new").write_text("in the way")
    with pytest.raises(MaildirError) as caught:
        write_maildir(str(target), one_of_two_failed())
    error = caught.value
    assert isinstance(error, RelaydError)
    assert "\n" not in error.message
    assert str(target) in error.message
    assert error.message.startswith("cannot write the bounce into Maildir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_maildir_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "Mail"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    (root / "tmp").chmod(0o500)
    try:
        with pytest.raises(MaildirError, match="Permission denied"):
            write_maildir(str(root), one_of_two_failed())
    finally:
        (root / "tmp").chmod(0o700)


def test_write_maildir_failed_rename_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rename(src: str, dst: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", rename)
    root = tmp_path / "Mail"
    with pytest.raises(MaildirError, match="Invalid cross-device link"):
        write_maildir(str(root), one_of_two_failed())
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "new").iterdir()) == []


def test_a_non_ascii_line_break_in_an_address_is_escaped_not_dropped() -> None:
    """NEL (U+0085) is a line break to Python but not ASCII: the address stays `utf-8;`."""
    message = queued(rcpt(0, "a\x85b@example.com", FAILED, 550, "5.1.1 no"))
    notice = build(message, ORIGINAL, "failed", reporting_mta=HOST, remote_mta=None, now=NOW)
    block = parse(notice).per_recipient[0]
    assert field(block, "Final-Recipient") == "utf-8; a\\x{85}b@example.com"
