"""The one EHLO capability model (relayd.delivery.ehlo) and the one AUTH method table.

msmtp 1.8.23's reading, case by case (tests/test_serverinfo.py runs the same quirks through both
programs' --serverinfo), SIZE against the C library's own strtol, and what delivery does with
each result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.accounts import values
from relayd.delivery import auth
from relayd.delivery.auth_methods import IMPLEMENTED, KNOWN, METHODS
from relayd.delivery.ehlo import Capabilities, parse
from relayd.delivery.result import DeliveryResult, Disposition
from relayd.sysexits import ExitCode
from tests.test_delivery_session import BODY, account, message, send
from tests.test_serverinfo import CraftedServer, Script

LONG_MAX, LONG_MIN = 2**63 - 1, -(2**63)


def caps(*lines: str) -> Capabilities:
    """The capabilities of an EHLO reply with these lines after the domain line."""
    return parse(("mx.test", *lines))


# -- upper-casing: ASCII only ----------------------------------------------------------------------


def test_keywords_in_any_ascii_case() -> None:
    lower = caps("starttls", "Dsn", "pipelining", "etrn", "8bitmime", "smtputf8")
    assert lower == caps("STARTTLS", "DSN", "PIPELINING", "ETRN", "8BITMIME", "SMTPUTF8")
    flags = (lower.starttls, lower.dsn, lower.pipelining, lower.etrn)
    assert all(flags) and lower.eightbitmime and lower.smtputf8


@pytest.mark.parametrize("line", ["\u017ftarttls", "\u017fTARTTLS"])
def test_long_s_is_not_an_s(line: str) -> None:
    # str.upper() turns U+017F into "S"; C's toupper leaves it, so msmtp sees no STARTTLS.
    assert line.upper() == "STARTTLS"
    assert caps(line) == Capabilities()


@pytest.mark.parametrize("line", ["p\u0131pel\u0131n\u0131ng", "\ufb06arttls"])
def test_other_letters_python_upper_cases_into_ascii(line: str) -> None:
    # The dotless i and the st ligature become ASCII under str.upper(), not under toupper.
    assert line.upper() in ("PIPELINING", "STARTTLS")
    assert caps(line) == Capabilities()


def test_the_domain_line_is_read_too() -> None:
    assert parse(("STARTTLS.example",)).starttls
    assert parse(("dsn.example",)).dsn
    assert parse(("mx.example",)) == Capabilities()


def test_keywords_are_prefixes() -> None:
    assert caps("STARTTLSX", "DSNX", "PIPELININGS", "ETRNX") == Capabilities(
        starttls=True, dsn=True, pipelining=True, etrn=True
    )
    assert caps(" STARTTLS", "X-DSN") == Capabilities()


def test_a_nul_ends_the_line() -> None:
    assert caps("SIZE 100\0junk", "AUTH LOGIN\0 PLAIN") == Capabilities(
        size=100, auth=frozenset({"LOGIN"})
    )
    assert caps("\0STARTTLS") == Capabilities()


# -- SIZE: strtol with msmtp's checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "size"),
    [
        ("SIZE 52428800", 52428800),
        ("size 2000", 2000),
        ("SIZE 0", 0),
        ("SIZE -0", 0),
        ("SIZE +5", 5),
        ("SIZE5", 5),
        ("SIZE \t\v\f 7", 7),
        ("SIZE 9223372036854775807", LONG_MAX),
        # Not a valid SIZE: as if there were none.
        ("SIZE", None),
        ("SIZE ", None),
        ("SIZE 99999999999999999999", None),  # beyond a C long: strtol's ERANGE
        ("SIZE 9223372036854775808", None),
        ("SIZE -5", None),
        ("SIZE -99999999999999999999", None),
        ("SIZE 12abc", None),
        ("SIZE 12 ", None),
        ("SIZE 0x10", None),
        ("SIZE abc", None),
        ("SIZE \u0663", None),  # str.isdigit() says yes; C's strtol does not
        ("SIZE \u00a05", None),  # no C white space
    ],
)
def test_size(line: str, size: int | None) -> None:
    assert caps(line).size == size


@pytest.mark.parametrize(
    ("second", "size"),
    [
        ("SIZE -5", -5),
        ("SIZE 12abc", 12),
        ("SIZE abc", 0),
        ("SIZE 99999999999999999999", LONG_MAX),
        ("SIZE -99999999999999999999", LONG_MIN),
        ("SIZE 200", 200),
    ],
)
def test_a_later_size_line_overwrites_the_number(second: str, size: int) -> None:
    # msmtp's flag stays set from the first, valid line; its number is strtol's of the last.
    assert caps("SIZE 100", second).size == size


def test_an_invalid_size_before_a_valid_one() -> None:
    assert caps("SIZE abc", "SIZE 100").size == 100
    assert caps("SIZE 100", "SIZE abc", "SIZE 7").size == 7


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library to compare with")
    libc = ctypes.CDLL(name, use_errno=True)
    libc.strtol.restype = ctypes.c_long
    libc.strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    return libc


def c_size(argument: str) -> int | None:
    """What msmtp's smtp_init makes of `SIZE<argument>`, with the C library's strtol."""
    libc = _libc()
    text = argument.encode()
    end = ctypes.c_char_p()
    ctypes.set_errno(0)
    value: int = libc.strtol(text, ctypes.byref(end), 10)
    overflow = value == LONG_MAX and ctypes.get_errno() == errno.ERANGE
    valid = text != b"" and end.value == b"" and value >= 0 and not overflow
    return value if valid else None


@given(
    st.text(alphabet=" \t\n\v\f\r+-0123456789xa\u0663\u00a0", max_size=12)
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
)
def test_size_is_read_as_c_strtol_reads_it(argument: str) -> None:
    assert caps(f"SIZE{argument}").size == c_size(argument)


# -- AUTH -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "methods"),
    [
        ("AUTH PLAIN LOGIN", {"PLAIN", "LOGIN"}),
        ("auth=login plain", {"PLAIN", "LOGIN"}),  # the broken `AUTH=` form, lower-cased
        ("AUTH SCRAM-SHA-1-PLUS", {"SCRAM-SHA-1"}),  # found by substring, as msmtp does
        ("AUTH XPLAINX", {"PLAIN"}),
        ("AUTH ", set()),
        ("AUTH FOO", set()),
        ("AUTH \u017fcram-sha-256 plain", {"PLAIN"}),
    ],
)
def test_auth_methods(line: str, methods: set[str]) -> None:
    assert caps(line).auth == frozenset(methods)


@pytest.mark.parametrize("line", ["AUTH", "AUTHPLAIN", "AUTH-PLAIN", "X AUTH PLAIN"])
def test_no_auth_line(line: str) -> None:
    assert caps(line).auth is None


def test_auth_lines_add_up() -> None:
    assert caps("AUTH PLAIN", "AUTH=LOGIN").auth == frozenset({"PLAIN", "LOGIN"})


# -- what delivery does with it -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "limit"),
    [
        (("SIZE 1000",), 1000),
        (("SIZE 0",), None),  # RFC 1870: no limit
        (("SIZE 99999999999999999999",), None),  # msmtp: no SIZE (it never checks, either)
        (("SIZE -5",), None),
        (("SIZE 12abc",), None),
        ((), None),
        (("SIZE 100", "SIZE -5"), None),  # the quirk's number is no limit
        (("SIZE 100", "SIZE 12abc"), 12),  # what --serverinfo reports as the maximum
    ],
)
def test_size_limit(lines: tuple[str, ...], limit: int | None) -> None:
    assert caps(*lines).size_limit == limit


def test_nothing_parsed_is_what_a_helo_fallback_leaves() -> None:
    assert parse(()) == Capabilities()


# -- the AUTH method table ------------------------------------------------------------------------


def test_the_table_lists_msmtps_methods_in_its_serverinfo_order() -> None:
    assert KNOWN == (
        "PLAIN",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "EXTERNAL",
        "GSSAPI",
        "CRAM-MD5",
        "DIGEST-MD5",
        "LOGIN",
        "NTLM",
        "OAUTHBEARER",
        "XOAUTH2",
    )
    assert set(KNOWN) - IMPLEMENTED == {"GSSAPI", "DIGEST-MD5", "NTLM"}
    assert set(METHODS) >= IMPLEMENTED


def test_msmtprc_accepts_exactly_the_methods_msmtp_knows() -> None:
    # accounts.values checks `auth` with msmtp's own (lower-case) list: the same methods.
    assert {method.upper() for method in values.AUTH_METHODS} == set(KNOWN)


@pytest.mark.parametrize("method", KNOWN)
def test_a_configured_method_relayd_lacks_fails_as_not_compiled_in(method: str) -> None:
    failure = auth.not_compiled_in(method)
    assert (failure is None) is (method in IMPLEMENTED)
    if failure is not None:
        assert failure.error == f"support for authentication method {method} is not compiled in"


@pytest.mark.parametrize("tls", [True, False])
def test_every_automatic_choice_is_implemented(tls: bool) -> None:
    # Offered everything, the automatic choice is msmtp's first preference, one relayd has.
    assert auth.choose("", frozenset(KNOWN), tls) in IMPLEMENTED


# -- the session goes by it -----------------------------------------------------------------------


def deliver_to(ehlo: list[str], data: bytes = BODY, **settings: Any) -> DeliveryResult:
    with CraftedServer(Script(greeting=["220 sink.test ESMTP"], ehlo=ehlo)) as server:
        (result,) = send(account(port=server.port, **settings), message(data=data))
    return result


def test_a_long_s_starttls_is_no_starttls_for_delivery() -> None:
    result = deliver_to(["250-x", "250 \u017ftarttls"], tls=True, tls_starttls=True)
    assert (result.disposition, result.exit_code, result.error) == (
        Disposition.HOLD,
        ExitCode.UNAVAILABLE,
        "the server does not support TLS via the STARTTLS command",
    )


@pytest.mark.parametrize(
    "ehlo",
    [
        ["250-x", "250 SIZE 99999999999999999999"],
        ["250-x", "250 SIZE -5"],
        ["250-x", "250 SIZE 12abc"],
        ["250-x", "250-SIZE 100", "250 SIZE -5"],
    ],
    ids=["overflow", "negative", "trailing-junk", "negative-after-valid"],
)
def test_no_valid_size_means_no_limit(ehlo: list[str]) -> None:
    # msmtp sends whatever the SIZE line says (it never checks); relayd has no limit to check.
    result = deliver_to(ehlo, data=BODY + b"x" * 1000 + b"\r\n")
    assert (result.disposition, result.error) == (Disposition.SENT, None)


def test_the_size_limit_is_the_one_serverinfo_reports() -> None:
    result = deliver_to(["250-x", "250-SIZE 100", "250 SIZE 12abc"])
    assert result.disposition is Disposition.FAIL
    size = len(BODY)
    assert result.error == (
        f"the mail is larger than the server's maximum message size ({size} > 12 bytes)"
    )
