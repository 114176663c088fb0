"""A submitted message made exactly what msmtp 1.8.23 would send: headers added/removed, CRLF."""

from __future__ import annotations

import os
import time

from relayd.errors import DataError
from relayd.submission.addresses import check_address, needs_smtputf8, smtp_reverse_path
from relayd.submission.aliases import expand_aliases
from relayd.submission.headers import (
    HeaderScan,
    parse_recipient_argument,
    parse_recipient_arguments,
    scan_headers,
)

__all__ = [
    "HeaderScan",
    "build_message",
    "canonical_hostname",
    "check_address",
    "check_message",
    "expand_aliases",
    "format_date",
    "is_eightbit",
    "make_message_id",
    "needs_smtputf8",
    "parse_recipient_argument",
    "parse_recipient_arguments",
    "scan_headers",
    "smtp_reverse_path",
    "wire_chunks",
]

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the hot path
if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, Literal

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # time.struct_time.tm_wday order
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_CHUNK = 1 << 20  # build_message converts a whole body in slices of this size


def format_date(now: float) -> str:
    """msmtp's Date: value: local time, English names, numeric offset (`Tue, 04 Nov 2026 …`)."""
    local = time.localtime(now)
    offset = (local.tm_gmtoff or 0) // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{_DAYS[local.tm_wday]}, {local.tm_mday:02d} {_MONTHS[local.tm_mon - 1]} "
        f"{local.tm_year:04d} {local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
        f"{sign}{min(hours, 99):02d}{minutes:02d}"
    )


def make_message_id(envelope_from: str, hostname: str | Callable[[], str]) -> str:
    """msmtp's Message-ID: `<HEX32.FROM>`, or `<HEX32.FROM@HOST>` when FROM has no `@`.

    msmtp's 32 hex digits are an MD5 of the time, boot time, pid and host name; relayd uses 16
    random bytes, which look the same and cannot collide in practice.
    """
    unique = os.urandom(16).hex()
    if "@" in envelope_from:
        return f"<{unique}.{envelope_from}>"
    host = hostname() if callable(hostname) else hostname
    return f"<{unique}.{envelope_from}@{host}>"


def canonical_hostname() -> str:
    """The host's canonical name (gethostname + AI_CANONNAME), as msmtp puts in Message-IDs."""
    import socket  # only needed for a Message-ID whose envelope-from lacks "@"

    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except OSError:
        return name
    return next((info[3] for info in infos if info[3]), name)


def check_message(raw: bytes) -> None:
    """Refuse (exit 65) a message relayd cannot promise to deliver: one with NUL bytes.

    SMTP can carry NUL only with BINARYMIME (RFC 3030), and at submission time the server is
    unknown; msmtp would send the bytes and leave it to the server.
    """
    if b"\0" in raw:
        raise DataError(
            "the message contains NUL bytes, which SMTP cannot carry without BINARYMIME"
        )


def is_eightbit(data: bytes | bytearray) -> bool:
    """True if any byte is ≥ 0x80 (worth BODY=8BITMIME when the server offers it)."""
    return not data.isascii()


_REMOVAL_PATTERNS: dict[tuple[str, ...], re.Pattern[bytes]] = {}


def _removal_pattern(names: tuple[str, ...]) -> re.Pattern[bytes]:
    """A field named `name:` (any case) at a line start, with its folded continuation lines."""
    pattern = _REMOVAL_PATTERNS.get(names)
    if pattern is None:
        import re  # only messages that lose a field pay for re (and enum) at start-up

        alternatives = "|".join(names).encode()
        pattern = re.compile(
            rb"^(?:" + alternatives + rb"):[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*",
            re.IGNORECASE | re.MULTILINE,
        )
        _REMOVAL_PATTERNS[names] = pattern
    return pattern


def _header_section(raw: bytes, end: int, remove: tuple[str, ...]) -> bytes:
    """The original header block as msmtp sends it, LF line ends: CRs dropped, fields removed.

    For a message without an empty line (all header) that needs neither, this is `raw` itself.
    """
    header = raw[:end]
    if b"\r" in header:
        header = header.replace(b"\r", b"")  # msmtp ignores every CR while reading headers
    if remove and _has_field(header, remove):
        header = _removal_pattern(remove).sub(b"", header)
    return header


def _has_field(header: bytes, names: tuple[str, ...]) -> bool:
    """Whether a field named in `names` (any ASCII case) starts a line of `header`."""
    lowered = header.lower()
    for name in names:
        field = name.encode() + b":"
        if lowered.startswith(field) or b"\n" + field in lowered:
            return True
    return False


def _crlf(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`pieces` (one byte stream cut anywhere) with LF → CRLF where the CR is missing, and a
    CRLF after an unterminated last line. Trailing CRs wait for the next piece, so a CRLF split
    between two pieces stays one line end; nothing is held beyond one piece."""
    carry = b""
    last = 0x0A  # the last byte seen; an empty stream needs no line end
    for piece in pieces:
        if not piece:
            continue
        last = piece[-1]
        if carry:
            piece, carry = carry + piece, b""
        end = len(piece)
        while end and piece[end - 1] == 0x0D:
            end -= 1
        if end < len(piece):
            piece, carry = piece[:end], piece[end:]
        if piece.count(b"\n") != piece.count(b"\r\n"):
            piece = piece.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if piece:
            yield piece
    if carry:
        yield carry
    if last != 0x0A:
        yield b"\r\n"


def _checked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`pieces`, each refused (check_message) before it is passed on."""
    for piece in pieces:
        check_message(piece)
        yield piece


def build_message(raw: bytes, scan: HeaderScan, **options: Any) -> bytearray:
    """The bytes msmtp 1.8.23 would put on the wire for `raw`, whole; `options` are
    wire_chunks'. The body is converted a slice at a time: one output buffer, not three."""
    end = scan.header_end
    out = bytearray()
    for piece in wire_chunks(raw[:end], _slices(raw, end), scan, **options):
        out += piece
    return out


def wire_chunks(
    head: bytes,
    rest: Iterable[bytes],
    scan: HeaderScan,
    *,
    envelope_from: str,
    full_name: str | None,
    set_from_header: Literal["auto", "on", "off"],
    set_date_header: Literal["auto", "off"],
    set_msgid_header: Literal["auto", "off"],
    remove_bcc_headers: bool,
    undisclosed_recipients: bool,
    now: float,
    hostname: str | Callable[[], str],
) -> Iterator[bytes]:
    """The bytes msmtp 1.8.23 would put on the wire (before dot-stuffing) for the message
    `head` + `rest`, in pieces: `head` holds the whole header block (scanned into `scan`) and
    maybe the start of the body; `rest` is the remainder of the input, in pieces cut anywhere,
    read only as the result is. Problems with the command line or the head (a bad full name,
    NUL in the head) raise here; NUL later in the body raises while iterating.

    Generated headers come first, in msmtp's order: From: (set_from_header on, or auto and no
    From address), `To: undisclosed-recipients:;`, Date:, Message-ID:. The original header
    block follows with every CR dropped and, msmtp's way, the fields it replaces removed (all
    From: when a From: was generated; To:/Cc: with undisclosed_recipients; Bcc: with
    remove_bcc_headers or undisclosed_recipients — never Resent-Bcc:). The body is unchanged
    except LF → CRLF where the CR is missing, and a CRLF after a last line without one. No
    blank line is ever added. `envelope_from` is the account's from address as msmtp holds it
    ("" for `-f <>`); `hostname` (or a function giving it) is needed only for a Message-ID
    whose envelope-from lacks `@`.

    Differences from msmtp 1.8.23, both msmtp bugs: a CR that ends a 1023-byte slice of a
    long body line is kept (msmtp drops it), and a last line without a newline whose length is
    a multiple of 1023 gets its CRLF (msmtp sends none and the server waits forever).
    """
    check_message(head)
    lines: list[str] = []
    add_from = set_from_header == "on" or (set_from_header == "auto" and not scan.has_from)
    if add_from:
        if full_name is not None and any(char in full_name for char in "\r\n\0"):
            raise DataError(f"invalid full name {full_name!r}: contains a line break or NUL")
        lines.append(
            f"From: {full_name} <{envelope_from}>"
            if full_name is not None
            else f"From: {envelope_from}"
        )
    if undisclosed_recipients:
        lines.append("To: undisclosed-recipients:;")
    if set_date_header == "auto" and not scan.has_date:
        lines.append(f"Date: {format_date(now)}")
    if set_msgid_header == "auto" and not scan.has_message_id:
        lines.append(f"Message-ID: {make_message_id(envelope_from, hostname)}")
    generated = "".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape")

    remove: list[str] = []
    if add_from:
        remove.append("from")
    if undisclosed_recipients:
        remove += ["to", "cc"]
    if remove_bcc_headers or undisclosed_recipients:
        remove.append("bcc")
    header = _header_section(head, scan.header_end, tuple(remove))
    return _wire(generated, header, head[scan.header_end :], rest)


def _wire(
    generated: bytes, header: bytes, body_start: bytes, rest: Iterable[bytes]
) -> Iterator[bytes]:
    """The generated and original headers, then the body converted as it is read."""
    if generated:
        yield generated
    yield from _crlf(_slices(header, 0))
    yield from _crlf(_body(body_start, rest))


def _slices(data: bytes, start: int) -> Iterator[bytes]:
    """data[start:] in slices of _CHUNK bytes (the whole of it when that is one slice)."""
    if start == 0 and len(data) <= _CHUNK:
        yield data
        return
    view = memoryview(data)
    for at in range(start, len(data), _CHUNK):
        yield bytes(view[at : at + _CHUNK])


def _body(body_start: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield body_start
    yield from _checked(rest)
