"""The parts of a bounce (RFC 3464): the explanation, the delivery status, the original headers.

Also the header-field helpers the whole notice is written with (relayd.daemon.bounce assembles
the multipart/report from these parts).
"""

from __future__ import annotations

import binascii
import email.utils
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from relayd.delivery.result import ENHANCED_STATUS
from relayd.store.queued import QueuedMessage, Recipient
from relayd.text import replace_stray_surrogates, sanitize

Action = Literal["failed", "delayed"]

CRLF = b"\r\n"
_SOFT_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_MAX_LINE = 998  # RFC 5322 §2.1.1: lines MUST stay within 998 octets
# A word longer than this is cut so that even four-byte UTF-8 stays under _MAX_LINE.
_MAX_WORD = 240

_LINE_END = re.compile(rb"\r\n|\r|\n")
_EMPTY_LINE = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class Report:
    """What the three parts are made from."""

    message: QueuedMessage
    recipients: tuple[Recipient, ...]
    action: Action
    host: str
    remote: str | None
    now: float
    reason: str | None
    retry_until: float | None


# --- text helpers ---------------------------------------------------------------------------


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def ascii7(text: str) -> str:
    """Non-ASCII characters as RFC 6533 `\\x{HEX}`: message/delivery-status is 7-bit."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else f"\\x{{{ord(c):02X}}}" for c in text)


def ascii_host(name: str) -> str:
    """A host name usable after `dns;`: IDNA for internationalized names."""
    name = sanitize(name, "header")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return ascii7(name)


def xtext_address(address: str) -> str:
    """An address for a DSN field: `rfc822; a@b`, or RFC 6533 `utf-8;` with xtext escapes."""
    if address.isascii():
        return f"rfc822; {sanitize(address, 'header')}"
    # utf-8-addr-xtext: QCHAR is printable ASCII except SP, '\', '+', '='; every other
    # character, controls included, is escaped (a lone surrogate as U+FFFD).
    address = replace_stray_surrogates(address)
    escaped = "".join(
        c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):02X}}}" for c in address
    )
    return f"utf-8; {escaped}"


def rfc_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, localtime=True)


def fold(name: str, value: str) -> bytes:
    """`Name: value` folded at spaces (RFC 5322 §2.2.3): ≤ 78 characters where words allow.

    Only a word longer than _MAX_WORD characters is cut, which adds a space where it is cut;
    no SMTP reply or address comes near that, and it keeps every line under 998 octets.
    """
    words: list[str] = []
    for word in sanitize(value, "header").split(" "):
        words.extend(word[i : i + _MAX_WORD] for i in range(0, max(len(word), 1), _MAX_WORD))
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= _SOFT_WIDTH:
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return utf8("\r\n".join(lines)) + CRLF


def header_fields(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(fold(name, value) for name, value in pairs)


# --- per-recipient facts ----------------------------------------------------------------------


def _reply(recipient: Recipient) -> str | None:
    """The server's reply on one line, `550 5.1.1 <x>: user unknown`, or None without one.

    Continuation lines that repeat the first line's enhanced code lose that copy, as the
    text reads as one sentence then.
    """
    if recipient.reply_code is None and not recipient.reply_text:
        return None
    lines = [line.strip() for line in (recipient.reply_text or "").split("\n")]
    first = ENHANCED_STATUS.match(lines[0])
    if first:
        lines[1:] = [_without_code(line, first.group(0)) for line in lines[1:]]
    prefix = "" if recipient.reply_code is None else str(recipient.reply_code)
    return sanitize(" ".join([prefix, *lines]), "header") or None


def _without_code(line: str, code: str) -> str:
    match = ENHANCED_STATUS.match(line)
    return line[match.end() :] if match and match.group(0) == code else line


def _status(recipient: Recipient, action: Action) -> str:
    """The RFC 3463 status: the reply's enhanced code, else one from its class.

    A delayed recipient's status is always class 4 (RFC 3464 §2.3.4: delayed is transient).
    """
    match = ENHANCED_STATUS.match((recipient.reply_text or "").lstrip())
    if match:
        klass = "4" if action == "delayed" else match.group(1)
        if klass != "2":
            return f"{klass}.{int(match.group(2))}.{int(match.group(3))}"
    code = recipient.reply_code
    if action == "failed" and not (code is not None and 400 <= code < 500):
        return "5.0.0"
    return "4.0.0"


def _diagnostic(recipient: Recipient, reason: str | None) -> str | None:
    """Diagnostic-Code: the server's reply, else relayd's own reason (as Postfix's X-Postfix)."""
    reply = _reply(recipient)
    if reply is not None:
        return f"smtp; {ascii7(reply)}"
    if reason and (line := sanitize(reason, "header")):
        return f"X-Relayd; {ascii7(line)}"
    return None


# --- the three parts ------------------------------------------------------------------------


def text_part(report: Report) -> bytes:
    """Part 1, for people: what happened to which recipient, and what happens next."""
    text = "\r\n".join(_explanation(report)) + "\r\n"
    head = [("Content-Description", "Notification")]
    if text.isascii() and all(len(line) <= _MAX_LINE for line in text.split("\r\n")):
        head.append(("Content-Type", "text/plain; charset=us-ascii"))
        return header_fields(head) + CRLF + text.encode("ascii")
    # Quoted-printable keeps the notice 7-bit (no BODY=8BITMIME needed) and lines short.
    head += [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]
    body = binascii.b2a_qp(utf8(text), istext=True)
    return header_fields(head) + CRLF + body


def _explanation(report: Report) -> list[str]:
    message = report.message
    queue_id = sanitize(message.queue_id, "header")
    lines = [f"This is the mail system at host {report.host}.", ""]
    if report.action == "failed":
        lines += [
            "Your message could not be delivered to one or more recipients, listed below",
            "with the reason. The message is kept in the queue of the sending host as",
            f"{queue_id}; its headers are attached.",
        ]
    else:
        until = f" until {rfc_date(report.retry_until)}" if report.retry_until is not None else ""
        lines += [
            "Your message has not yet been delivered to the recipients listed below.",
            f"It is still in the queue as {queue_id} and will be retried{until}.",
            "You do not need to send it again; you will be told if it finally fails.",
        ]
    lines += ["", f"Sent to the queue: {rfc_date(message.created_at)}", ""]
    for recipient in report.recipients:
        # Wrapped for reading; a word too long for 998 octets makes the part quoted-printable.
        lines += textwrap.wrap(
            _human_reason(recipient, report),
            width=76,
            subsequent_indent="    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    return lines


def _human_reason(recipient: Recipient, report: Report) -> str:
    address = f"<{sanitize(recipient.address, 'header')}>"
    reply = _reply(recipient)
    if reply is not None:
        where = f"host {report.remote} said: " if report.remote else "the server said: "
        return f"{address}: {where}{reply}"
    if report.reason and (line := sanitize(report.reason, "header")):
        return f"{address}: {line}"
    return f"{address}: no reason was recorded"


def status_part(report: Report) -> bytes:
    """Part 2, message/delivery-status: the per-message block, then one per recipient."""
    message = report.message
    per_message = [
        ("Reporting-MTA", f"dns; {report.host}"),
        ("X-Relayd-Queue-ID", ascii7(sanitize(message.queue_id, "header"))),
        ("Arrival-Date", rfc_date(message.created_at)),
    ]
    blocks = [header_fields(per_message)]
    blocks += [header_fields(_recipient_fields(r, report)) for r in report.recipients]
    head = header_fields([("Content-Description", "Delivery report")])
    head += header_fields([("Content-Type", "message/delivery-status")])
    return head + CRLF + CRLF.join(blocks)


def _recipient_fields(recipient: Recipient, report: Report) -> list[tuple[str, str]]:
    fields = [
        ("Final-Recipient", xtext_address(recipient.address)),
        ("Action", report.action),
        ("Status", _status(recipient, report.action)),
    ]
    replied = recipient.reply_code is not None or bool(recipient.reply_text)
    # RFC 3464 §2.3.5: Remote-MTA only when that MTA took part, i.e. it replied.
    if report.remote and replied:
        fields.append(("Remote-MTA", f"dns; {report.remote}"))
    diagnostic = _diagnostic(recipient, report.reason)
    if diagnostic is not None:
        fields.append(("Diagnostic-Code", diagnostic))
    fields.append(("Last-Attempt-Date", rfc_date(report.now)))
    if report.action == "delayed" and report.retry_until is not None:
        fields.append(("Will-Retry-Until", rfc_date(report.retry_until)))
    return fields


def headers_part(original: bytes) -> bytes:
    """Part 3, text/rfc822-headers: the original header block as stored, 8-bit bytes and all.

    Only the header block: the body may be large and private. Line ends are made CRLF and
    a line over 998 octets (already illegal in the original) is folded; nothing else changes.
    """
    block = _header_block(original)
    head = [("Content-Description", "Undelivered Message Headers")]
    head.append(("Content-Type", "text/rfc822-headers"))
    if not block.isascii():
        head.append(("Content-Transfer-Encoding", "8bit"))
    return header_fields(head) + CRLF + block


def _header_block(original: bytes) -> bytes:
    if original.startswith((b"\r\n", b"\n")):
        return b""
    end = _EMPTY_LINE.search(original)
    block = original if end is None else original[: end.start() + 1]
    lines = _LINE_END.split(block)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(_bounded(line) + CRLF for line in lines)


def _bounded(line: bytes) -> bytes:
    if len(line) <= _MAX_LINE:
        return line
    pieces = [line[i : i + _MAX_LINE - 1] for i in range(0, len(line), _MAX_LINE - 1)]
    return b"\r\n ".join(pieces)
