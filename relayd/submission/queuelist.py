"""The queue listing in Postfix's `postqueue -p` layout and `postqueue -j`-style JSON records.

Shared by `relayd queue list` and `relayd-sendmail -bp` / `mailq`; no typer or rich here, so the
sendmail front end can list without loading the management CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from relayd.store.listing import Listed, ListedRecipient
from relayd.store.records import RecipientState, State
from relayd.text import sanitize

# What `mailq` shows, as Postfix does: mail not yet delivered nor given up.
WAITING = (State.QUEUED, State.SENDING, State.HELD)
# What `relayd queue list` shows without --state: also failed mail, kept with its reason.
UNFINISHED = (*WAITING, State.FAILED)
EMPTY = "Mail queue is empty"

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


def message_lines(message: Listed, cache: dict[int, str]) -> list[str]:
    """One message's lines: the id with its marker, size, arrival and sender, then
    `  owner=NAME` when its submitter is recorded (relayd's addition to Postfix's layout);
    then each shown recipient, preceded by its reason whenever that differs from the previous
    one (showq_compat's rule, `reason unavailable` included)."""
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
    """One message as `queue list --json` prints it (SPEC §1.2; `postqueue -j`'s spirit)."""
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
    }


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

    store = SqlStore.open_reading(settings.load().database, timeout=fastpath.lock_timeout())
    if store is None:
        write_lines(out, [EMPTY])
        return 0
    with store:
        write_lines(out, listing_blocks(store.listing(WAITING)))
    return 0
