"""RFC 3464 delivery status notifications for failed or delayed queued mail; Maildir output.

This module assembles the multipart/report; relayd.daemon.bounce_parts writes its parts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from relayd.daemon import maildir
from relayd.daemon.bounce_parts import (
    CRLF,
    Action,
    Report,
    ascii_host,
    header_fields,
    headers_part,
    rfc_date,
    status_part,
    text_part,
    utf8,
)
from relayd.errors import RelaydError
from relayd.store.queued import QueuedMessage, Recipient, RecipientState
from relayd.sysexits import ExitCode
from relayd.text import sanitize

__all__ = ["Action", "MaildirError", "Notice", "build", "should_notify", "write_maildir"]

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
    host = ascii_host(reporting_mta)
    remote = ascii_host(remote_mta) if remote_mta else None
    msgid = sanitize(message_id, "header") if message_id else _fresh_message_id(host, now)
    report = Report(message, recipients, action, host, remote, now, reason, retry_until)
    parts = [text_part(report), status_part(report), headers_part(original)]
    boundary = _boundary(parts, msgid)
    eightbit_body = any(not part.isascii() for part in parts)
    head = _top_headers(message.sender, action, host, now, msgid, boundary, eightbit_body)
    data = head + CRLF + _multipart_body(parts, boundary)
    return Notice(
        sender="",
        recipient=message.sender,
        data=data,
        eightbit=not data.isascii(),
        smtputf8=not message.sender.isascii(),
    )


def _reported(message: QueuedMessage, action: Action) -> tuple[Recipient, ...]:
    wanted = _REPORTED[action]
    chosen = (r for r in message.recipients if r.state in wanted)
    return tuple(sorted(chosen, key=lambda r: r.position))


def _fresh_message_id(host: str, now: float) -> str:
    return f"<{int(now)}.{secrets.token_hex(8)}@{host}>"


# --- the whole message ----------------------------------------------------------------------


def _boundary(parts: list[bytes], msgid: str) -> str:
    """A boundary derived from the content (so the output is deterministic) and absent from it."""
    digest = hashlib.sha256(utf8(msgid) + b"".join(parts))
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
        ("To", f"<{sanitize(sender, 'header')}>"),
        ("Subject", _SUBJECTS[action]),
        ("Date", rfc_date(now)),
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
    return header_fields(fields)


def _multipart_body(parts: list[bytes], boundary: str) -> bytes:
    delimiter = b"--" + boundary.encode("ascii")
    out = [b"This is a MIME-encapsulated message.\r\n\r\n"]
    for part in parts:
        # Each part ends with CRLF; the CRLF before the next delimiter belongs to the delimiter.
        out += [delimiter, CRLF, part, CRLF]
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
