"""`queue flush` and `relayd-sendmail -q`: make mail due, wake the daemon or deliver here, and
(when asked to wait) the sysexits code that sums up the pass."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from relayd import paths
from relayd.daemon.instance import AlreadyRunning, instance_lock
from relayd.settings import Settings
from relayd.store import budget, fastpath
from relayd.store.interface import QueueStore, Store
from relayd.store.queued import MessageState
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode

if TYPE_CHECKING:
    from relayd.daemon import runner

Say = Callable[[str], None]
# Given the number of messages flushed, a context that yields "advance the bar by n".
ProgressFactory = Callable[[int], AbstractContextManager[Callable[[int], None]]]
POLL_SECONDS = 0.1


def _no_progress(_total: int) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda _n: None)


def flush(
    settings: Settings,
    queue_ids: Sequence[str],
    account: str | None,
    *,
    say: Say,
    complain: Say,
    wait: bool = False,
    timeout: float | None = None,
    progress: ProgressFactory = _no_progress,
    clock: Callable[[], float] = time.time,
) -> int:
    """Make the chosen queued mail due now; a running daemon delivers it, else this process
    does (with `progress`). With `wait`, block until every flushed message has had its attempt
    (or `timeout` seconds pass) and return the pass's code (`pass_code`); else 0 once flushed.
    An ID that is not queued is reported with `complain` and makes the exit 69."""
    store = SqlStore.open_existing(settings.database, timeout=fastpath.lock_timeout())
    if store is None:
        for queue_id in queue_ids:
            complain(f"{queue_id}: no such queued message")
        say("nothing to flush")
        return ExitCode.UNAVAILABLE if queue_ids else 0
    with store:
        started = clock()
        flushed = store.make_due(started, queue_ids or None, account)
        missing = sorted(set(queue_ids) - set(flushed))
        for queue_id in missing:
            complain(f"{queue_id}: no such queued message")
        if not flushed:
            say("nothing to flush")
            return ExitCode.UNAVAILABLE if missing else 0
        with progress(len(flushed)) as advance:
            if fastpath.wake(paths.wake_socket()):
                say(f"{len(flushed)} message(s) due now; the daemon delivers them")
                if not wait:
                    return ExitCode.UNAVAILABLE if missing else 0
                if not _await_daemon(store, flushed, started, timeout, advance, clock):
                    complain(f"the daemon did not finish the pass within {timeout:g} s")
                    return ExitCode.TEMPFAIL
                say(f"the daemon's pass: {_outcome(store, flushed, complain)}")
            else:
                try:
                    # A daemon must not start on this queue while this process delivers: it
                    # would take this process's leases for a dead runner's and send again.
                    lock = instance_lock(settings.database)
                except AlreadyRunning:
                    say(f"{len(flushed)} message(s) due now; the running daemon delivers them")
                    return ExitCode.UNAVAILABLE if missing else 0
                try:
                    tally = _deliver_here(store, settings, flushed, advance)
                finally:
                    if lock is not None:
                        os.close(lock)
                say(f"no daemon running; delivered in-process: {tally}")
                if wait:
                    _outcome(store, flushed, complain)
        code = pass_code(store, flushed, started)
    if not wait:
        return ExitCode.UNAVAILABLE if missing else 0
    return code


def _deliver_here(
    store: Store, settings: Settings, flushed: Sequence[str], advance: Callable[[int], None]
) -> runner.Tally:
    from relayd.daemon import (
        runner,  # the delivery engine: only when this process delivers
    )

    drainer = runner.Runner(
        store,
        settings,
        owner=f"flush-{socket.gethostname()}-{os.getpid()}",
        queue_ids=flushed,
    )
    drainer.tally.listener = lambda _state, count: advance(count)
    accounts = {found.account for found in store.states_of(flushed).values()}
    asyncio.run(drainer.drain(sorted(accounts)))
    return drainer.tally


def _finished(found: MessageState, since: float) -> bool:
    """Whether a flushed message's pass is over: it ended, was held, was tried again, or was
    moved to a later try without one (its server was found dead on another message's
    connection, which defers the account's due mail in one statement)."""
    if found.state in (State.SENT, State.FAILED, State.HELD):
        return True
    if found.state is not State.QUEUED:
        return False
    tried = found.last_attempt_at is not None and found.last_attempt_at >= since
    deferred = found.next_attempt_at is not None and found.next_attempt_at > since
    return tried or deferred


def _outcome(store: QueueStore, flushed: Collection[str], complain: Say) -> str:
    """The flushed messages by state now (`N sent, N queued, N held, N failed`), after one line
    on `complain` for each that was not sent, with its reason."""
    found = store.states_of(flushed)
    order = (State.SENT, State.QUEUED, State.HELD, State.FAILED)
    for queue_id in sorted(flushed):
        state = found.get(queue_id)
        if state is not None and state.state is not State.SENT:
            shown = state.state.value
            if state.state is State.QUEUED and state.next_attempt_at is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.next_attempt_at))
                shown = f"{shown} until {when}"
            why = f": {' '.join(state.reason.split())}" if state.reason else ""
            complain(f"{queue_id}: {shown}{why}")
    counts = Counter(state.state for state in found.values())
    return ", ".join(f"{counts[s]} {s.value}" for s in order)


def _await_daemon(
    store: SqlStore,
    flushed: Collection[str],
    since: float,
    timeout: float | None,
    advance: Callable[[int], None],
    clock: Callable[[], float],
) -> bool:
    """Poll the queue until the daemon has tried every flushed message; False on timeout."""
    deadline = None if timeout is None else clock() + timeout
    waiting = set(flushed)
    while True:
        found = store.states_of(waiting)
        done = {q for q in waiting if q not in found or _finished(found[q], since)}
        if waiting - done:  # put off by a rate limit: this pass is over for them (SPEC §8)
            done |= budget.held_back(store, waiting - done, since)
        if done:
            advance(len(done))
            waiting -= done
        if not waiting:
            return True
        if deadline is not None and clock() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def pass_code(store: QueueStore, flushed: Collection[str], since: float) -> int:
    """The pass in one sysexits code: the last attempt's code of a failed message, else of a
    held one (77 for an AUTH refusal, …), else 75 while any is still queued, else 0 (all sent
    or deleted)."""
    found = store.states_of(flushed)
    for wanted in (State.FAILED, State.HELD):
        for queue_id in sorted(q for q, found_q in found.items() if found_q.state is wanted):
            attempts = store.attempts(queue_id)
            if attempts and attempts[-1].started_at >= since and attempts[-1].exit_code:
                return attempts[-1].exit_code
            return ExitCode.TEMPFAIL if wanted is State.HELD else ExitCode.UNAVAILABLE
    if any(f.state in (State.QUEUED, State.SENDING) for f in found.values()):
        return ExitCode.TEMPFAIL
    return 0
