"""The message and recipient states, and NewMessage (from `relayd.store.submitted`).

The sendmail hot path imports `relayd.store.submitted` instead: this module needs enum. The
records read back from the store and written by the runner are in `relayd.store.queued`.
"""

from __future__ import annotations

import enum

from relayd.store.submitted import NewMessage

__all__ = ["NewMessage", "RecipientState", "State"]


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
