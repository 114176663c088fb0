"""What relayd tells people after an attempt: the notify command, bounces and delay notices."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence

from relayd.daemon import bounce
from relayd.daemon.notify import Notifier
from relayd.daemon.recorder import Delivered
from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store.interface import RunnerStore
from relayd.store.queued import QueuedMessage
from relayd.store.records import NewMessage, State

log = logging.getLogger("relayd.daemon.notices")


class Notices:
    """After the results of a batch are committed: run the notify command for held, failed and
    delayed mail, and send or file a DSN for failed and delayed mail per `[bounce] mode`.

    A DSN goes back through the failed message's own account (`mode = "sender"`) as a new
    queued message with the null sender, so it is never itself bounced; `maildir:PATH` files
    it there instead; `none` sends nothing (the failed message stays in the queue with its
    reason either way). A notice that cannot be made or stored is logged, never retried.
    """

    def __init__(
        self,
        store: RunnerStore,
        settings: Callable[[], Settings],
        notifier: Notifier,
        kick: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._notifier = notifier
        self._kick = kick
        self._clock = clock
        self._host: str | None = None  # looked up at the first DSN: getfqdn may ask DNS

    def held(self, message: QueuedMessage, reason: str) -> None:
        """A message held without an attempt (its account is gone or invalid)."""
        self._notify(message, "held", reason)

    async def after(self, remote_mta: str | None, delivered: Sequence[Delivered]) -> None:
        """Everything owed for the committed results of one connection's batch."""
        for item in delivered:
            outcome = item.outcome
            if not item.changed:
                continue
            if outcome.state is State.HELD:
                self._notify(item.message, "held", outcome.reason)
            elif outcome.state is State.FAILED:
                self._notify(item.message, "failed", outcome.reason)
                await self._dsn(item, "failed", remote_mta)
            elif outcome.state is State.QUEUED and outcome.delay_notified:
                self._notify(item.message, "delayed", outcome.reason)
                await self._dsn(item, "delayed", remote_mta)

    def _notify(self, message: QueuedMessage, state: str, reason: str | None) -> None:
        self._notifier.command = self._settings().notify_command  # SIGHUP may have changed it
        self._notifier.notify(
            message.queue_id, state, reason, account=message.account, sender=message.sender
        )

    async def _dsn(self, item: Delivered, action: bounce.Action, remote_mta: str | None) -> None:
        settings = self._settings()
        mode = settings.bounce.mode
        if mode == "none" or not bounce.should_notify(item.message):
            return
        queue_id = item.message.queue_id
        current = await asyncio.to_thread(self._store.get, queue_id)  # recipients as committed
        if current is None:
            return
        if self._host is None:
            self._host = await asyncio.to_thread(socket.getfqdn) or "localhost"
        now = self._clock()
        try:
            notice = bounce.build(
                current,
                item.data,
                action,
                reporting_mta=self._host,
                remote_mta=remote_mta,
                now=now,
                reason=item.outcome.reason,
                retry_until=current.created_at + settings.retry.lifetime,
            )
        except ValueError as exc:
            log.warning("%s: no %s notice: %s", queue_id, action, exc)
            return
        try:
            if mode == "maildir" and settings.bounce.maildir:
                where = await asyncio.to_thread(
                    bounce.write_maildir, settings.bounce.maildir, notice
                )
                log.info("%s: %s notice written to %s", queue_id, action, where)
                return
            dsn_id = await asyncio.to_thread(self._store.enqueue, _as_new(current, notice), now)
        except RelaydError as exc:
            log.error("%s: cannot store the %s notice: %s", queue_id, action, exc.message)
            return
        log.info("%s: %s notice to <%s> queued as %s", queue_id, action, notice.recipient, dsn_id)
        self._kick(current.account)


def _as_new(message: QueuedMessage, notice: bounce.Notice) -> NewMessage:
    """The DSN as a queued message through the original's account and options."""
    return NewMessage(
        account=message.account,
        overrides=message.overrides,
        sender=notice.sender,
        recipients=(notice.recipient,),
        data=notice.data,
        smtputf8=notice.smtputf8,
        eightbit=notice.eightbit,
        config_file=message.config_file,
    )
