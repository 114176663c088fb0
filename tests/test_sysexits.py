"""ExitCode keeps the IntEnum surface relayd relies on, without importing enum."""

from __future__ import annotations

import os
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.submission.headers import next_notable_line
from relayd.sysexits import ExitCode

SYSEXITS_H = {
    "OK": 0,
    "USAGE": 64,
    "DATAERR": 65,
    "NOINPUT": 66,
    "NOUSER": 67,
    "NOHOST": 68,
    "UNAVAILABLE": 69,
    "SOFTWARE": 70,
    "OSERR": 71,
    "OSFILE": 72,
    "CANTCREAT": 73,
    "IOERR": 74,
    "TEMPFAIL": 75,
    "PROTOCOL": 76,
    "NOPERM": 77,
    "CONFIG": 78,
}


def test_members_are_the_sysexits_values_in_order() -> None:
    assert [(code.name, int(code)) for code in ExitCode] == list(SYSEXITS_H.items())
    assert len(ExitCode) == len(SYSEXITS_H)
    assert os.EX_TEMPFAIL == ExitCode.TEMPFAIL == 75


def test_lookup_by_value_gives_the_member_and_refuses_others() -> None:
    assert ExitCode(75) is ExitCode.TEMPFAIL
    assert ExitCode(ExitCode.CONFIG) is ExitCode.CONFIG
    for bad in (1, 63, 79, -1):
        with pytest.raises(ValueError, match="is not a valid ExitCode"):
            ExitCode(bad)


def test_names_text_and_pickling() -> None:
    code = ExitCode.NOPERM
    assert (code.name, code.value, code.ex_name) == ("NOPERM", 77, "EX_NOPERM")
    assert (str(code), f"{code}", f"{code:>4}", repr(code)) == (
        "77",
        "77",
        "  77",
        "<ExitCode.NOPERM: 77>",
    )
    assert pickle.loads(pickle.dumps(code)) is code
    assert isinstance(code, int) and code + 1 == 78


# The regular expression the header reader used before it went without re.
NOTABLE = re.compile(rb"^\r*[DdMmFfTtCcBbRr\n]", re.MULTILINE)
LINE_BYTES = st.sampled_from([b"\r", b"\n", b"D", b"m", b"x", b"R", b" ", b":", b"\t", b"b"])


@given(st.lists(LINE_BYTES, max_size=40).map(b"".join), st.data())
def test_next_notable_line_finds_what_the_regex_found(raw: bytes, data: st.DataObject) -> None:
    starts = [0] + [i + 1 for i, byte in enumerate(raw) if byte == 0x0A and i + 1 <= len(raw)]
    pos = data.draw(st.sampled_from(starts))
    found = NOTABLE.search(raw, pos)
    assert next_notable_line(raw, pos) == (found.start() if found else -1)
