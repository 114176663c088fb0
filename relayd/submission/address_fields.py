"""msmtp 1.8.23's tokenizer for the bodies of address fields (To, Cc, Bcc, From) on raw bytes."""

from __future__ import annotations

# The byte-level part of msmtp's header machine (src/msmtp.c msmtp_read_headers), run by
# relayd.submission.headers on the address fields only. The addresses come out as msmtp
# collects them; the caller replaces their controls and spaces with "_", as msmtp does.

SP, TAB = 0x20, 0x09

# States of the address tokenizer (the part of the machine inside To/Cc/Bcc/From bodies).
_DEFAULT = 0  # between addresses
_QUOTED = 1  # inside "..." (a display name: skipped)
_ANGLE_OPEN = 2  # just after "<"
_IN_ANGLE = 3  # inside <...>: collecting
_PAREN_OPEN = 4  # just after "("
_IN_PAREN = 5  # inside a (comment): skipped
_IN_ATOM = 6  # a bare address: collecting
_ESCAPED = 7  # just after a backslash


class AddressTokenizer:
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
                elif byte in (SP, TAB):
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
                elif byte in (SP, TAB):
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
                current.append(byte)
        if line_ends:
            if state == _DEFAULT and current is not None:
                done.append(bytes(current))
                current = None
            # After a bare address or a backslash the folded line restarts between addresses.
            self.fold_state = _DEFAULT if state in (_IN_ATOM, _ESCAPED) else state
        self.state = state
        self.current = current
        return done
