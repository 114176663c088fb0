"""Rate limits in the runner: an account's budget before and after each claim, and the pause
after a provider's rate-limit reply (SPEC §8).

An account without `[limits.ACCOUNT]` costs nothing here until a rate reply pauses it: the
checks are dictionary lookups, and the queue is read only for limited or paused accounts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from relayd.daemon import drain
from relayd.delivery.result import DeliveryResult, Disposition
from relayd.settings import AccountLimits, Settings
from relayd.store.budget import Budgets, WritingStore, pause_reason
from relayd.store.queued import Lease, QueuedMessage

log = logging.getLogger("relayd.daemon.limits")
_NO_BUDGET = AccountLimits()  # an account paused without [limits.ACCOUNT]: the default back-off


class AccountThrottle:
    """One account's pause as a delivery sees it (`drain.Throttle`)."""

    def __init__(self, limiter: Limiter, account: str) -> None:
        self._limiter = limiter
        self._account = account

    def halted(self) -> bool:
        """Whether the account is paused: send nothing more on this connection."""
        until = self._limiter.paused.get(self._account)
        return until is not None and until > self._limiter.clock()

    async def pause(self, result: DeliveryResult) -> tuple[float, str]:
        """The server answered `result` with a rate limit: pause the account (shared by every
        daemon on the queue); until when, and the reason its mail shows."""
        return await self._limiter.pause(self._account, result)


class Limiter:
    """Budgets and pauses of every account for one runner; the state lives in the queue."""

    def __init__(
        self, store: WritingStore, settings: Callable[[], Settings], clock: Callable[[], float]
    ) -> None:
        self._budgets = Budgets(store)
        self._settings = settings
        self.clock = clock
        self.paused: dict[str, float] = {}  # accounts this runner saw paused, until when
        self._levels: dict[str, int] = {}  # accounts whose back-off level is above 0
        self._pause_reasons: dict[str, str] = {}
        self._turns: dict[str, asyncio.Lock] = {}  # limited accounts: one claim at a time

    def _limits(self, account: str) -> AccountLimits | None:
        return self._settings().limits_for(account)

    def throttle(self, account: str) -> AccountThrottle:
        return AccountThrottle(self, account)

    async def claim(
        self,
        account: str,
        wanted: int,
        owner: str,
        claim: Callable[[int], Awaitable[Sequence[QueuedMessage]]],
    ) -> Sequence[QueuedMessage]:
        """`claim(n)` up to `wanted` messages of `account` as its budget allows, and spend the
        budget on them in order: those that may go now. Those over the budget go back to the
        queue until their window opens, with the reason (so does its due mail when the account
        is paused or the budget is spent). A limited account's claims take turns, so that its
        mail goes out in arrival order."""
        limits = self._limits(account)
        if limits is None and account not in self.paused:
            return await claim(wanted)
        async with self._turns.setdefault(account, asyncio.Lock()):
            size = await self._claim_size(account, limits, wanted)
            claimed = await claim(size) if size else ()
            if limits is None or not claimed or not limits.windows():
                return claimed
            costs = [(Lease(m.queue_id, owner), len(drain.pending(m))) for m in claimed]
            admitted, reason = await asyncio.to_thread(
                self._budgets.spend, account, limits, costs, self.clock()
            )
        if reason is not None:
            waiting = len(claimed) - admitted
            log.info("account %r: %d message(s) wait: %s", account, waiting, reason)
        return claimed[:admitted]

    async def _claim_size(self, account: str, limits: AccountLimits | None, wanted: int) -> int:
        """How many messages a claim may take now: 0 when the account is paused or its budget
        is spent (then its due mail waits with the reason)."""
        gate = await asyncio.to_thread(
            self._budgets.gate, account, limits or _NO_BUDGET, self.clock(), wanted
        )
        self._note_level(account, gate.level)
        if gate.allowed == 0:
            if gate.paused and gate.until is not None:
                self.paused[account] = gate.until
            log.info("account %r: %s", account, gate.reason)
            return 0
        self.paused.pop(account, None)
        return wanted if gate.allowed is None else min(wanted, gate.allowed)

    async def pause(self, account: str, result: DeliveryResult) -> tuple[float, str]:
        reply = result.reply
        said = " ".join((f"{reply.code}", *reply.lines)) if reply else (result.error or "")
        now = self.clock()
        pause = await asyncio.to_thread(
            self._budgets.pause, account, self._limits(account) or _NO_BUDGET, now, said
        )
        self.paused[account] = pause.until
        self._note_level(account, pause.level)
        reason = pause.reason or pause_reason("", pause.until)
        self._pause_reasons[account] = reason
        log.warning("account %r: %s", account, reason)
        return pause.until, reason

    async def after(
        self, account: str, results: Sequence[DeliveryResult], paused: float | None
    ) -> None:
        """After a delivery: a pause makes the account's other mail wait with its reason; a
        success once a pause is over resets the back-off."""
        if paused is not None:
            reason = self._pause_reasons.get(account, pause_reason("", paused))
            await asyncio.to_thread(self._budgets.defer, account, paused, reason, inclusive=True)
            return
        if self._levels.get(account) and any(r.disposition is Disposition.SENT for r in results):
            await asyncio.to_thread(self._budgets.succeeded, account)
            self._levels.pop(account, None)

    def _note_level(self, account: str, level: int) -> None:
        if level > 0:
            self._levels[account] = level
        else:
            self._levels.pop(account, None)
