"""What front ends hand the queue: NewMessage, and the message and recipient states.

On the sendmail hot path, so it holds only what submission needs (each dataclass costs about
half a millisecond to create at import); the records read back from the store and written by
the runner are in `relayd.store.queued`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.StrEnum):
    """A message's place in the queue (SPEC §4)."""

    QUEUED = "queued"
    SENDING = "sending"
    HELD = "held"
    SENT = "sent"
    FAILED = "failed"


class RecipientState(enum.StrEnum):
    """One recipient's delivery state."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class NewMessage:
    """What a front end (relayd-sendmail, the listener) hands the store to queue.

    `overrides` are the msmtp command-line options that change the account, as (option, value)
    pairs in command-line order, e.g. (("host", "mx.example"), ("port", "2525")); they are stored
    as a structured list and never re-split. `sender` is the envelope sender, '' for `<>`.
    `data` is exactly what goes on the wire before dot-stuffing (CRLF line ends). `uid` is the
    submitting user (None when unknown; the sendmail front end passes `os.getuid()`).
    """

    account: str
    overrides: tuple[tuple[str, str | None], ...]
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool = False
    eightbit: bool = False
    config_file: str | None = None
    uid: int | None = None

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a queued message needs at least one recipient")
