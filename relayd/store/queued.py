"""Records read back from the queue and written by the runner: messages, recipients, attempts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from relayd.store.records import RecipientState, State

__all__ = [
    "AccountDue",
    "Attempt",
    "AttemptRecord",
    "Lease",
    "MessageState",
    "Outcome",
    "QueuedMessage",
    "Recipient",
    "RecipientState",
    "State",
]


@dataclass(frozen=True)
class Recipient:
    """One recipient of a queued message, identified by its position in the envelope."""

    position: int
    address: str
    state: RecipientState = RecipientState.PENDING
    reply_code: int | None = None
    reply_text: str | None = None


@dataclass(frozen=True)
class QueuedMessage:
    """A stored message without its body (read that with `SqlStore.read_data`).

    Times are float Unix seconds (UTC) everywhere in the store.
    """

    queue_id: str
    state: State
    account: str
    overrides: tuple[tuple[str, str | None], ...]
    config_file: str | None
    sender: str
    size: int
    smtputf8: bool
    eightbit: bool
    created_at: float
    next_attempt_at: float | None
    lease_until: float | None
    lease_owner: str | None
    attempts: int
    reason: str | None
    uid: int | None
    recipients: tuple[Recipient, ...]
    last_attempt_at: float | None = None
    network_failure: bool = False  # the last attempt never reached a server (DNS, connect)
    lease_lost: bool = False  # a lease ended without a result: the next attempt may duplicate
    delay_notified: bool = False  # the one delay notice (`warn_after`) has been sent
    user: str | None = None  # the name of `uid` in the password database at submission


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as logged: one row in `attempts`, one msmtp-format log line.

    `reply_code`/`reply` are the server's last reply or the error that ended the attempt;
    `recipients` are the per-recipient results (state and reply) this attempt produced.
    """

    started_at: float
    duration: float
    host: str
    tls: bool
    auth: bool
    exit_code: int
    reply_code: int | None = None
    reply: str | None = None
    recipients: tuple[Recipient, ...] = ()
    possible_duplicate: bool = False
    note: str | None = None  # `interrupted` (cut off by a kill) or `late` (lease lost)


@dataclass(frozen=True)
class Outcome:
    """What an attempt does to its message: retry at `next_attempt_at`, hold, sent or failed."""

    state: State
    next_attempt_at: float | None = None
    reason: str | None = None
    network_failure: bool = False  # the attempt failed before reaching a server
    delay_notified: bool = False  # this attempt sends the message's delay notice
    # The data may have reached the server without its reply (a drop after the final dot):
    # the next attempt is logged as a possible duplicate.
    possible_duplicate: bool = False


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt to commit: its row, the message's new state, and the lease it ran under
    (None: unconditional). Without an attempt the message is settled (a message with no
    recipient left to try; an account that is gone) and no attempt is counted."""

    queue_id: str
    attempt: Attempt | None
    outcome: Outcome
    owner: str | None = None


@dataclass(frozen=True)
class Lease:
    """A message in `sending` and the runner (claim) that holds it."""

    queue_id: str
    owner: str


@dataclass(frozen=True)
class AccountDue:
    """One account with queued mail as a scan sees it: whether any is due, its earliest time.

    No counts: counting is a read of every queued message, and a scan must cost what is due,
    not what is queued.
    """

    account: str
    due: bool
    next_at: float | None


class MessageState(NamedTuple):
    """Where one message stands, as `queue` commands check it after acting on it."""

    state: State
    account: str
    last_attempt_at: float | None
    next_attempt_at: float | None = None
    reason: str | None = None  # the last error or the hold's reason


def mail_size(message: bytes) -> int:
    """The `mailsize=` msmtp logs for a message as read (before dot-stuffing).

    Every line end counts as one byte (CRLF and LF alike; a lone CR is an ordinary byte), and a
    last line without a line end counts one more, for the line end msmtp adds when sending.
    """
    counter = MailSize()
    counter.add(message)
    return counter.value


class MailSize:
    """`mail_size` of a message fed a chunk at a time: the same number whatever the chunk
    boundaries (a CRLF split between two chunks is one line end)."""

    def __init__(self) -> None:
        self._bytes = 0
        self._crlf = 0
        self._last = b""

    def add(self, chunk: bytes) -> None:
        if not chunk:
            return
        split = self._last == b"\r" and chunk.startswith(b"\n")
        self._crlf += chunk.count(b"\r\n") + split
        self._bytes += len(chunk)
        self._last = chunk[-1:]

    @property
    def value(self) -> int:
        unfinished = self._bytes > 0 and self._last != b"\n"
        return self._bytes - self._crlf + unfinished
