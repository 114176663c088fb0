"""Unit tests of submission.message and its parts: msmtp's header rules, addresses, aliases."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.errors import ConfigError, DataError
from relayd.submission import message
from relayd.submission.headers import _HeaderReader
from relayd.submission.message import (
    HeaderScan,
    build_message,
    canonical_hostname,
    check_address,
    check_message,
    expand_aliases,
    format_date,
    is_eightbit,
    make_message_id,
    needs_smtputf8,
    parse_recipient_argument,
    parse_recipient_arguments,
    scan_headers,
    smtp_reverse_path,
)
from relayd.sysexits import ExitCode

NOW = 1_795_192_499.0  # Fri, 20 Nov 2026 16:34:59 UTC


def build(raw: bytes, read_recipients: bool = False, **overrides: Any) -> bytes:
    """build_message with msmtp's defaults; Date/Message-ID generation off unless asked for."""
    options: dict[str, Any] = {
        "envelope_from": "me@example.org",
        "full_name": None,
        "set_from_header": "auto",
        "set_date_header": "off",
        "set_msgid_header": "off",
        "remove_bcc_headers": True,
        "undisclosed_recipients": False,
        "now": NOW,
        "hostname": "host.example",
    }
    options.update(overrides)
    return bytes(build_message(raw, scan_headers(raw, read_recipients=read_recipients), **options))


@pytest.fixture
def timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set TZ for the process (time.tzset); restored afterwards."""

    def set_tz(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


# -- the header block ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "end"),
    [
        (b"", 0),
        (b"\n", 1),
        (b"\r\n", 2),
        (b"\r\r\n", 3),  # a line of CRs is empty: msmtp ignores every CR in the headers
        (b"A: 1\nB: 2\n\nbody\n\nmore\n", 11),
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", 14),
        (b"A: 1\n \nB: 2\n\nbody", 13),  # a line of one space is not empty
        (b"no blank line\nat all", 20),
        (b"A: 1\n\r", 6),
    ],
)
def test_header_block_ends_at_the_first_empty_line(raw: bytes, end: int) -> None:
    assert scan_headers(raw, read_recipients=True).header_end == end


@pytest.mark.parametrize(
    ("raw", "date", "msgid"),
    [
        (b"Date: x\nMessage-ID: y\n\n", True, True),
        (b"date:x\nmessage-id:y\n\n", True, True),
        (b"DATE: x\nMESSAGE-Id: y\n\n", True, True),
        (b"Date :x\nMessage-Id :y\n\n", False, False),  # the colon must follow the name
        (b"Date(c): x\nMessage-IDs: y\n\n", False, False),
        (b"Date\x1a x\nMessage\r-ID: y\n\n", False, True),  # only letters fold case; CRs vanish
        (b"X: y\n\nDate: x\nMessage-ID: y\n", False, False),  # in the body
        (b"Resent-Date: x\nResent-Message-ID: y\n\n", False, False),
    ],
)
def test_date_and_message_id_presence(raw: bytes, date: bool, msgid: bool) -> None:
    scan = scan_headers(raw, read_recipients=False)
    assert (scan.has_date, scan.has_message_id) == (date, msgid)


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        (b'From: "Doe, John" <john@example.com>\n\n', "john@example.com"),
        (b"From: john@example.com (John Doe)\n\n", "john@example.com"),
        (b"From: John\n <john@example.com>\n\n", "john@example.com"),
        (b"from: a@x, b@x\n\n", "a@x"),
        (b"From a@x Mon Nov 24\nFrom: c@x\n\n", "c@x"),  # an mbox From line is no header
        (b"From:\nTo: a@x\nFrom: b@x\n\n", "b@x"),  # an empty From: does not count
        (b"From: (nobody)\nFrom: b@x\n\n", "b@x"),
        (b"Resent-From: r@x\nFrom: b@x\n\n", "b@x"),  # 1.8.23 ignores Resent-From
        (b"Subject: x\n\n", None),
        (b"From: \n\nbody\n", None),
        (b"X: 1\n\nFrom: body@x\n", None),
        (b"From:", ""),  # a From: still open at the end: msmtp takes an empty address
        (b"From: (x)", ""),
        (b"From", ""),
        (b"From: a@x (unclosed", "a@x"),
        (b"From: <a@x", "a@x"),
    ],
)
def test_first_from_address(raw: bytes, address: str | None) -> None:
    scan = scan_headers(raw, read_recipients=False)
    assert scan.from_address == address
    assert scan.has_from is (address is not None)


# Each expectation here was checked against Debian's msmtp 1.8.23 (and tests/test_message_wire.py
# compares the whole corpus with it again when msmtp is installed).
RECIPIENT_CASES = [
    (b"To: a@x\nCc: b@x\nBcc: c@x\n\n", ["a@x", "b@x", "c@x"]),
    (b"to: a@x\ncc: b@x\nbcc: c@x\nTO: a@x\n\n", ["a@x", "b@x", "c@x", "a@x"]),  # no dedup
    (b"To: John Smith <j@x>, k@x\n\n", ["j@x", "k@x"]),
    (b"To: (c) l@x\n\n", ["l@x"]),
    (b"To: m@x;\n\n", ["m@x"]),
    (b'To: "Doe, J" <j@x>\n\n', ["j@x"]),
    (b"To: g: a@x, b@x;\n\n", ["a@x", "b@x"]),
    (b'To: "a b"@example.com\n\n', ["@example.com"]),  # msmtp mangles quoted local parts
    (b"To: a@x b@y\n\n", ["b@y"]),  # whitespace-separated: the last word wins
    (b"To: abc \n def@x\n\n", ["abc", "def@x"]),
    (b"To: abc\n def@x\n\n", ["def@x"]),
    (b"To: (a()) q@x (x) r@x\n\n", ["q@x"]),  # comments nest msmtp's way
    (b"To: <a b@x>, <c\x01d@x>, e\x7ff@x\n\n", ["a_b@x", "c_d@x", "e_f@x"]),
    (b"To: a\\ b@x\n\n", ["a_b@x"]),
    (b"To: <a@x>junk, a@b(c)d, x\\@y, <a\\>b>\n\n", ["a@x", "junk", "a@bd", "x@y", "a>b"]),
    (b"To: <a\xc3\xa9@x>\n\n", ["a\xe9@x"]),
    (b"To: <a\x85@x>\n\n", ["a\udc85@x"]),  # not UTF-8: kept as a surrogate
    (b"To: a@x (unclosed\nCc: (c) b@x, e@x\n\n", ["a@x"]),  # the open comment carries over
    (b"To: a@x (unclosed\nX: y\nCc: (c) b@x, e@x\n\n", ["a@x", "b@x", "e@x"]),
    (b"To: a@x\r\nSubject: x\r\n\r\nTo: b@x\r\n", ["a@x"]),
    (b"From: (nobody)\nTo: a@x\n\n", ["a@x"]),
    (b"To: a@x,\n\tb@x\n\n", ["a@x", "b@x"]),
    (b"To: a@x\n\tb@x\n\n", ["b@x"]),  # folded without a comma: like `a@x b@y`
    (b"To: a@x", ["a@x"]),
    # Resent-: only the first contiguous block of Resent- fields counts.
    (
        b"Received: x\nResent-To: r1@x\nResent-Cc: r2@x\nX: y\nResent-To: old@x\nTo: a@x\n\n",
        ["r1@x", "r2@x"],
    ),
    (b"To: a@x\nReceived: x\nResent-To: r1@x\nresent-bcc: r2@x\n\n", ["r1@x", "r2@x"]),
    (b"Resent-Date: x\nResent-From: y@x\nTo: a@x\n\n", []),  # msmtp: no recipients (64)
    (b"Resent-Date: x\n y\nResent-To: r1@x\nTo: a@x\n\n", []),  # a folded line ends the block
    (b"Resent-From: r@x\nFrom: b@x\nResent-To: t@x\n\n", []),
    (b"Resent-From: r@x\nResent-To: t@x\nFrom: b@x\n\n", ["t@x"]),
    (b"Resent-To: a@x\nD\nResent-To: b@x\nX: y\nResent-To: c@x\n\n", ["a@x", "b@x"]),
    (b"R\nResent-To: a@x\nTo: b@x\n\n", ["a@x"]),
    (b"Resent-Date: x\nResent-To: t@x\n (c\nCc: (d) q@x\n\n", ["t@x"]),
]


@pytest.mark.parametrize(("raw", "recipients"), RECIPIENT_CASES)
def test_read_recipients_like_msmtp(raw: bytes, recipients: list[str]) -> None:
    assert list(scan_headers(raw, read_recipients=True).recipients) == recipients


def test_no_recipients_without_t() -> None:
    assert scan_headers(b"To: a@x\nResent-To: b@x\n\n", read_recipients=False).recipients == ()


def test_a_from_fields_further_addresses_are_no_recipients() -> None:
    """msmtp 1.8.23 adds them (a bug); relayd does not. The private flag restores msmtp's way."""
    raw = b"From: a@x, b@x\nTo: c@x\n\n"
    scan = scan_headers(raw, read_recipients=True)
    assert (scan.from_address, scan.recipients) == ("a@x", ("c@x",))
    reader = _HeaderReader(message=True, read_recipients=True, from_extras_are_recipients=True)
    reader.read(raw)
    assert reader.addresses() == ["b@x", "c@x"]


def test_header_scan_value_semantics() -> None:
    one = scan_headers(b"To: a@x\n\n", read_recipients=True)
    two = scan_headers(b"To: a@x\n\n", read_recipients=True)
    assert one == two and hash(one) == hash(two) and "a@x" in repr(one)
    with pytest.raises(AttributeError):
        one.header_end = 3


# -- command-line recipients ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "addresses"),
    [
        ("John <j@x>, k@x", ["j@x", "k@x"]),
        ("(c) l@x", ["l@x"]),
        ("m@x;", ["m@x"]),
        ("local", ["local"]),
        ('"a b"@example.com', ["@example.com"]),
        ("a@x b@y", ["b@y"]),
        ("", []),
        ("(only a comment)", []),
        ("Team: a@x, b@x;", ["a@x", "b@x"]),
        ("é@exämple.org", ["é@exämple.org"]),
    ],
)
def test_recipient_argument_parsed_as_a_to_field(argument: str, addresses: list[str]) -> None:
    assert parse_recipient_argument(argument) == addresses


@pytest.mark.parametrize("argument", ["a@x\nBcc: evil@x", "a@x\r", "a\0@x"])
def test_recipient_argument_with_a_line_break_is_refused(argument: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_recipient_arguments(["ok@x", argument])
    assert caught.value.exit_code == ExitCode.DATAERR and "\n" not in caught.value.message


def test_recipient_arguments_are_one_header_block() -> None:
    assert parse_recipient_arguments(["a@x", "b@x, c@x"]) == ["a@x", "b@x", "c@x"]
    # msmtp writes them as consecutive To: lines, so an open comment swallows the next one.
    assert parse_recipient_arguments(["a@x (oops", "(c) b@x"]) == ["a@x"]


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "a@example.org",
        "first.last+tag@sub.example.org",
        "local",
        "a_b@x",
        '"a b"@example.org',
        '"a\\"b@c"@example.org',
        '"quoted"',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "jörg@bücher.example",
    ],
)
def test_good_addresses(address: str) -> None:
    check_address(address)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("a\r@x", "line break"),
        ("a@x\nRCPT TO:<b@y>", "line break"),
        ("a\0@x", "NUL"),
        ("a\x01@x", "control character"),
        ("", "empty"),
        ("@example.com", "empty local part"),
        ("a@", "empty domain"),
        ("a b@x", "needs quoting"),
        ("a>b", "needs quoting"),
        ("a@b@c", "not allowed"),
        ("a@x y", "not allowed"),
        ('"open@x', "unterminated"),
        ('"q"x@y', "after the quoted"),
        ("a@[]", "address literal"),
    ],
)
def test_bad_addresses_are_data_errors(address: str, reason: str) -> None:
    with pytest.raises(DataError) as caught:
        check_address(address)
    assert caught.value.exit_code == ExitCode.DATAERR
    assert reason in caught.value.message
    assert "\n" not in caught.value.message  # one line, even for an address with LF


def test_empty_reverse_path_allowed_on_request() -> None:
    check_address("", allow_empty=True)
    assert smtp_reverse_path("MAILER-DAEMON") == smtp_reverse_path("mailer-daemon") == ""
    assert smtp_reverse_path("me@x") == "me@x"


def test_needs_smtputf8() -> None:
    assert not needs_smtputf8(["a@example.org", "local"])
    assert needs_smtputf8(["a@example.org", "jörg@example.org"])
    assert not needs_smtputf8([])


# -- aliases -------------------------------------------------------------------------------------


@pytest.fixture
def aliases(tmp_path: Path) -> Any:
    def write(text: str | bytes) -> Path:
        path = tmp_path / "aliases"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return write


def test_aliases_expand_in_file_order(aliases: Any) -> None:
    path = aliases("root: a@x, b@y\nroot2: c@x\n")
    # msmtp 1.8.23 gives b@y, a@x, root2, b@y, a@x (reversed, and skips the name after one).
    assert expand_aliases(["root", "root2", "root"], path) == ["a@x", "b@y", "c@x", "a@x", "b@y"]


def test_aliases_nest_and_keep_addresses(aliases: Any) -> None:
    path = aliases("# comment\n\nroot: admin, b@y # trailing\n  admin :  c@x,d@x  \n")
    assert expand_aliases(["x@y", "root", "z@w"], path) == ["x@y", "c@x", "d@x", "b@y", "z@w"]


def test_aliases_default_and_unknown(aliases: Any) -> None:
    assert expand_aliases(["who", "me@x"], aliases("default: d@x\n")) == ["d@x", "me@x"]
    assert expand_aliases(["who"], aliases("root: a@x\n")) == ["who"]
    assert expand_aliases(["Root"], aliases("root: a@x\n")) == ["Root"]  # case-sensitive


def test_aliases_drop_empty_entries(aliases: Any) -> None:
    """msmtp sends RCPT TO:<> for each empty entry."""
    assert expand_aliases(["root"], aliases("root: a@x, , b@y,\n")) == ["a@x", "b@y"]
    assert expand_aliases(["root", "c@x"], aliases("root:\n")) == ["c@x"]


def test_aliases_file_not_read_when_every_recipient_has_an_at(tmp_path: Path) -> None:
    assert expand_aliases(["a@x", "b@y"], tmp_path / "missing") == ["a@x", "b@y"]


def test_alias_depth_limit_is_msmtps(aliases: Any) -> None:
    chain = "".join(f"a{n}: a{n + 1}\n" for n in range(16)) + "a16: end@x\n"
    assert expand_aliases(["a0"], aliases(chain)) == ["end@x"]
    deeper = "".join(f"a{n}: a{n + 1}\n" for n in range(17)) + "a17: end@x\n"
    with pytest.raises(ConfigError, match=r"Too many redirects when expanding alias a0\.$"):
        expand_aliases(["a0"], aliases(deeper))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("default: admin\n", "Too many redirects when expanding alias who."),
        ("who: who\n", "Too many redirects when expanding alias who."),
        ("root a@x\n", "line 1: single ':' delimiter expected"),
        ("root: a@x: b\n", "line 1: single ':' delimiter expected"),
        ("r@x: a@x\n", "line 1: invalid alias 'r@x'"),
        (": a@x\n", "line 1: invalid alias ''"),
        ("root: a@x\nroot: b@x\n", "line 2: duplicate alias 'root'"),
        ("x: y@z\n\n\nroot a\n", "line 4: single ':' delimiter expected"),
        ("root: " + "a" * 504 + "\n", "line 1: longer than 511 characters"),
        ("a: b@x\rc: d@x\n", "line 1: single ':' delimiter expected"),  # only LF ends a line
    ],
)
def test_alias_errors_read_like_msmtps(aliases: Any, text: str, error: str) -> None:
    path = aliases(text)
    with pytest.raises(ConfigError) as caught:
        expand_aliases(["who"], path)
    assert caught.value.message == f"{path}: {error}"
    assert caught.value.exit_code == ExitCode.CONFIG


def test_alias_line_length_limit_edges(aliases: Any) -> None:
    """Lines of up to 510 bytes, counting the newline (msmtp reads them with fgets(…, 512))."""
    assert expand_aliases(["r"], aliases("r: " + "a" * 504 + "@x\n")) == ["a" * 504 + "@x"]
    assert expand_aliases(["r"], aliases("r: " + "a" * 505 + "@x")) == ["a" * 505 + "@x"]
    with pytest.raises(ConfigError):
        expand_aliases(["r"], aliases("r: " + "a" * 506 + "@x"))


def test_alias_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        expand_aliases(["root"], tmp_path / "missing")
    assert caught.value.message == f"{tmp_path / 'missing'}: No such file or directory"
    with pytest.raises(ConfigError) as caught:
        expand_aliases(["root"], tmp_path)
    assert caught.value.message == f"{tmp_path}: input error"


# -- building the message ------------------------------------------------------------------------


def test_generated_headers_in_msmtps_order_and_format() -> None:
    out = build(b"Subject: hi\n\nbody\n", set_date_header="auto", set_msgid_header="auto")
    lines = out.split(b"\r\n")
    assert lines[0] == b"From: me@example.org"
    assert lines[1] == b"Date: " + format_date(NOW).encode()
    assert lines[2].startswith(b"Message-ID: <") and lines[2].endswith(b".me@example.org>")
    assert lines[3:] == [b"Subject: hi", b"", b"body", b""]


def test_generated_to_header_with_undisclosed_recipients() -> None:
    out = build(
        b"To: a@x\n cont\nCc: c@x\nBcc: b@x\nResent-To: q\nSubject: s\n\nTo: body\n",
        undisclosed_recipients=True,
        set_date_header="auto",
    )
    assert out == (
        b"From: me@example.org\r\nTo: undisclosed-recipients:;\r\nDate: "
        + format_date(NOW).encode()
        + b"\r\nResent-To: q\r\nSubject: s\r\n\r\nTo: body\r\n"
    )


def test_bcc_removed_only_in_the_header_block_and_resent_bcc_kept() -> None:
    raw = b"To: a@x\r\nBcc: b@x\r\n\tc@x\r\nbcc:d@x\r\nResent-Bcc: e@x\r\nBccc: f\r\n\r\nBcc: z\n"
    assert build(raw) == (
        b"From: me@example.org\r\nTo: a@x\r\nResent-Bcc: e@x\r\nBccc: f\r\n\r\nBcc: z\r\n"
    )


def test_bcc_kept_when_asked_but_not_with_undisclosed_recipients() -> None:
    raw = b"From: x@y\nBcc: b@x\n cont\nSubject: s\n\nb\n"
    assert build(raw, remove_bcc_headers=False) == (
        b"From: x@y\r\nBcc: b@x\r\n cont\r\nSubject: s\r\n\r\nb\r\n"
    )
    assert build(raw, remove_bcc_headers=False, undisclosed_recipients=True) == (
        b"To: undisclosed-recipients:;\r\nFrom: x@y\r\nSubject: s\r\n\r\nb\r\n"
    )


def test_set_from_header_on_replaces_every_from_field() -> None:
    raw = b"From: a@x\n  cont\nfrom: b@x\nFrom x@y\nSubject: s\n\nFrom: body\n"
    assert build(raw, set_from_header="on", full_name='Jo "Q" Doe') == (
        b'From: Jo "Q" Doe <me@example.org>\r\nFrom x@y\r\nSubject: s\r\n\r\nFrom: body\r\n'
    )


def test_set_from_header_auto_replaces_a_from_without_address() -> None:
    assert build(b"From: (x)\nSubject: s\n\nb\n") == (
        b"From: me@example.org\r\nSubject: s\r\n\r\nb\r\n"
    )
    assert build(b"From: a@x\n\nb\n") == b"From: a@x\r\n\r\nb\r\n"
    assert build(b"Subject: s\n\nb\n", set_from_header="off") == b"Subject: s\r\n\r\nb\r\n"


def test_from_header_with_empty_full_name_and_empty_sender() -> None:
    assert build(b"", full_name="") == b"From:  <me@example.org>\r\n"
    assert build(b"", envelope_from="") == b"From: \r\n"


def test_full_name_with_a_line_break_is_refused() -> None:
    with pytest.raises(DataError):
        build(b"", full_name="Eve\r\nBcc: x@y")


def test_every_cr_dropped_from_the_header_block_but_not_the_body() -> None:
    raw = b"X-CR: a\rb\r\r\nY: 1\r\n\r\nbody\rx\r\r\n\r"
    assert build(raw) == b"From: me@example.org\r\nX-CR: ab\r\nY: 1\r\n\r\nbody\rx\r\r\n\r\r\n"


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        (b"S: x\n\na\nb\n", b"S: x\r\n\r\na\r\nb\r\n"),
        (b"S: x\r\n\r\na\r\nb\r\n", b"S: x\r\n\r\na\r\nb\r\n"),
        (b"S: x\n\r\na\r\nb\nc", b"S: x\r\n\r\na\r\nb\r\nc\r\n"),
        (b"S: x\n\n", b"S: x\r\n\r\n"),
        (b"S: x\n\n\n\n", b"S: x\r\n\r\n\r\n\r\n"),
        (b"S: x", b"S: x\r\n"),
        (b"S: x\n\n.\n..x\n.", b"S: x\r\n\r\n.\r\n..x\r\n.\r\n"),  # no dot-stuffing here
        (b"S: x\n\nFrom me\n>From you\n", b"S: x\r\n\r\nFrom me\r\n>From you\r\n"),
    ],
)
def test_line_ends_become_crlf(raw: bytes, wire: bytes) -> None:
    assert build(raw, set_from_header="off") == wire


def test_empty_message_is_just_the_generated_headers() -> None:
    out = build(b"", set_date_header="auto", set_msgid_header="auto")
    assert out.count(b"\r\n") == 3 and out.startswith(b"From: ") and out.endswith(b">\r\n")
    assert build(b"", set_from_header="off") == b""


def test_message_without_headers_gets_headers_glued_to_its_first_line() -> None:
    assert build(b"just a body line without headers") == (
        b"From: me@example.org\r\njust a body line without headers\r\n"
    )


def test_long_lines_and_eight_bit_bytes_untouched() -> None:
    body = b"q" * 2500 + b"\n\xc3\xa9\xff\x80\n"
    assert build(b"S: x\n\n" + body, set_from_header="off") == (
        b"S: x\r\n\r\n" + body.replace(b"\n", b"\r\n")
    )


def test_body_converted_in_slices_without_splitting_crlf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message, "_CHUNK", 4)
    body = b"abc\r\ndef\r\r\r\nghi\njk\r\n\r\nxyz\rq\n\r\r"
    expected = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    assert build(b"S: x\n\n" + body, set_from_header="off") == b"S: x\r\n\r\n" + expected
    crlf_only = b"ab\r\ncd\r\n"
    assert build(b"S: x\n\n" + crlf_only, set_from_header="off") == b"S: x\r\n\r\n" + crlf_only


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(DataError) as caught:
        build(b"S: x\n\nbinary\0data\n")
    assert caught.value.exit_code == ExitCode.DATAERR and "BINARYMIME" in caught.value.message
    check_message(b"fine")


def test_is_eightbit() -> None:
    assert not is_eightbit(b"plain\r\n")
    assert is_eightbit(b"caf\xc3\xa9")
    assert is_eightbit(bytearray(b"\x80"))


# -- Date and Message-ID -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "when", "text"),
    [
        ("UTC", 1_795_192_499, "Fri, 20 Nov 2026 16:34:59 +0000"),
        ("Asia/Kolkata", 1_795_192_499, "Fri, 20 Nov 2026 22:04:59 +0530"),
        ("America/St_Johns", 1_795_192_499, "Fri, 20 Nov 2026 13:04:59 -0330"),
        ("America/St_Johns", 1_783_000_000, "Thu, 02 Jul 2026 11:16:40 -0230"),
        ("Europe/Berlin", 1_767_485_000, "Sun, 04 Jan 2026 01:03:20 +0100"),
    ],
)
def test_date_format(timezone: Any, tz: str, when: int, text: str) -> None:
    timezone(tz)
    assert format_date(when + 0.9) == text


def test_message_id_shapes() -> None:
    calls: list[int] = []

    def host() -> str:
        calls.append(1)
        return "vm.example"

    with_at = make_message_id("me@example.org", host)
    assert with_at.startswith("<") and with_at.endswith(".me@example.org>")
    assert len(with_at.split(".", 1)[0]) == 33 and not calls  # host looked up only when needed
    assert make_message_id("local", host).endswith(".local@vm.example>") and calls
    assert make_message_id("", "h").endswith(".@h>")
    assert make_message_id("a@b", "h") != make_message_id("a@b", "h")


def test_canonical_hostname_is_a_name() -> None:
    name = canonical_hostname()
    assert name and " " not in name


# -- whole-message properties --------------------------------------------------------------------


def _body_of(raw: bytes, scan: HeaderScan) -> bytes:
    return raw[scan.header_end :]


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=400)
    | st.lists(
        st.sampled_from(
            [b"To: a@x", b"Bcc: b@x", b"From: c@x", b"\r", b"\n", b"\r\n", b" ", b"x", b"\0"]
        )
    ).map(b"".join),
    read_recipients=st.booleans(),
    undisclosed=st.booleans(),
)
def test_build_message_properties(raw: bytes, read_recipients: bool, undisclosed: bool) -> None:
    scan = scan_headers(raw, read_recipients=read_recipients)
    try:
        out = bytes(
            build_message(
                raw,
                scan,
                envelope_from="me@example.org",
                full_name=None,
                set_from_header="auto",
                set_date_header="auto",
                set_msgid_header="auto",
                remove_bcc_headers=True,
                undisclosed_recipients=undisclosed,
                now=NOW,
                hostname="h",
            )
        )
    except DataError:
        assert b"\0" in raw
        return
    assert out.endswith(b"\r\n")
    assert b"\n" not in out.replace(b"\r\n", b"")  # no bare LF anywhere
    body = _body_of(raw, scan)
    converted = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\n"):
        converted += b"\r\n"
    assert out.endswith(converted)
    if scan.header_end < len(raw):
        # the original blank line sits just before the body
        assert out[: len(out) - len(converted)].endswith(b"\r\n\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_scan_never_fails(raw: bytes, read_recipients: bool) -> None:
    scan = scan_headers(raw, read_recipients=read_recipients)
    assert 0 <= scan.header_end <= len(raw)
    for address in scan.recipients:
        assert "\n" not in address and "\r" not in address and "\0" not in address


# -- cost ----------------------------------------------------------------------------------------


def test_importing_message_stays_light() -> None:
    """The sendmail hot path: no email parser (12 ms), and nothing beyond relayd's own modules."""
    code = (
        "import sys, relayd.errors\n"
        "before = set(sys.modules)\n"
        "import relayd.submission.message\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] == 'email'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    added, email_modules = result.stdout.split("\n")[:2]
    assert email_modules == ""
    assert set(added.split()) <= {
        "relayd.submission",
        "relayd.submission.address_fields",  # the address tokenizer, split from headers
        "relayd.submission.addresses",
        "relayd.submission.aliases",
        "relayd.submission.headers",
        "relayd.submission.message",
        "relayd.text",  # msmtp's "_" for controls in addresses; stdlib-free, nothing at import
    }


def test_big_message_costs_one_output_buffer() -> None:
    """SPEC §6: a message is submitted with at most twice its size in memory."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n"
    for raw in (b"To: a@x\nSubject: big\n\n" + line * 200_000, line * 200_000):
        tracemalloc.start()
        try:
            out = build_message(
                raw,
                scan_headers(raw, read_recipients=True),
                envelope_from="me@example.org",
                full_name=None,
                set_from_header="auto",
                set_date_header="auto",
                set_msgid_header="auto",
                remove_bcc_headers=True,
                undisclosed_recipients=False,
                now=NOW,
                hostname="h",
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(out) > len(raw)
        assert peak < 1.1 * len(raw) + 4 * 2**20


def test_all_header_message_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message, "_CHUNK", 5)
    raw = b"X: 1\r\nBcc: b\r\n y\r\nlong line without end"
    assert build(raw) == b"From: me@example.org\r\nX: 1\r\nlong line without end\r\n"


def test_ten_kilobyte_message_is_cheap() -> None:
    headers = b"".join(
        [
            b"From: John Doe <john@example.org>\n",
            b"To: Alice <alice@example.com>, bob@example.net\n",
            b"Cc: carol@example.com\n",
            b"Subject: A test message\n",
            b"MIME-Version: 1.0\n",
            b"Content-Type: text/plain; charset=utf-8\n",
        ]
    )
    raw = headers + b"\n" + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 175
    assert 10_000 < len(raw) < 11_000
    best = float("inf")
    for _ in range(50):
        start = time.perf_counter()
        build(raw, read_recipients=True, set_date_header="auto", set_msgid_header="auto")
        best = min(best, time.perf_counter() - start)
    assert best < 0.001


def test_good_addresses_are_remembered_within_a_bound_and_bad_ones_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listener checks the same addresses at MAIL/RCPT and when composing: one that passed
    is not checked again; at most _GOOD_MAX are kept; a bad one fails every time."""
    from relayd.submission import addresses

    monkeypatch.setattr(addresses, "_good", set())
    monkeypatch.setattr(addresses, "_GOOD_MAX", 3)
    for address in ("a@x", "b@x", "c@x", "d@x"):
        check_address(address)
    assert addresses._good == {"d@x"}  # cleared when full, then kept
    for _ in range(2):
        with pytest.raises(DataError):
            check_address("a b@x")
    assert "a b@x" not in addresses._good

    def checks_again(address: str, allow_empty: bool) -> None:
        raise AssertionError(f"{address} checked again")

    monkeypatch.setattr(addresses, "_check", checks_again)
    check_address("d@x")
