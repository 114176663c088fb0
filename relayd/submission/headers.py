"""msmtp 1.8.23's header reader on raw bytes: -t recipients, the From address, Date/Message-ID."""

from __future__ import annotations

import re

from relayd.errors import DataError

TYPE_CHECKING = False  # typing and dataclasses cost milliseconds at import: this is the hot path
if TYPE_CHECKING:
    from collections.abc import Sequence

# How msmtp reads headers (src/msmtp.c msmtp_read_headers, checked against the Debian binary):
# a byte-level state machine over the header block with every CR ignored. Only a handful of
# header names matter; all other lines are skipped. This module keeps the same observable
# behaviour but works a line at a time, running the byte-level part only on the bodies of the
# address fields, so scanning stays cheap.

_SP, _TAB = 0x20, 0x09

# A line whose first byte (CRs aside) can start a header msmtp looks at, or an empty line.
# Other lines matter only inside a Resent- block or after an address field.
_NOTABLE_LINE = re.compile(rb"^\r*[DdMmFfTtCcBbRr\n]", re.MULTILINE)

# States of the address tokenizer (the part of the machine inside To/Cc/Bcc/From bodies).
_DEFAULT = 0  # between addresses
_QUOTED = 1  # inside "..." (a display name: skipped)
_ANGLE_OPEN = 2  # just after "<"
_IN_ANGLE = 3  # inside <...>: collecting
_PAREN_OPEN = 4  # just after "("
_IN_PAREN = 5  # inside a (comment): skipped
_IN_ATOM = 6  # a bare address: collecting
_ESCAPED = 7  # just after a backslash


def _sanitized(byte: int) -> int:
    """msmtp puts "_" for control and space characters it copies into an address."""
    return 0x5F if byte <= 0x20 or byte == 0x7F else byte


class _AddressTokenizer:
    """Pulls addresses out of address-field bodies; resumable across folded lines.

    Quirks kept on purpose (they decide which addresses msmtp sends to): whitespace between
    two bare words keeps only the second (`a@x b@y` → `b@y`), a quoted string drops what was
    collected before it (`"a b"@x` → `@x`), a backslash quotes the next byte, comments nest
    oddly (`(a())` leaves `)`), and an unclosed comment's depth carries into a directly
    following address field.
    """

    __slots__ = ("current", "depth", "escape_return", "fold_state", "paren_return", "state")

    def __init__(self) -> None:
        self.state = _DEFAULT
        self.fold_state = _DEFAULT
        self.paren_return = _DEFAULT
        self.escape_return = _DEFAULT
        self.depth = 0
        self.current: bytearray | None = None

    def start_field(self) -> None:
        self.state = _DEFAULT

    def resume_folded(self) -> None:
        """A folded line continues the field; its first (blank) byte is consumed unread."""
        self.state = self.fold_state

    def take(self) -> bytes | None:
        """The address in progress, if any (the field ended)."""
        current, self.current = self.current, None
        return bytes(current) if current is not None else None

    def feed(self, text: bytes, line_ends: bool) -> list[bytes]:
        """Read `text` (one line's part of a field, without its LF); return finished addresses."""
        done: list[bytes] = []
        state = self.state
        current = self.current
        for byte in text:
            collect = True
            if state == _DEFAULT:
                if byte == 0x5C:  # backslash
                    self.escape_return, state = _DEFAULT, _ESCAPED
                elif byte == 0x28:  # (
                    self.paren_return, state = _DEFAULT, _PAREN_OPEN
                elif byte == 0x22:  # "
                    current, state = None, _QUOTED
                elif byte == 0x3C:  # <
                    current, state = None, _ANGLE_OPEN
                elif byte in (_SP, _TAB):
                    pass
                elif byte == 0x3A:  # ":" of a group name
                    current = None
                elif byte in (0x2C, 0x3B):  # , ;
                    if current is not None:
                        done.append(bytes(current))
                        current = None
                else:
                    current, state = bytearray(), _IN_ATOM
            elif state == _IN_ATOM:
                if byte == 0x5C:
                    self.escape_return, state = _IN_ATOM, _ESCAPED
                elif byte == 0x22:
                    current, state = None, _QUOTED
                elif byte == 0x28:
                    self.paren_return, state = _IN_ATOM, _PAREN_OPEN
                elif byte == 0x3C:
                    current, state = None, _ANGLE_OPEN
                elif byte in (_SP, _TAB):
                    state = _DEFAULT
                elif byte == 0x3A:
                    current, state = None, _DEFAULT
                elif byte in (0x2C, 0x3B):
                    assert current is not None
                    done.append(bytes(current))
                    current, state = None, _DEFAULT
            elif state == _IN_ANGLE:
                if byte == 0x5C:
                    self.escape_return, state = _IN_ANGLE, _ESCAPED
                elif byte == 0x28:
                    self.paren_return, state = _IN_ANGLE, _PAREN_OPEN
                elif byte == 0x3E:  # >
                    assert current is not None
                    done.append(bytes(current))
                    current, state = None, _DEFAULT
            elif state == _ANGLE_OPEN:
                if byte == 0x28:
                    self.paren_return, state = _ANGLE_OPEN, _PAREN_OPEN
                elif byte == 0x3E:
                    state = _DEFAULT
                else:
                    current, state = bytearray(), _IN_ANGLE
            elif state == _QUOTED:
                if byte == 0x5C:
                    self.escape_return, state = _QUOTED, _ESCAPED
                elif byte == 0x22:
                    state = _DEFAULT
            elif state == _PAREN_OPEN:
                collect = False  # the byte after "(" is never part of an address
                if byte == 0x29:  # )
                    state = self.paren_return
                else:
                    self.depth += 1
                    state = _IN_PAREN
            elif state == _IN_PAREN:
                collect = False
                if byte == 0x5C:
                    self.escape_return, state = _IN_PAREN, _ESCAPED
                elif byte == 0x28:
                    state = _PAREN_OPEN
                elif byte == 0x29:
                    self.depth -= 1
                    if self.depth == 0:
                        state = self.paren_return
            else:  # _ESCAPED: the byte is taken literally where the backslash stood
                state = self.escape_return
            if collect and state in (_IN_ATOM, _IN_ANGLE):
                if current is None:
                    current = bytearray()
                current.append(_sanitized(byte))
        if line_ends:
            if state == _DEFAULT and current is not None:
                done.append(bytes(current))
                current = None
            # After a bare address or a backslash the folded line restarts between addresses.
            self.fold_state = _DEFAULT if state in (_IN_ATOM, _ESCAPED) else state
        self.state = state
        self.current = current
        return done


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
        self.tokenizer = _AddressTokenizer()
        self.in_address_field = False  # the previous line belongs to an address field
        self.field_is_from = False  # the address field being read is the first From:

    def _finished(self, address: bytes) -> None:
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
                notable = _NOTABLE_LINE.search(raw, pos)
                if notable is None:
                    break  # no empty line and nothing msmtp reads: all header
                pos = notable.start()
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
                if line and (line[0] == _SP or line[0] == _TAB):
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


def display_headers(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a stored or received message as (name, value) pairs for people to
    read: unfolded, RFC 2047 encoded words decoded, invalid UTF-8 shown as U+FFFD. Every field
    is read as unstructured text, so no malformed address can make the stdlib's structured
    parsers fail a display; the body is not parsed. (`email` is imported and the patterns are
    compiled here, not at import: this module is on the sendmail hot path.)"""
    from email.headerregistry import HeaderRegistry, UnstructuredHeader
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    registry = HeaderRegistry(default_class=UnstructuredHeader, use_default_map=False)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return [
        (readable(name), readable(str(registry(name, re.sub(r"\r?\n(?=[ \t])", "", value)))))
        for name, value in parsed.raw_items()
    ]


def readable(value: str) -> str:
    """`value` with the surrogate escapes of undecodable bytes decoded as UTF-8 or U+FFFD."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
