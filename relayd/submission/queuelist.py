"""The queue listing in Postfix's `postqueue -p` layout and `postqueue -j`-style JSON records.

Shared by `relayd queue list` and `relayd-sendmail -bp` / `mailq`; no typer or rich here, so the
sendmail front end can list without loading the management CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from relayd.store.fromrows import reply_text
from relayd.store.queued import Attempt, QueuedMessage
from relayd.store.records import RecipientState, State
from relayd.sysexits import ExitCode
from relayd.text import sanitize

if TYPE_CHECKING:  # the listing's reader needs SQLAlchemy; `queue show` does without it
    from relayd.store.listing import Listed, ListedRecipient

# What `mailq` shows, as Postfix does: mail not yet delivered nor given up.
WAITING = (State.QUEUED, State.SENDING, State.HELD)
# What `relayd queue list` shows without --state: also failed mail, kept with its reason.
UNFINISHED = (*WAITING, State.FAILED)
EMPTY = "Mail queue is empty"
PURGED = "the body was purged under [retain]; the envelope, recipients and attempts are kept"

# After the id, as Postfix marks active (`*`) and held (`!`) mail; relayd keeps finished mail
# too, marked `-` (failed) and `+` (sent).
MARKERS = {
    State.QUEUED.value: "",
    State.SENDING.value: "*",
    State.HELD.value: "!",
    State.FAILED.value: "-",
    State.SENT.value: "+",
}
# Postfix's layout for long queue ids (ours have 12 characters): postqueue/showq_compat.c.
HEADINGS = (
    f"{'----Queue ID-----':<17} {'--Size--':>8} {'---Arrival Time----':<19} "
    "--Sender/Recipient------"
)
_RECIPIENT_INDENT = " " * (17 + 1 + 8 + 1 + 19 + 1)
_NULL_SENDER = "MAILER-DAEMON"  # how Postfix lists `<>`
HIDDEN = "(another user's message)"


def _arrival(timestamp: float, cache: dict[int, str]) -> str:
    """asctime's first 19 characters (`Tue Nov 24 15:38:37`), cached per second."""
    second = int(timestamp)
    found = cache.get(second)
    if found is None:
        found = cache[second] = time.asctime(time.localtime(second))[:19]
    return found


_SENT, _FAILED = RecipientState.SENT.value, RecipientState.FAILED.value


def shown_recipients(message: Listed) -> tuple[ListedRecipient, ...]:
    """The recipients a listing shows: those not yet delivered, or all of a sent message."""
    waiting = tuple(r for r in message.recipients if r.state != _SENT)
    return waiting or message.recipients


def recipient_reason(message: Listed, recipient: ListedRecipient) -> str | None:
    """Why `recipient` is still listed: its own final reply if it failed, else the message's
    last error or hold reason, else the last reply it got."""
    if recipient.state == _FAILED:
        return recipient.reply or message.reason
    return message.reason or recipient.reply


def reason_line(reason: str) -> str:
    """`(reason)` right-aligned to column 78 when it fits, as showq_compat prints it."""
    return f"{'':{max(0, 76 - len(reason))}}({reason})"


def hidden(message: Listed) -> bool:
    """Whether this is another user's message listed through the host socket: its envelope
    (sender, recipients, reason) is not shown (every stored message has a recipient)."""
    return not message.recipients


def message_lines(message: Listed, cache: dict[int, str]) -> list[str]:
    """One message's lines: the id with its marker, size, arrival and sender, then
    `  owner=NAME` when its submitter is recorded (relayd's addition to Postfix's layout);
    then each shown recipient, preceded by its reason whenever that differs from the previous
    one (showq_compat's rule, `reason unavailable` included)."""
    if hidden(message):
        sender = HIDDEN
    else:
        sender = sanitize(message.sender, "terminal") if message.sender else _NULL_SENDER
    marked = message.queue_id + MARKERS.get(message.state, "?")
    arrival = _arrival(message.created_at, cache)
    first = f"{marked:<17} {message.size:>8} {arrival} {sender}"
    owner = message.owner
    if owner is not None:
        first += "  owner=" + sanitize(owner, "terminal")
    lines = [first]
    previous = ""
    for recipient in shown_recipients(message):
        reason = recipient_reason(message, recipient)
        reason = sanitize(reason, "terminal") if reason else ""
        if reason != previous:
            previous = reason
            lines.append(reason_line(reason or "reason unavailable"))
        lines.append(_RECIPIENT_INDENT + sanitize(recipient.address, "terminal"))
    return lines


def listing_blocks(messages: Iterable[Listed]) -> Iterator[str]:
    """The whole `postqueue -p` listing, one string a message (lines joined): the headings
    first, a blank line between messages, then `-- N Kbytes in M Requests.` or, for no
    message at all, `Mail queue is empty`."""
    count = size = 0
    cache: dict[int, str] = {}
    for message in messages:
        lines = message_lines(message, cache)
        lines.insert(0, HEADINGS if count == 0 else "")
        yield "\n".join(lines)
        count += 1
        size += message.size
    if count == 0:
        yield EMPTY
        return
    yield f"\n-- {size // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}."


def json_record(message: Listed) -> dict[str, Any]:
    """One message as `queue list --json` prints it (SPEC §1.2; `postqueue -j`'s spirit);
    another user's, listed through the host socket, has `hidden` true and null envelope."""
    return {
        "queue_id": message.queue_id,
        "state": message.state,
        "account": message.account,
        "arrival_time": int(message.created_at),
        "message_size": message.size,
        "sender": message.sender,
        "recipients": [
            {"address": r.address, "state": r.state, "reply": r.reply} for r in message.recipients
        ],
        "attempts": message.attempts,
        "next_attempt": (
            int(message.next_attempt_at)
            if message.next_attempt_at is not None and message.state == State.QUEUED.value
            else None
        ),
        "reason": message.reason,
        "owner": message.owner_user,
        "owner_uid": message.owner_uid,
        "hidden": hidden(message),
    } | ({"sender": None, "recipients": None} if hidden(message) else {})


def write_lines(out: TextIO, lines: Iterable[str]) -> None:
    """Write `lines` (each may hold several) in chunks of a thousand. A reader that went away
    (`mailq | head`) ends the listing quietly, as for any Unix filter."""
    chunk: list[str] = []
    try:
        for line in lines:
            chunk.append(line)
            if len(chunk) >= 1024:
                out.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            out.write("\n".join(chunk) + "\n")
        out.flush()
    except BrokenPipeError:
        # Nothing more can be shown; point stdout at /dev/null so the exit flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def print_mailq(out: TextIO) -> int:
    """`mailq` / `relayd-sendmail -bp`: the waiting mail in Postfix's layout; exit code 0."""
    from relayd import settings
    from relayd.store import fastpath
    from relayd.store.sql import SqlStore
    from relayd.submission import client, route

    way = route.decide()
    if way.sock is not None:  # a user of the host queue: ask the daemon
        reply, found = client.listing(way.sock, [state.value for state in WAITING], None)
        if reply.code != 0:
            return client.report(reply, "mailq")
        write_lines(out, listing_blocks(found))
        return 0
    store = SqlStore.open_reading(settings.load().database, timeout=fastpath.lock_timeout())
    if store is None:
        write_lines(out, [EMPTY])
        return 0
    with store:
        write_lines(out, listing_blocks(store.listing(WAITING)))
    return 0


HEAD_LIMIT = 1 << 20  # the most of a body `queue show` reads for its headers


def header_head(chunks: Iterable[bytes]) -> bytes | None:
    """The start of a body read a chunk at a time, up to the end of its header block (or
    HEAD_LIMIT bytes): what `queue show` parses for headers. None: no body (purged)."""
    head = b""
    seen = False
    for chunk in chunks:
        seen = True
        head += chunk
        if b"\n\n" in head or b"\n\r\n" in head or len(head) >= HEAD_LIMIT:
            break
    return head[:HEAD_LIMIT] if seen else None


def show_record(
    message: QueuedMessage, attempts: Sequence[Attempt], headers: list[tuple[str, str]] | None
) -> dict[str, Any]:
    """Everything `queue show --json` prints about one message; `headers` None: its body was
    purged under [retain]."""
    return {
        "queue_id": message.queue_id,
        "state": message.state.value,
        "account": message.account,
        "config_file": message.config_file,
        "overrides": [list(pair) for pair in message.overrides],
        "sender": message.sender,
        "message_size": message.size,
        "arrival_time": message.created_at,
        "next_attempt": message.next_attempt_at,
        "last_attempt": message.last_attempt_at,
        "lease_owner": message.lease_owner,
        "lease_until": message.lease_until,
        "attempts": message.attempts,
        "reason": message.reason,
        "submitted_uid": message.uid,
        "submitted_user": message.user,
        "possible_duplicate_next": message.lease_lost,
        "recipients": [
            {
                "address": r.address,
                "state": r.state.value,
                "reply": reply_text(r.reply_code, r.reply_text),
            }
            for r in message.recipients
        ],
        "attempt_log": [
            {
                "started_at": a.started_at,
                "duration": round(a.duration, 6),
                "host": a.host,
                "tls": a.tls,
                "auth": a.auth,
                "exit_code": a.exit_code,
                "exit_name": _exit_name(a.exit_code),
                "reply": reply_text(a.reply_code, a.reply),
                "possible_duplicate": a.possible_duplicate,
                "note": a.note,
                "recipients": [
                    {
                        "address": r.address,
                        "state": r.state.value,
                        "reply": reply_text(r.reply_code, r.reply_text),
                    }
                    for r in a.recipients
                ],
            }
            for a in attempts
        ],
        "body_purged": headers is None,
        "headers": [list(pair) for pair in headers or ()],
    }


def _exit_name(code: int) -> str:
    try:
        return ExitCode(code).ex_name
    except ValueError:
        return str(code)


def owner_text(user: str | None, uid: int | None) -> str:
    """Who submitted a message, as `queue show` says it: `alice (uid 1000)`, `uid 1000` when
    the uid had no name, `not recorded` when neither was stored."""
    if uid is None:
        return user or "not recorded"
    return f"uid {uid}" if user is None else f"{user} (uid {uid})"
