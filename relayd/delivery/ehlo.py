"""The one EHLO/LHLO capability model: a reply's lines read with msmtp 1.8.23's rules.

msmtp's smtp_init reads every line of the reply, the first (domain) line included, upper-cased
in ASCII only (C's toupper: U+017F, the long s that Python's str.upper() makes an `S`, stays as
it is), and as a C string (a NUL ends it). A keyword counts when the line starts with it; SIZE
is read with strtol; AUTH methods are found anywhere after `AUTH ` or `AUTH=` by substring, so
`SCRAM-SHA-1-PLUS` also offers SCRAM-SHA-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.delivery.auth_methods import KNOWN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

_LONG_MAX = 2**63 - 1
_LONG_MIN = -(2**63)
_ASCII_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}
_C_SPACE = " \t\n\v\f\r"
# Prefixes looked for (msmtp's else-if chain; none is a prefix of another, so order is free).
# 8BITMIME and SMTPUTF8 are relayd's: msmtp 1.8.23 reads neither.
_FLAGS = ("STARTTLS", "DSN", "PIPELINING", "ETRN", "8BITMIME", "SMTPUTF8")


@dataclass(frozen=True)
class Capabilities:
    """What an EHLO/LHLO reply offers; the default is what a HELO fallback leaves (nothing).

    `size` is what msmtp keeps: None when no SIZE line was valid; else strtol's value of the
    *last* SIZE line, even an invalid one after a valid one (msmtp sets its flag once and
    overwrites the number: `--serverinfo` then shows e.g. `SIZE -5`). `auth` is None without
    an AUTH line, else the known methods it names (maybe none).
    """

    starttls: bool = False
    dsn: bool = False
    pipelining: bool = False
    etrn: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    size: int | None = None
    auth: frozenset[str] | None = None

    @property
    def size_limit(self) -> int | None:
        """The largest message relayd sends (msmtp never checks): a positive SIZE; no limit
        for SIZE 0 (RFC 1870: none), no valid SIZE, or the negative value of the quirk."""
        return self.size if self.size is not None and self.size > 0 else None


def _strtol(text: str) -> tuple[int, str, bool]:
    """C's strtol(text, &end, 10): (value, the rest after the number, overflowed).

    Leading C white space and a sign are taken; only ASCII digits count. Without digits the
    value is 0 and the rest is all of `text`; beyond a C long it is LONG_MAX or LONG_MIN.
    """
    i = 0
    while i < len(text) and text[i] in _C_SPACE:
        i += 1
    negative = text[i : i + 1] == "-"
    if text[i : i + 1] in ("+", "-"):
        i += 1
    start = i
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    if i == start:
        return 0, text, False
    value = -int(text[start:i]) if negative else int(text[start:i])
    if value > _LONG_MAX:
        return _LONG_MAX, text[i:], True
    if value < _LONG_MIN:
        return _LONG_MIN, text[i:], True
    return value, text[i:], False


def parse(lines: Iterable[str]) -> Capabilities:
    """The capabilities of an EHLO/LHLO reply: `lines` are its lines' text after the code."""
    flags: set[str] = set()
    size: int | None = None
    valid_size = False
    auth: set[str] | None = None
    for raw in lines:
        line = raw.split("\0", 1)[0].translate(_ASCII_UPPER)
        if line.startswith("SIZE"):
            # No number, trailing text, a negative one or one beyond a C long: no SIZE. The
            # number is kept anyway, as msmtp keeps it (see Capabilities).
            argument = line[4:]
            size, rest, overflow = _strtol(argument)
            valid_size = valid_size or (
                argument != "" and rest == "" and size >= 0 and not overflow
            )
        elif line.startswith(("AUTH ", "AUTH=")):
            auth = (auth or set()) | {method for method in KNOWN if method in line[5:]}
        else:
            flags.update(flag for flag in _FLAGS if line.startswith(flag))
    return Capabilities(
        starttls="STARTTLS" in flags,
        dsn="DSN" in flags,
        pipelining="PIPELINING" in flags,
        etrn="ETRN" in flags,
        eightbitmime="8BITMIME" in flags,
        smtputf8="SMTPUTF8" in flags,
        size=size if valid_size else None,
        auth=frozenset(auth) if auth is not None else None,
    )
