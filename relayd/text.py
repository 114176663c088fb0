r"""Text shown to people or written to logs: the one place control characters are made harmless.

`sanitize(text, policy)` is the one sanitiser; every output names the policy it needs:

``"log"``        msmtp's sanitize_string: C0 controls and DEL become `?`. For what must match
                 msmtp byte for byte: its stderr reports and --serverinfo (the default).
``"log-field"``  the same, and `'` too: the quoted smtpmsg='…' and errormsg='…' of msmtp's
                 log line.
``"terminal"``   text relayd prints for a person (queue list/show/log, mailq, status, config
                 check, debug-server): every character `str.isprintable` rejects becomes an
                 escape, `\x1b`, `\x9b`, `\u202e`, `\U000e0001`. That is C0, DEL, C1, the format
                 characters (bidi controls, zero-width ones), U+2028/U+2029, spaces other than
                 U+0020, unassigned and private-use code points and surrogates: nothing a
                 terminal could obey (move, recolour, clear, reorder) or show deceptively.
``"json"``       the same characters as JSON escapes (`\u009b`), for a text from `json.dumps`:
                 a program still reads the exact data, a terminal gets nothing raw.
``"header"``     a header value relayd writes (bounces, the debug server's Maildir): one line,
                 controls and Unicode line breaks as spaces, runs of whitespace as one space, a
                 surrogate that stands for no byte as U+FFFD.
``"address"``    msmtp's header reader: a control or space copied into an address becomes `_`.

Also the display of header fields (`display_headers`, `readable`). Standard library only, and
cheap to import: relayd-sendmail loads this module.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at import: this module is on the sendmail path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    Policy = Literal["log", "log-field", "terminal", "json", "header", "address"]

_C0_AND_DEL = (*range(0x20), 0x7F)  # C's iscntrl() in the C locale
_LOG = dict.fromkeys(_C0_AND_DEL, "?")
_LOG_FIELD = {**_LOG, ord("'"): "?"}
_ADDRESS = dict.fromkeys((*_C0_AND_DEL, ord(" ")), "_")
# NEL, LS and PS end a line for str.splitlines and for some mail readers, so not only C0.
_HEADER_BREAKS = dict.fromkeys((*_C0_AND_DEL, 0x85, 0x2028, 0x2029), " ")
_FFFD = "\ufffd"


def sanitize(text: str, policy: Policy = "log") -> str:
    """`text` made harmless for the output that `policy` names (see the module's docstring)."""
    return _POLICIES[policy](text)


def _terminal_escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def _escaping(escape: Callable[[str], str]) -> Callable[[str], str]:
    """A policy that replaces every character `str.isprintable` rejects by `escape(char)`."""

    def policy(text: str) -> str:
        if text.isprintable():  # the usual case, decided in C
            return text
        return "".join(char if char.isprintable() else escape(char) for char in text)

    return policy


def _header(text: str) -> str:
    return " ".join(replace_stray_surrogates(text.translate(_HEADER_BREAKS)).split())


_POLICIES: dict[str, Callable[[str], str]] = {
    "log": lambda text: text.translate(_LOG),
    "log-field": lambda text: text.translate(_LOG_FIELD),
    # Both JSON escapes and the terminal's are valid where they land: json.dumps leaves only
    # printable ASCII outside its strings, so every character escaped here is inside one.
    "terminal": _escaping(_terminal_escape),
    "json": _escaping(_json_escape),
    "header": _header,
    "address": lambda text: text.translate(_ADDRESS),
}


def _is_stray(char: str) -> bool:
    """A surrogate that surrogateescape did not make: it stands for no byte of the input."""
    return "\ud800" <= char <= "\udfff" and not "\udc80" <= char <= "\udcff"


def replace_stray_surrogates(text: str) -> str:
    """`text` with each surrogate that stands for no byte as U+FFFD, so it can be encoded
    (surrogateescape's U+DC80-U+DCFF, undecodable input bytes, are kept)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "".join(_FFFD if _is_stray(char) else char for char in text)
    return text


def readable(value: str) -> str:
    """`value` with the surrogate escapes of undecodable bytes decoded as UTF-8 or U+FFFD."""
    raw = replace_stray_surrogates(value).encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")


def display_headers(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a stored or received message as (name, value) pairs for people to
    read: unfolded, RFC 2047 encoded words decoded, invalid UTF-8 shown as U+FFFD. Every field
    is read as unstructured text, so no malformed address can make the stdlib's structured
    parsers fail a display; the body is not parsed. Control characters are left for the
    output's policy ("terminal", "json"). (`email` and `re` are imported here, not at import:
    this module is on the sendmail path.)"""
    import re
    from email.headerregistry import HeaderRegistry, UnstructuredHeader
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    registry = HeaderRegistry(default_class=UnstructuredHeader, use_default_map=False)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return [
        (readable(name), readable(str(registry(name, re.sub(r"\r?\n(?=[ \t])", "", value)))))
        for name, value in parsed.raw_items()
    ]
