"""RFC 3464 delivery status notifications for failed or delayed queued mail; Maildir output."""

from __future__ import annotations

import binascii
import email.utils
import hashlib
import re
import secrets
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from relayd.daemon import maildir
from relayd.errors import RelaydError
from relayd.store.queued import QueuedMessage, Recipient, RecipientState
from relayd.sysexits import ExitCode

__all__ = ["Action", "MaildirError", "Notice", "build", "should_notify", "write_maildir"]

Action = Literal["failed", "delayed"]

_CRLF = b"\r\n"
_SOFT_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_MAX_LINE = 998  # RFC 5322 §2.1.1: lines MUST stay within 998 octets
# A word longer than this is cut so that even four-byte UTF-8 stays under _MAX_LINE.
_MAX_WORD = 240

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# Controls (and Unicode line breaks) would end or corrupt a header line: they become spaces.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# surrogateescape's U+DC80-U+DCFF stand for raw bytes; other lone surrogates cannot be encoded.
_BAD_SURROGATE = re.compile(r"[\ud800-\udc7f\udd00-\udfff]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_EMPTY_LINE = re.compile(rb"\n\r?\n")

_SUBJECTS: dict[str, str] = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
}
_REPORTED: dict[str, frozenset[RecipientState]] = {
    "failed": frozenset({RecipientState.FAILED, RecipientState.PENDING}),
    "delayed": frozenset({RecipientState.PENDING}),
}


class MaildirError(RelaydError):
    """The notice could not be written into the Maildir (EX_CANTCREAT)."""

    default_code = ExitCode.CANTCREAT


@dataclass(frozen=True)
class Notice:
    """A DSN ready to queue: the envelope and the wire bytes."""

    sender: str  # always '' (<>): a DSN is never bounced (RFC 3464/5321 §4.5.5)
    recipient: str  # the original envelope sender
    data: bytes  # CRLF wire bytes
    eightbit: bool  # whether data has bytes >= 0x80 (needs BODY=8BITMIME)
    smtputf8: bool  # whether the recipient address is non-ASCII


def should_notify(message: QueuedMessage) -> bool:
    """Never for the null sender `<>` (that is how bounce loops are prevented), else yes.

    A DSN's own envelope sender is `<>`, so a notice that cannot be delivered is never
    answered with another one (nullmailer #54/#69 generated them once a second).
    """
    return message.sender.strip() not in ("", "<>")


def build(
    message: QueuedMessage,
    original: bytes,
    action: Action,
    *,
    reporting_mta: str,
    remote_mta: str | None,
    now: float,
    reason: str | None = None,
    retry_until: float | None = None,
    message_id: str | None = None,
) -> Notice:
    """The `multipart/report` DSN telling `message.sender` which recipients `action` concerns.

    `failed` reports failed and still-pending recipients (a message that expired fails its
    pending ones), `delayed` the pending ones; recipients already sent are never listed.
    `reason` is the diagnostic of recipients without a server reply. `original` is the stored
    message; only its header block is returned. Raises ValueError when no recipient qualifies
    or `action` is unknown.
    """
    if action not in _REPORTED:
        raise ValueError(f"unknown DSN action {action!r}")
    recipients = _reported(message, action)
    if not recipients:
        raise ValueError(f"message {message.queue_id} has no {action} recipients to report")
    host = _ascii_host(reporting_mta)
    remote = _ascii_host(remote_mta) if remote_mta else None
    msgid = _one_line(message_id) if message_id else _fresh_message_id(host, now)
    report = _Report(message, recipients, action, host, remote, now, reason, retry_until)
    parts = [_text_part(report), _status_part(report), _headers_part(original)]
    boundary = _boundary(parts, msgid)
    eightbit_body = any(not part.isascii() for part in parts)
    head = _top_headers(message.sender, action, host, now, msgid, boundary, eightbit_body)
    data = head + _CRLF + _multipart_body(parts, boundary)
    return Notice(
        sender="",
        recipient=message.sender,
        data=data,
        eightbit=not data.isascii(),
        smtputf8=not message.sender.isascii(),
    )


@dataclass(frozen=True)
class _Report:
    """What the three parts are made from."""

    message: QueuedMessage
    recipients: tuple[Recipient, ...]
    action: Action
    host: str
    remote: str | None
    now: float
    reason: str | None
    retry_until: float | None


def _reported(message: QueuedMessage, action: Action) -> tuple[Recipient, ...]:
    wanted = _REPORTED[action]
    chosen = (r for r in message.recipients if r.state in wanted)
    return tuple(sorted(chosen, key=lambda r: r.position))


# --- text helpers ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """`text` on one line: controls and runs of whitespace become single spaces."""
    return " ".join(_BAD_SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text)).split())


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _ascii(text: str) -> str:
    """Non-ASCII characters as RFC 6533 `\\x{HEX}`: message/delivery-status is 7-bit."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else f"\\x{{{ord(c):02X}}}" for c in text)


def _ascii_host(name: str) -> str:
    """A host name usable after `dns;`: IDNA for internationalized names."""
    name = _one_line(name)
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return _ascii(name)


def _xtext_address(address: str) -> str:
    """An address for a DSN field: `rfc822; a@b`, or RFC 6533 `utf-8;` with xtext escapes."""
    if address.isascii():
        return f"rfc822; {_one_line(address)}"
    # utf-8-addr-xtext: QCHAR is printable ASCII except SP, '\', '+', '='; every other
    # character, controls included, is escaped (a lone surrogate as U+FFFD).
    address = _BAD_SURROGATE.sub("\ufffd", address)
    escaped = "".join(
        c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):02X}}}" for c in address
    )
    return f"utf-8; {escaped}"


def _date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, localtime=True)


def _fresh_message_id(host: str, now: float) -> str:
    return f"<{int(now)}.{secrets.token_hex(8)}@{host}>"


def _fold(name: str, value: str) -> bytes:
    """`Name: value` folded at spaces (RFC 5322 §2.2.3): ≤ 78 characters where words allow.

    Only a word longer than _MAX_WORD characters is cut, which adds a space where it is cut;
    no SMTP reply or address comes near that, and it keeps every line under 998 octets.
    """
    words: list[str] = []
    for word in _one_line(value).split(" "):
        words.extend(word[i : i + _MAX_WORD] for i in range(0, max(len(word), 1), _MAX_WORD))
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= _SOFT_WIDTH:
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return _utf8("\r\n".join(lines)) + _CRLF


def _fields(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(_fold(name, value) for name, value in pairs)


# --- per-recipient facts ----------------------------------------------------------------------


def _reply(recipient: Recipient) -> str | None:
    """The server's reply on one line, `550 5.1.1 <x>: user unknown`, or None without one.

    Continuation lines that repeat the first line's enhanced code lose that copy, as the
    text reads as one sentence then.
    """
    if recipient.reply_code is None and not recipient.reply_text:
        return None
    lines = [line.strip() for line in (recipient.reply_text or "").split("\n")]
    first = _ENHANCED.match(lines[0])
    if first:
        lines[1:] = [_without_code(line, first.group(0)) for line in lines[1:]]
    prefix = "" if recipient.reply_code is None else str(recipient.reply_code)
    return _one_line(" ".join([prefix, *lines])) or None


def _without_code(line: str, code: str) -> str:
    match = _ENHANCED.match(line)
    return line[match.end() :] if match and match.group(0) == code else line


def _status(recipient: Recipient, action: Action) -> str:
    """The RFC 3463 status: the reply's enhanced code, else one from its class.

    A delayed recipient's status is always class 4 (RFC 3464 §2.3.4: delayed is transient).
    """
    match = _ENHANCED.match((recipient.reply_text or "").lstrip())
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
        return f"smtp; {_ascii(reply)}"
    if reason and _one_line(reason):
        return f"X-Relayd; {_ascii(_one_line(reason))}"
    return None


# --- the three parts ------------------------------------------------------------------------


def _text_part(report: _Report) -> bytes:
    """Part 1, for people: what happened to which recipient, and what happens next."""
    text = "\r\n".join(_explanation(report)) + "\r\n"
    head = [("Content-Description", "Notification")]
    if text.isascii() and all(len(line) <= _MAX_LINE for line in text.split("\r\n")):
        head.append(("Content-Type", "text/plain; charset=us-ascii"))
        return _fields(head) + _CRLF + text.encode("ascii")
    # Quoted-printable keeps the notice 7-bit (no BODY=8BITMIME needed) and lines short.
    head += [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]
    body = binascii.b2a_qp(_utf8(text), istext=True)
    return _fields(head) + _CRLF + body


def _explanation(report: _Report) -> list[str]:
    message = report.message
    queue_id = _one_line(message.queue_id)
    lines = [f"This is the mail system at host {report.host}.", ""]
    if report.action == "failed":
        lines += [
            "Your message could not be delivered to one or more recipients, listed below",
            "with the reason. The message is kept in the queue of the sending host as",
            f"{queue_id}; its headers are attached.",
        ]
    else:
        until = f" until {_date(report.retry_until)}" if report.retry_until is not None else ""
        lines += [
            "Your message has not yet been delivered to the recipients listed below.",
            f"It is still in the queue as {queue_id} and will be retried{until}.",
            "You do not need to send it again; you will be told if it finally fails.",
        ]
    lines += ["", f"Sent to the queue: {_date(message.created_at)}", ""]
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


def _human_reason(recipient: Recipient, report: _Report) -> str:
    address = f"<{_one_line(recipient.address)}>"
    reply = _reply(recipient)
    if reply is not None:
        where = f"host {report.remote} said: " if report.remote else "the server said: "
        return f"{address}: {where}{reply}"
    if report.reason and _one_line(report.reason):
        return f"{address}: {_one_line(report.reason)}"
    return f"{address}: no reason was recorded"


def _status_part(report: _Report) -> bytes:
    """Part 2, message/delivery-status: the per-message block, then one per recipient."""
    message = report.message
    per_message = [
        ("Reporting-MTA", f"dns; {report.host}"),
        ("X-Relayd-Queue-ID", _ascii(_one_line(message.queue_id))),
        ("Arrival-Date", _date(message.created_at)),
    ]
    blocks = [_fields(per_message)]
    blocks += [_fields(_recipient_fields(r, report)) for r in report.recipients]
    head = _fields([("Content-Description", "Delivery report")])
    head += _fields([("Content-Type", "message/delivery-status")])
    return head + _CRLF + _CRLF.join(blocks)


def _recipient_fields(recipient: Recipient, report: _Report) -> list[tuple[str, str]]:
    fields = [
        ("Final-Recipient", _xtext_address(recipient.address)),
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
    fields.append(("Last-Attempt-Date", _date(report.now)))
    if report.action == "delayed" and report.retry_until is not None:
        fields.append(("Will-Retry-Until", _date(report.retry_until)))
    return fields


def _headers_part(original: bytes) -> bytes:
    """Part 3, text/rfc822-headers: the original header block as stored, 8-bit bytes and all.

    Only the header block: the body may be large and private. Line ends are made CRLF and
    a line over 998 octets (already illegal in the original) is folded; nothing else changes.
    """
    block = _header_block(original)
    head = [("Content-Description", "Undelivered Message Headers")]
    head.append(("Content-Type", "text/rfc822-headers"))
    if not block.isascii():
        head.append(("Content-Transfer-Encoding", "8bit"))
    return _fields(head) + _CRLF + block


def _header_block(original: bytes) -> bytes:
    if original.startswith((b"\r\n", b"\n")):
        return b""
    end = _EMPTY_LINE.search(original)
    block = original if end is None else original[: end.start() + 1]
    lines = _LINE_END.split(block)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(_bounded(line) + _CRLF for line in lines)


def _bounded(line: bytes) -> bytes:
    if len(line) <= _MAX_LINE:
        return line
    pieces = [line[i : i + _MAX_LINE - 1] for i in range(0, len(line), _MAX_LINE - 1)]
    return b"\r\n ".join(pieces)


# --- the whole message ----------------------------------------------------------------------


def _boundary(parts: list[bytes], msgid: str) -> str:
    """A boundary derived from the content (so the output is deterministic) and absent from it."""
    digest = hashlib.sha256(_utf8(msgid) + b"".join(parts))
    for _ in range(100):
        boundary = "=_relayd_" + digest.hexdigest()[:32]
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary
        digest.update(b"again")
    raise ValueError("no MIME boundary is absent from this report")  # needs a SHA-256 collision


def _top_headers(
    sender: str, action: Action, host: str, now: float, msgid: str, boundary: str, eightbit: bool
) -> bytes:
    fields = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        # Non-ASCII goes as UTF-8 (RFC 6532): the notice then needs SMTPUTF8 anyway.
        ("To", f"<{_one_line(sender)}>"),
        ("Subject", _SUBJECTS[action]),
        ("Date", _date(now)),
        ("Message-ID", msgid),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    if eightbit:
        fields.append(("Content-Transfer-Encoding", "8bit"))
    return _fields(fields)


def _multipart_body(parts: list[bytes], boundary: str) -> bytes:
    delimiter = b"--" + boundary.encode("ascii")
    out = [b"This is a MIME-encapsulated message.\r\n\r\n"]
    for part in parts:
        # Each part ends with CRLF; the CRLF before the next delimiter belongs to the delimiter.
        out += [delimiter, _CRLF, part, _CRLF]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


# --- Maildir ----------------------------------------------------------------------------------


def write_maildir(path: str, notice: Notice) -> str:
    """Deliver `notice.data` into the Maildir at `path` durably (`relayd.daemon.maildir.deliver`);
    the path of the new file. Raises MaildirError when the Maildir cannot be written."""
    try:
        return maildir.deliver(path, notice.data)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise MaildirError(f"cannot write the bounce into Maildir {path}: {detail}") from exc
