"""The queue runner: per-account drain tasks, each with its connections, and what they did."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from relayd.accounts import secrets
from relayd.accounts.account import Account
from relayd.accounts.oauth2 import Tokens
from relayd.accounts.stored import account_for
from relayd.daemon import drain, retry
from relayd.daemon.limits import Limiter
from relayd.daemon.notices import Notices
from relayd.daemon.notify import Notifier
from relayd.daemon.recorder import Delivered, Recorder
from relayd.daemon.wirelog import WireLog
from relayd.errors import ConfigError, RelaydError
from relayd.settings import Settings
from relayd.store.interface import RunnerStore
from relayd.store.queued import AttemptRecord, Outcome, QueuedMessage
from relayd.store.records import State

log = logging.getLogger("relayd.daemon.lifecycle")


@dataclass
class Tally:
    """What the attempts of a pass did to their messages, by the state each moved to."""

    states: dict[State, int] = field(default_factory=lambda: defaultdict(int))
    listener: Callable[[State, int], None] | None = None  # e.g. `queue flush`'s progress bar

    def add(self, state: State, count: int = 1) -> None:
        self.states[state] += count
        if self.listener is not None and count:
            self.listener(state, count)

    def __str__(self) -> str:
        order = (State.SENT, State.QUEUED, State.HELD, State.FAILED)
        return ", ".join(f"{self.states[s]} {s.value}" for s in order)


def _daemon_password(account: Account) -> str | None:
    """msmtp's password order without any prompt (Tokens runs it in a thread)."""
    return secrets.lookup_password(account).password


class Runner:
    """Drains accounts: one task per account, `connections_per_account` connections in each.

    A connection claims up to `messages_per_connection` due messages, resolves their account
    from the current msmtprc (gone or invalid: the messages are held with the reason) and
    delivers them with `drain.deliver_claimed`; it claims again until nothing is due. A kick
    while an account's drain runs marks it dirty, and the drain runs once more. Results of all
    connections share one group-committing Recorder. A connection that fails before carrying
    any message marks the account's destination dead for the pass: no more claims for it, and
    its due mail moves to the next try in one statement (SPEC §4).
    """

    def __init__(
        self,
        store: RunnerStore,
        settings: Settings,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        queue_ids: Sequence[str] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner
        self.tally = Tally()
        self.stopping = False
        self.live: set[str] = set()  # owners (claims) being delivered: never swept
        self._dead: set[str] = set()  # accounts whose destination is down in this pass
        # Accounts whose destination was down at their last connection: the next pass claims
        # one message first (a probe), not a connection's worth to give back when it is still
        # refused; the first connection that carries a message ends it.
        self._refused: set[str] = set()
        self.recorder = Recorder(store)
        self.notifier = Notifier(settings.notify_command)
        self.notices = Notices(store, lambda: self.settings, self.notifier, self.kick, clock=clock)
        self.limits = Limiter(store, lambda: self.settings, clock)
        # OAuth2 access tokens live here, in memory, shared by every connection of the daemon.
        self.tokens = Tokens(lambda: self.settings.oauth2, _daemon_password, clock=clock)
        self._clock = clock
        self._queue_ids = queue_ids
        self._on_idle = on_idle
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._claims = itertools.count(1)

    @property
    def lease_seconds(self) -> float:
        return retry.lease_seconds(self.settings)

    @property
    def busy(self) -> tuple[str, ...]:
        return tuple(self._workers)

    def kick(self, account: str) -> None:
        """Drain `account` now (or once more after its running drain)."""
        if self.stopping:
            return
        if account in self._workers:
            self._dirty.add(account)
        else:
            self._workers[account] = asyncio.create_task(self._account(account))

    async def drain(self, accounts: Iterable[str]) -> None:
        """Drain `accounts` and wait until every drain has ended (`queue flush` in-process)."""
        for account in accounts:
            self.kick(account)
        while self._workers:
            await asyncio.wait(list(self._workers.values()))
        await self.recorder.drain()
        await self.notifier.wait(timeout=10.0)

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give in-flight deliveries `grace` seconds, then abandon them.

        Results already in are committed before this returns, unless the store refuses them
        for all of `grace` too: then they are given up, and their messages stay leased (the
        caller returns them flagged as possible duplicates).
        """
        self.stopping = True
        tasks = list(self._workers.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("abandoned %d account drain(s) in flight", len(pending))
                await asyncio.wait(pending)
        if self.recorder.failing is not None:  # the store refuses writes: do not wait
            self.recorder.abandon()
        try:
            await asyncio.wait_for(self.recorder.drain(), timeout=grace)
        except TimeoutError:
            self.recorder.abandon()
            await self.recorder.drain()

    async def _account(self, account: str) -> None:
        worked = False
        self._dead.discard(account)
        try:
            while True:
                self._dirty.discard(account)
                count = self.settings.delivery.connections_per_account
                results = await asyncio.gather(*(self._connection(account) for _ in range(count)))
                worked = worked or any(n > 0 for n in results)
                if min(results) < 0 or self.stopping or account not in self._dirty:
                    break
        finally:
            del self._workers[account]  # no await since the dirty check: no kick is lost
        if worked and self._on_idle is not None:
            self._on_idle()  # retries were scheduled: let the scheduler see their times

    async def _connection(self, account: str) -> int:
        """Claim and deliver until nothing is due; how many messages it claimed, -1 when it
        stopped on an error."""
        claimed_total = 0
        try:
            while not self.stopping and account not in self._dead:
                # Each claim its own owner: if a lease ran out and the message was claimed
                # again, the late result of the first claim cannot overwrite the second's.
                owner = f"{self.owner}/{next(self._claims)}"
                self.live.add(owner)
                # The journal exists before the claim: a kill right after the claim leaves
                # an empty one, so nothing of it is flagged. It is kept if the claim's
                # results could not all be committed (the next start reads it).
                wire = WireLog(owner)
                claimed: Sequence[QueuedMessage] = ()
                done = False
                try:
                    claimed = await self._claim(account, owner)
                    if claimed:
                        claimed_total += len(claimed)
                        await self._deliver(claimed, owner, wire)
                    done = True
                finally:
                    wire.close(keep=bool(claimed) and not done)
                    self.live.discard(owner)
                if not claimed:
                    break
        except RelaydError as exc:  # the queue cannot be read or written: the next scan retries
            log.error("account %r: %s", account, exc.message)
            return -1
        except Exception:  # a bug: report it, keep the other accounts running
            log.exception("account %r: delivery stopped by an internal error", account)
            return -1
        return claimed_total

    async def _claim(self, account: str, owner: str) -> Sequence[QueuedMessage]:
        # [limits.ACCOUNT] or a pause: at most what the budget allows (none: the mail waits).
        wanted = 1 if account in self._refused else self.settings.delivery.messages_per_connection
        return await self.limits.claim(
            account, wanted, owner, lambda n: self._claim_rows(account, owner, n)
        )

    async def _claim_rows(self, account: str, owner: str, limit: int) -> Sequence[QueuedMessage]:
        # The database half in a thread, the records made here: a thread busy in Python
        # holds the GIL that every socket call of the event loop needs back.
        rows = await asyncio.to_thread(
            self.store.claim_rows,
            account,
            self._clock(),
            self.lease_seconds,
            owner,
            limit,
            queue_ids=self._queue_ids,
        )
        return self.store.build_claimed(rows)

    async def _deliver(self, claimed: Sequence[QueuedMessage], owner: str, wire: WireLog) -> None:
        # One account name may carry several command-line variants (-a work --port 2525):
        # each resolves to its own Account and connection.
        groups: dict[tuple[object, ...], list[QueuedMessage]] = {}
        for message in claimed:
            key = (message.account, message.config_file, message.overrides)
            groups.setdefault(key, []).append(message)
        for messages in groups.values():
            first = messages[0]
            try:
                account = await asyncio.to_thread(
                    account_for, first.account, first.config_file, first.overrides
                )
            except ConfigError as exc:
                await self._hold(messages, exc.message, owner)
                continue
            drained = await drain.deliver_claimed(
                self.store,
                account,
                messages,
                self.settings,
                owner=owner,
                wire=wire,
                recorder=self.recorder,
                password=self.tokens.password,
                renew=self.tokens.renew,
                prog="relayd",
                clock=self._clock,
                throttle=self.limits.throttle(first.account),
            )
            results = [item.result for item in drained.delivered]
            await self.limits.after(first.account, results, drained.paused)
            for item in drained.delivered:
                if item.changed:
                    self.tally.add(item.outcome.state)
            if drained.dead is not None:
                await self._defer(first.account, drained.dead)
            elif drained.delivered:
                self._refused.discard(first.account)  # the destination answers again
            await self.notices.after(account.host or account.socket, drained.delivered)

    async def _defer(self, account: str, dead: Delivered) -> None:
        """The destination is down: claim nothing more for `account` in this pass, and move
        its other due mail to the tried message's next time, in one statement."""
        self._dead.add(account)
        self._refused.add(account)
        now = self._clock()
        until = dead.outcome.next_attempt_at or now + self.settings.retry.first
        deferred = await asyncio.to_thread(
            self.store.defer_due, account, now, until, network_failure=dead.result.network
        )
        log.warning(
            "account %r: %s; %d more message(s) wait until the next try",
            account,
            dead.result.error or "connection failed",
            len(deferred),
        )

    async def _hold(self, messages: Sequence[QueuedMessage], reason: str, owner: str) -> None:
        """Hold claimed messages whose account is gone or invalid (no attempt is made)."""
        outcome = Outcome(State.HELD, reason=reason)
        futures = [
            self.recorder.record(AttemptRecord(m.queue_id, None, outcome, owner)) for m in messages
        ]
        self.recorder.flush()
        changed = await asyncio.gather(*futures)
        held = [m for m, ok in zip(messages, changed, strict=True) if ok]
        log.warning("held %s: %s", " ".join(sorted(m.queue_id for m in held)), reason)
        self.tally.add(State.HELD, len(held))
        for message in held:
            self.notices.held(message, reason)
