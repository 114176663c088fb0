"""Hold, release and delete queued messages, with the lines to say about each: shared by
`relayd queue …` and the host daemon acting for a user through its submit socket."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode

Say = Callable[[str], None]


def hold_or_release(
    store: SqlStore, queue_ids: Sequence[str], *, hold: bool, say: Say, complain: Say
) -> tuple[int, bool]:
    """Hold or release `queue_ids`; the exit code (69 if any was not found in the state the
    action needs, as Postfix's postsuper reports and goes on) and whether to wake the daemon."""
    if hold:
        changed = store.hold(queue_ids, "held by the user")
    else:
        changed = store.release(queue_ids, time.time())
    states = store.states_of(changed)
    action = "placed on hold" if hold else "released from hold"
    for queue_id in changed:
        if states.get(queue_id, (None,))[0] is State.SENDING:  # its attempt is under way
            later = "placed on hold when" if hold else "no longer held after"
            say(f"{queue_id}: being sent right now; {later} this attempt ends")
        else:
            say(f"{queue_id}: {action}")
    missing = sorted(set(queue_ids) - set(changed))
    need = "queued or being sent" if hold else "held"
    for queue_id in missing:
        complain(f"{queue_id}: no such message {need}")
    return (ExitCode.UNAVAILABLE if missing else 0), bool(changed) and not hold


def delete(store: SqlStore, queue_ids: Sequence[str], *, say: Say, complain: Say) -> int:
    """Delete `queue_ids` with their attempts; never one being sent right now (75)."""
    deleted = store.delete(queue_ids, now=time.time())
    left = store.states_of(set(queue_ids) - set(deleted))
    for queue_id in deleted:
        say(f"{queue_id}: removed")
    code = 0
    for queue_id in sorted(set(queue_ids) - set(deleted)):
        if queue_id in left:
            complain(f"{queue_id}: being sent right now; not removed (hold it, or try again)")
            code = code or ExitCode.TEMPFAIL
        else:
            complain(f"{queue_id}: no such message")
            code = ExitCode.UNAVAILABLE
    return code
