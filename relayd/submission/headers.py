"""msmtp 1.8.23's header reader on raw bytes: -t recipients, the From address, Date/Message-ID."""

from __future__ import annotations

from relayd.errors import DataError
from relayd.submission.address_fields import SP, TAB, AddressTokenizer
from relayd.text import sanitize

TYPE_CHECKING = False  # typing and dataclasses cost milliseconds at import: this is the hot path
if TYPE_CHECKING:
    from collections.abc import Sequence

# How msmtp reads headers (src/msmtp.c msmtp_read_headers, checked against the Debian binary):
# a byte-level state machine over the header block with every CR ignored. Only a handful of
# header names matter; all other lines are skipped. This module keeps the same observable
# behaviour but works a line at a time, running the byte-level part only on the bodies of the
# address fields, so scanning stays cheap.

# First bytes (CRs aside) of a line that can start a header msmtp looks at, or of an empty line.
# Other lines matter only inside a Resent- block or after an address field.
_NOTABLE_FIRST = frozenset(b"DdMmFfTtCcBbRr\n")
_CR = 13


def next_notable_line(raw: bytes, pos: int) -> int:
    """The start of the first line at or after the line start `pos` that msmtp may read, or -1.

    A loop, not a regex: `re` (with `enum`) would cost relayd-sendmail a quarter of its start-up.
    """
    size = len(raw)
    while pos < size:
        first = pos
        while first < size and raw[first] == _CR:
            first += 1
        if first < size and raw[first] in _NOTABLE_FIRST:
            return pos
        newline = raw.find(b"\n", first)
        if newline < 0:
            return -1
        pos = newline + 1
    return -1


def _prefix_length(line: bytes, start: int, name: bytes) -> int:
    """How many bytes of `name` (lower case) match `line` from `start`, ignoring ASCII case."""
    candidate = line[start : start + len(name)].lower()  # lowers ASCII letters only
    if candidate == name:
        return len(name)
    matched = 0
    for got, wanted in zip(candidate, name, strict=False):
        if got != wanted:
            break
        matched += 1
    return matched


class HeaderScan:
    """What msmtp learns from a message's header block (immutable)."""

    __slots__ = ("from_address", "has_date", "has_message_id", "header_end", "recipients")

    header_end: int  # offset of the body: just after the empty line, or len(raw)
    has_date: bool
    has_message_id: bool
    # The first From: address, msmtp's way: None when there is none; "" for a From: field that
    # was still open at the end of the input (msmtp then has an empty envelope-from).
    from_address: str | None
    recipients: tuple[str, ...]  # with -t: To/Cc/Bcc, or the first Resent- block's; no dedup

    def __init__(
        self,
        *,
        header_end: int,
        has_date: bool,
        has_message_id: bool,
        from_address: str | None,
        recipients: tuple[str, ...],
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "header_end", header_end)
        setattr_(self, "has_date", has_date)
        setattr_(self, "has_message_id", has_message_id)
        setattr_(self, "from_address", from_address)
        setattr_(self, "recipients", recipients)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HeaderScan is immutable (tried to set {name})")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderScan) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"HeaderScan({fields})"

    @property
    def has_from(self) -> bool:
        """msmtp's "have From header": decides set_from_header=auto."""
        return self.from_address is not None


_FROM_BEFORE, _FROM_IN, _FROM_AFTER = -1, 0, 1  # where we are relative to the first From:
_RESENT_BEFORE, _RESENT_IN, _RESENT_AFTER = -1, 0, 1  # relative to the first Resent- block


class _HeaderReader:
    """One pass over a header block; see scan_headers and parse_recipient_arguments."""

    def __init__(
        self, *, message: bool, read_recipients: bool, from_extras_are_recipients: bool = False
    ) -> None:
        # msmtp 1.8.23 takes every address of the first From: after the first as a -t
        # recipient; relayd does not. The flag exists so tests can show that is the only change.
        self.from_extras_are_recipients = from_extras_are_recipients
        self.want_message_fields = message  # Date, Message-ID, From (off for command-line args)
        self.read_recipients = read_recipients
        self.has_date = False
        self.has_message_id = False
        self.from_state = _FROM_BEFORE
        self.from_address: bytes | None = None
        self.resent = _RESENT_BEFORE
        self.normal: list[bytes] = []
        self.resent_recipients: list[bytes] = []
        self.tokenizer = AddressTokenizer()
        self.in_address_field = False  # the previous line belongs to an address field
        self.field_is_from = False  # the address field being read is the first From:

    def _finished(self, address: bytes) -> None:
        # msmtp works on bytes; latin-1 maps each byte to the code point of the same value.
        address = sanitize(address.decode("latin-1"), "address").encode("latin-1")
        if self.from_state == _FROM_IN:
            self.from_address = address
            self.from_state = _FROM_AFTER
        elif self.read_recipients and (self.from_extras_are_recipients or not self.field_is_from):
            if self.resent == _RESENT_IN:
                self.resent_recipients.append(address)
            else:
                self.normal.append(address)

    def _end_block_check(self, line: bytes, line_ends: bool, other_from: int | None) -> None:
        """msmtp ends the Resent- block when a non-Resent line gets past its first byte(s)."""
        reads_other = other_from is not None and other_from < len(line) + line_ends
        if reads_other and self.resent == _RESENT_IN:
            self.resent = _RESENT_AFTER

    def read(self, raw: bytes) -> int:
        """Scan the header block of `raw`; return the offset where the body starts."""
        pos, size = 0, len(raw)
        while pos < size:
            if not self.in_address_field and self.resent != _RESENT_IN:
                pos = next_notable_line(raw, pos)
                if pos < 0:
                    break  # no empty line and nothing msmtp reads: all header
            newline = raw.find(b"\n", pos)
            if newline < 0:
                line, line_ends, next_pos = raw[pos:], False, size
            else:
                line, line_ends, next_pos = raw[pos:newline], True, newline + 1
            if b"\r" in line:
                line = line.replace(b"\r", b"")
            if not line and not line_ends:
                break  # only CRs before the end of the input
            if self.in_address_field:
                if line and (line[0] == SP or line[0] == TAB):
                    self.tokenizer.resume_folded()
                    self._feed(line[1:], line_ends)
                    pos = next_pos
                    continue
                self.in_address_field = False
                address = self.tokenizer.take()
                if address is not None:
                    self._finished(address)
                elif self.from_state == _FROM_IN:
                    self.from_state = _FROM_BEFORE  # an empty From: does not count
            else:
                self.tokenizer.depth = 0
            if not line:
                return next_pos  # the empty line ends the header block
            self._line_start(line, line_ends)
            pos = next_pos
        address = self.tokenizer.take()
        if address is not None:
            self._finished(address)
        if self.from_state == _FROM_IN:
            self.from_address = b""
        return size

    def _feed(self, text: bytes, line_ends: bool) -> None:
        for address in self.tokenizer.feed(text, line_ends):
            self._finished(address)
        self.in_address_field = line_ends

    def _line_start(self, line: bytes, line_ends: bool) -> None:
        """Dispatch on the header name the way msmtp's machine does, byte by byte."""
        first = line[0] | 0x20
        field_start: int | None = None  # where an address field's body starts
        other_from: int | None = 1  # first index read as "some other header"
        self.field_is_from = False
        if first == 0x64 and self.want_message_fields:  # d
            matched = _prefix_length(line, 0, b"date:")
            self.has_date |= matched == 5
            other_from = self._other_after(line, matched, 5)
        elif first == 0x6D and self.want_message_fields:  # m
            matched = _prefix_length(line, 0, b"message-id:")
            self.has_message_id |= matched == 11
            other_from = self._other_after(line, matched, 11)
        elif first == 0x66 and self.want_message_fields and self.from_state == _FROM_BEFORE:
            matched = _prefix_length(line, 0, b"from:")
            if matched == 5:
                field_start = 5
                self.from_state = _FROM_IN
                self.field_is_from = True
            elif matched == 4 and len(line) == 4 and not line_ends:
                self.from_state = _FROM_IN  # "From" at the very end: msmtp is still waiting
        elif first in (0x74, 0x63, 0x62) and self.read_recipients:  # t c b
            name = b"to:" if first == 0x74 else b"cc:" if first == 0x63 else b"bcc:"
            if _prefix_length(line, 0, name) == len(name):
                field_start = len(name)
        elif first == 0x72 and self.read_recipients and self.resent != _RESENT_AFTER:  # r
            matched = _prefix_length(line, 0, b"resent-")
            if matched == 7:
                if self.resent == _RESENT_BEFORE:
                    self.resent = _RESENT_IN
                other_from = None  # a Resent- line never ends the block
                kind = line[7] | 0x20 if len(line) > 7 else 0
                name = b"to:" if kind == 0x74 else b"cc:" if kind == 0x63 else b"bcc:"
                if kind in (0x74, 0x63, 0x62) and _prefix_length(line, 7, name) == len(name):
                    field_start = 7 + len(name)
            else:
                other_from = self._other_after(line, matched, 7)
        self._end_block_check(line, line_ends, other_from)
        if field_start is not None:
            self.tokenizer.start_field()
            self._feed(line[field_start:], line_ends)

    @staticmethod
    def _other_after(line: bytes, matched: int, length: int) -> int | None:
        """After `matched` bytes of a name of `length`, the first index read as another header.

        A complete name is followed by its value; a mismatching byte is read by the name's
        state, so the next one is the first of "some other header"; a line that ends inside
        the name has none.
        """
        if matched == length:
            return matched
        return matched + 1 if matched < len(line) else None

    def addresses(self) -> list[str]:
        chosen = self.resent_recipients if self.resent != _RESENT_BEFORE else self.normal
        return [_text(address) for address in chosen]


def _text(address: bytes) -> str:
    """Header bytes as str; bytes that are not UTF-8 survive as surrogates (PEP 383)."""
    return address.decode("utf-8", "surrogateescape")


def scan_headers(raw: bytes, *, read_recipients: bool) -> HeaderScan:
    """Read the header block of `raw` (up to the first empty line or the end) like msmtp."""
    reader = _HeaderReader(message=True, read_recipients=read_recipients)
    header_end = reader.read(raw)
    return HeaderScan(
        header_end=header_end,
        has_date=reader.has_date,
        has_message_id=reader.has_message_id,
        from_address=None if reader.from_address is None else _text(reader.from_address),
        recipients=tuple(reader.addresses()),
    )


def parse_recipient_arguments(arguments: Sequence[str]) -> list[str]:
    """Command-line recipients, parsed as msmtp does: as lines `To: ARG` of one header block.

    So `John <j@x>, k@x` gives j@x and k@x, `(c) l@x` gives l@x, `m@x;` gives m@x, a bare
    `local` stays `local`, and `"a b"@example.com` becomes `@example.com`. An argument with a
    CR, LF or NUL is refused (DataError, exit 65): msmtp would read a line break as the start of
    another header.
    """
    for argument in arguments:
        if "\r" in argument or "\n" in argument or "\0" in argument:
            raise DataError(f"invalid recipient {argument!r}: contains a line break or NUL")
    block = b"".join(
        b"To: " + argument.encode("utf-8", "surrogateescape") + b"\n" for argument in arguments
    )
    reader = _HeaderReader(message=False, read_recipients=True)
    reader.read(block + b"\n")
    return reader.addresses()


def parse_recipient_argument(argument: str) -> list[str]:
    """The addresses in one command-line recipient argument (see parse_recipient_arguments)."""
    return parse_recipient_arguments([argument])
