"""relayd.text: the one sanitiser, each policy by name, and the display of header fields."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.text import display_headers, readable, replace_stray_surrogates, sanitize

if TYPE_CHECKING:
    from relayd.text import Policy

# What a hostile server reply, header or file may hold to drive a terminal: CSI as one C1 byte
# (`\x9b31m` turns text red), NEL, a right-to-left override (reorders what follows), the
# Unicode line and paragraph separators, an isolate, a left-to-right mark, the Arabic letter
# mark, a tag character (Cf beyond the BMP) and an ESC sequence that clears the screen.
HOSTILE = "a\x9b31m b\x85c \u202ed\u2028e\u2029f \u2066g\u200eh\u061ci \U000e0041 \x1b[2J"
HOSTILE_ESCAPED = (
    "a\\x9b31m b\\x85c \\u202ed\\u2028e\\u2029f \\u2066g\\u200eh\\u061ci \\U000e0041 \\x1b[2J"
)


def assert_harmless(shown: str) -> None:
    """Nothing in `shown` a terminal could obey: every character printable, or a line end."""
    assert [c for c in shown if not c.isprintable() and c != "\n"] == []


def test_log_is_msmtps_sanitize_string() -> None:
    assert sanitize("a\x00\x1f\x7f\x80é'") == "a???\x80é'"
    assert sanitize("a\x00\x1f\x7f\x80é'", "log") == "a???\x80é'"
    assert sanitize("it's\ta \x9b", "log-field") == "it?s?a \x9b"


def test_terminal_escapes_every_control_format_and_separator_character() -> None:
    assert sanitize(HOSTILE, "terminal") == HOSTILE_ESCAPED
    assert sanitize("\t\r\n\x00\x7f\xa0\u3000\udc80\ue000", "terminal") == (
        "\\x09\\x0d\\x0a\\x00\\x7f\\xa0\\u3000\\udc80\\ue000"
    )


def test_terminal_keeps_printable_text_as_it_is() -> None:
    readable_text = "Grüße, 東京 — “quoted” \\x1b 🙂 ok"
    assert sanitize(readable_text, "terminal") is readable_text


def test_json_escapes_what_the_terminal_escapes_and_stays_exact() -> None:
    value = {"reply": HOSTILE, "bytes": "\udc80", "plain": "Grüße"}
    shown = sanitize(json.dumps(value, ensure_ascii=False), "json")
    assert_harmless(shown)
    assert "\\u009b31m" in shown and "\\u202e" in shown and "\\udb40\\udc41" in shown
    assert "Grüße" in shown  # UTF-8 stays readable, as postqueue -j prints it
    assert json.loads(shown) == value


@given(st.dictionaries(st.text(), st.text()))
def test_json_round_trips_any_text(value: dict[str, str]) -> None:
    shown = sanitize(json.dumps(value, ensure_ascii=False), "json")
    assert_harmless(shown)
    assert json.loads(shown) == value


def test_header_is_one_line_without_controls() -> None:
    assert sanitize(" a\r\n\tb\x00c\x85d\u2028e\u2029f  g ", "header") == "a b c d e f g"
    # A surrogate escape stands for an input byte and goes out as that byte; others cannot.
    assert sanitize("x\udc80y\ud800z", "header") == "x\udc80y\ufffdz"


def test_address_is_msmtps_underscore() -> None:
    assert sanitize("a b\tc\x7fd\x00é", "address") == "a_b_c_d_é"


def test_surrogates() -> None:
    assert replace_stray_surrogates("a\udc80\udfff\ud800") == "a\udc80\ufffd\ufffd"
    assert readable("caf\udce9 Gr\udcc3\udcbc\udcc3\udc9fe") == "caf\ufffd Grüße"
    assert readable("x\ud800 \udcc3\udcbc") == "x\ufffd ü"  # a stray one spoils nothing else


@pytest.mark.parametrize("policy", ["log", "log-field", "terminal", "json", "header", "address"])
def test_every_policy_keeps_plain_ascii(policy: Policy) -> None:
    assert sanitize("<plain-text,550/5.1.1>", policy) == "<plain-text,550/5.1.1>"


def test_display_headers_leaves_controls_to_the_output() -> None:
    data = b"Subject: =?utf-8?q?=C2=9B31m_=E2=80=AE?=\r\nX-Folded: a\r\n b\r\n\r\nbody"
    assert display_headers(data) == [("Subject", "\x9b31m \u202e"), ("X-Folded", "a b")]
