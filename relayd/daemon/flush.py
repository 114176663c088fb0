"""`queue flush` and `relayd-sendmail -q`: make mail due, wake the daemon or deliver here, and
(when asked to wait) the sysexits code that sums up the pass."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from relayd import paths
from relayd.daemon.instance import AlreadyRunning, instance_lock
from relayd.settings import Settings
from relayd.store import budget, fastpath
from relayd.store.interface import QueueStore, Store
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
    accounts = {state_account[1] for state_account in store.states_of(flushed).values()}
    asyncio.run(drainer.drain(sorted(accounts)))
    return drainer.tally


def _finished(state: State, last_attempt: float | None, since: float) -> bool:
    """Whether a flushed message's pass is over: it ended, was held, or was tried again."""
    if state in (State.SENT, State.FAILED, State.HELD):
        return True
    return state is State.QUEUED and last_attempt is not None and last_attempt >= since


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
        done = {q for q in waiting if q not in found or _finished(*_state_time(found[q]), since)}
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


def _state_time(found: tuple[State, str, float | None]) -> tuple[State, float | None]:
    return found[0], found[2]


def pass_code(store: QueueStore, flushed: Collection[str], since: float) -> int:
    """The pass in one sysexits code: the last attempt's code of a failed message, else of a
    held one (77 for an AUTH refusal, …), else 75 while any is still queued, else 0 (all sent
    or deleted)."""
    found = store.states_of(flushed)
    for wanted in (State.FAILED, State.HELD):
        for queue_id in sorted(q for q, (state, _, _) in found.items() if state is wanted):
            attempts = store.attempts(queue_id)
            if attempts and attempts[-1].started_at >= since and attempts[-1].exit_code:
                return attempts[-1].exit_code
            return ExitCode.TEMPFAIL if wanted is State.HELD else ExitCode.UNAVAILABLE
    if any(state in (State.QUEUED, State.SENDING) for state, _, _ in found.values()):
        return ExitCode.TEMPFAIL
    return 0
