"""Envelope address checks: what relayd refuses (exit 65) and what needs SMTPUTF8."""

from __future__ import annotations

from relayd.errors import DataError

TYPE_CHECKING = False  # keep typing-only imports off the hot path
if TYPE_CHECKING:
    from collections.abc import Iterable

# RFC 5322 specials that cannot appear bare in a local part or a domain; msmtp's header
# reader can produce them from odd input (`<a\>b>` → `a>b`), and msmtp would put them on the
# wire verbatim for the server to refuse (a 5xx: exit 65). relayd refuses them up front.
_SPECIALS = frozenset('()<>[]:;@\\,"')


def shown(text: str) -> str:
    """`text` quoted for a message; a byte that was not UTF-8 (a PEP 383 surrogate from argv or
    a header) shows as Python shows bytes (`\\xff`), not as `\\udcff`."""
    if not has_undecodable(text):
        return repr(text)
    body = "".join(
        f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else repr(char)[1:-1]
        for char in text
    )
    return f"'{body}'"


def has_undecodable(text: str) -> bool:
    """Whether `text` holds bytes that were not UTF-8 (surrogateescape's U+DC80..U+DCFF)."""
    return not text.isascii() and any(0xDC80 <= ord(char) <= 0xDCFF for char in text)


def _fail(address: str, reason: str) -> DataError:
    return DataError(f"invalid address {shown(address)}: {reason}")


def _check_local_part(address: str, local: str) -> None:
    if not local:
        raise _fail(address, "empty local part")
    if local.startswith('"'):
        return  # a quoted string, already checked to be closed
    if any(char in _SPECIALS or char == " " for char in local):
        raise _fail(address, "the local part contains a character that needs quoting")


def _check_domain(address: str, domain: str) -> None:
    if not domain:
        raise _fail(address, "empty domain")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if not literal or any(char in "[]\\ " for char in literal):
            raise _fail(address, "malformed address literal")
        return
    if any(char in _SPECIALS or char == " " for char in domain):
        raise _fail(address, "the domain contains a character that is not allowed")


def _closing_quote(address: str) -> int:
    """Index of the quote that closes the quoted local part starting at index 0, or -1."""
    index = 1
    while index < len(address):
        char = address[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return -1


# Addresses that passed check_address: the SMTP listener checks the same few again and again
# (at MAIL/RCPT and when it composes). Cleared when it holds _GOOD_MAX of them.
_good: set[str] = set()
_GOOD_MAX = 4096


def check_address(address: str, *, allow_empty: bool = False) -> None:
    """Raise DataError (exit 65) unless `address` can go into MAIL FROM:<…> / RCPT TO:<…>.

    Accepted: `local@domain` (local part a dot-atom or a quoted string, domain a name or an
    address literal; non-ASCII allowed, see needs_smtputf8) and a bare `local` (msmtp sends it
    as is; aliases may expand it). `allow_empty` admits the null reverse-path `<>`.
    """
    if address in _good:
        return
    _check(address, allow_empty)
    if address:
        if len(_good) >= _GOOD_MAX:
            _good.clear()
        _good.add(address)


def _check(address: str, allow_empty: bool) -> None:
    if not address:
        if allow_empty:
            return
        raise DataError("invalid address '': empty")
    if "\r" in address or "\n" in address:
        raise _fail(address, "contains a line break")
    if "\0" in address:
        raise _fail(address, "contains a NUL byte")
    if has_undecodable(address):
        raise _fail(address, "not valid UTF-8")
    if any(char < " " or char == "\x7f" for char in address):
        raise _fail(address, "contains a control character")
    if address.startswith('"'):
        close = _closing_quote(address)
        if close < 0:
            raise _fail(address, "unterminated quoted local part")
        local, rest = address[: close + 1], address[close + 1 :]
        if not rest:
            return
        if not rest.startswith("@"):
            raise _fail(address, "text after the quoted local part")
        _check_domain(address, rest[1:])
        return
    local, at, domain = address.partition("@")
    _check_local_part(address, local)
    if at:
        _check_domain(address, domain)


def needs_smtputf8(addresses: Iterable[str]) -> bool:
    """True if any envelope address has non-ASCII characters (RFC 6531 SMTPUTF8)."""
    return any(not address.isascii() for address in addresses)


def smtp_reverse_path(envelope_from: str) -> str:
    """The path msmtp puts in MAIL FROM: `MAILER-DAEMON` (any case) is sent as `<>`."""
    return "" if envelope_from.upper() == "MAILER-DAEMON" else envelope_from
