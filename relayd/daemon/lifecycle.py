"""The daemon's lifecycle: instance lock, wake-up socket, APScheduler jobs, signals, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from relayd import paths
from relayd import settings as settings_module
from relayd.daemon import retention, sdnotify, startup, wirelog
from relayd.daemon.activation import inherited
from relayd.daemon.instance import SCAN_INTERVAL, SHUTDOWN_GRACE
from relayd.daemon.netwatch import NetworkWatch
from relayd.daemon.runner import Runner
from relayd.daemon.services import Context, ServiceFactory
from relayd.errors import ConfigError, RelaydError
from relayd.settings import Settings
from relayd.store.dialects import describe
from relayd.store.queued import Lease
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode

# The queue table is the truth: jobs live in memory only, are rebuilt at every start, never
# overlap, and a late one runs once rather than being dropped or repeated.
_JOB = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
_UTC = datetime.UTC

log = logging.getLogger("relayd.daemon.lifecycle")


def _this_kernel() -> str:
    """`daemon-HOST.BOOT`: the owners of daemons on this host since this boot start with it,
    so a daemon can tell its dead predecessors here by their process ids."""
    return f"daemon-{socket.gethostname()}.{wirelog.boot_id()[:8]}"


def default_owner() -> str:
    return f"{_this_kernel()}-{os.getpid()}"


def dead_here(owner: str) -> bool:
    """Whether `owner` is a claim of a daemon of this host and boot whose process is gone."""
    daemon, _, pid = owner.partition("/")[0].rpartition("-")
    if daemon != _this_kernel() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


async def run_daemon(
    settings: Settings,
    *,
    scan_interval: float = SCAN_INTERVAL,
    grace: float = SHUTDOWN_GRACE,
    clock: Callable[[], float] = time.time,
    services: Sequence[ServiceFactory] = (),
) -> int:
    """`relayd daemon`: run until SIGTERM/SIGINT, with `services` beside the runner (the host
    submit socket…); the exit code."""
    lock = startup.lock_queue(settings.database)
    try:
        store = await asyncio.to_thread(SqlStore.open, settings.database)
        try:
            cycle = _Lifecycle(store, settings, lock, scan_interval, grace, clock)
            return await cycle.run(services)
        finally:
            store.close()
    finally:
        if lock is not None:
            os.close(lock)


def _at(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, _UTC)


class _Lifecycle:
    """Start (leases, socket, jobs, READY), the scans, signals, and an orderly stop.

    APScheduler (memory job store) runs the periodic scan, the expired-lease sweep, the
    watchdog ping and a one-shot scan at the earliest retry due before the next periodic
    scan. A wake-up (a submission's datagram, a flush, the network coming back, a drain that
    scheduled retries) starts a scan at once; a wake-up during a scan makes it scan again.
    """

    def __init__(
        self,
        store: SqlStore,
        settings: Settings,
        lock: int | None,
        scan_interval: float,
        grace: float,
        clock: Callable[[], float],
    ) -> None:
        self.store, self.locked = store, lock is not None
        self.scan_interval, self.grace, self.clock = scan_interval, grace, clock
        self.stopped = asyncio.Event()
        self.stopping = False
        self.owner = default_owner()
        self.runner = Runner(store, settings, owner=self.owner, clock=clock, on_idle=self.wake)
        self.scheduler = AsyncIOScheduler(timezone=_UTC)
        self.network = NetworkWatch(self._network_up_soon)
        self._scanning = False
        self._rescan = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, services: Sequence[ServiceFactory]) -> int:
        loop = asyncio.get_running_loop()
        await self._release_leases(everything=self.locked)
        await self._prune_journals()
        context = Context(self.store, lambda: self.runner.settings, self.wake, inherited())
        started = [make(context) for make in services]
        sock = startup.bind_wake_socket(paths.wake_socket())
        loop.add_reader(sock.fileno(), self._on_datagram, sock)
        try:
            for service in started:
                await service.start()
        except BaseException:
            loop.remove_reader(sock.fileno())
            startup.unbind(sock)
            raise
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        watching = self.network.start(loop)
        self._schedule()
        sdnotify.notify("READY=1", "STATUS=started")
        log.info(
            "ready: queue %s, wake-up socket %s, network watch %s",
            self.store_name,
            sock.getsockname(),
            "on" if watching else "unavailable",
        )
        try:
            await self.stopped.wait()
        finally:
            sdnotify.notify("STOPPING=1", "STATUS=stopping")
            self.scheduler.shutdown(wait=False)
            self.network.close()
            loop.remove_reader(sock.fileno())
            startup.unbind(sock)
            for service in started:  # no new mail first, then the runner's transactions
                await service.stop()
            await self.runner.stop(self.grace)
            await self._release_leases(everything=self.locked, stopping=True)
            await self.runner.notifier.wait(timeout=self.grace)
        log.info("stopped")
        return ExitCode.OK

    @property
    def store_name(self) -> str:
        return describe(self.runner.settings.database)  # never a password in the log

    def _schedule(self) -> None:
        """Add the periodic jobs, their run times from the daemon's clock, and start them.

        Every run time is given explicitly: left out, APScheduler would take it from
        `datetime.now()`, not from `self.clock` (which the queue's due times also use).
        APScheduler still fires them by the wall clock, which the default clock (`time.time`) is.
        """
        now = self.clock()
        self._add_periodic(self._scan_now, "scan", self.scan_interval, first=now)
        self._add_periodic(
            self._expire_leases, "leases", self.scan_interval, first=now + self.scan_interval
        )
        self._add_periodic(
            self._retain, "retain", retention.INTERVAL, first=now + retention.START_DELAY
        )
        interval = sdnotify.watchdog_interval()
        if interval is not None:  # pinged from the event loop: a hung loop stops pinging
            self._add_periodic(self._ping, "watchdog", interval, first=now)
        self.scheduler.start()

    def _add_periodic(
        self, job: Callable[[], Any], name: str, seconds: float, *, first: float
    ) -> None:
        every = IntervalTrigger(seconds=seconds, start_date=_at(first), timezone=_UTC)
        self.scheduler.add_job(job, every, id=name, next_run_time=_at(first), **_JOB)

    def wake(self) -> None:
        """Scan now (or once more after the running scan)."""
        if self.stopping:
            return
        if self._scanning:
            self._rescan = True
        else:
            self._spawn(self._scan_now())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_datagram(self, sock: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(512):
                pass
        self.wake()

    def _stop(self) -> None:
        if not self.stopping:
            log.info("stopping: finishing or abandoning transactions in flight")
        self.stopping = True
        self.runner.stopping = True
        self.stopped.set()

    def _reload(self) -> None:
        """SIGHUP: read relayd.toml again (the msmtprc is read at every attempt anyway)."""
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            fresh = settings_module.load()
        except ConfigError as exc:
            log.error("SIGHUP: keeping the current settings: %s", exc.message)
        else:
            if fresh.database != self.runner.settings.database:
                log.warning("SIGHUP: a new database setting applies only after a restart")
                fresh = replace(fresh, database=self.runner.settings.database)
            self.runner.settings = fresh
            log.info("SIGHUP: settings reloaded from %s", fresh.file or "the defaults")
        sdnotify.notify("READY=1")
        self.wake()

    async def _release_leases(self, *, everything: bool, stopping: bool = False) -> None:
        """Return leases left by runners that are gone. With the instance lock, every lease
        (no other daemon runs on this queue, so a `sending` message is one nobody delivers);
        else this daemon's own at a stop, and at the start any expired one and any left by a
        daemon of this host that died."""
        store = self.store

        def find() -> list[Lease]:
            if everything:
                return store.leases(expired_by=sys.float_info.max)
            if stopping:
                return store.leases(owner_prefix=f"{self.owner}/")
            # A shared queue: those that expired, and at once those of a daemon that ran here
            # and died (its journals are here: their flags are exact).
            found = store.leases(expired_by=self.clock())
            mine = store.leases(owner_prefix=_this_kernel())
            return found + [
                lease for lease in mine if dead_here(lease.owner) and lease not in found
            ]

        # No scan: at the start the first scan is due at once anyway.
        await self._requeue(
            "return leases",
            lambda: self._return(find()),
            "returned %d leased message(s) to the queue",
            scan=False,
        )

    async def _prune_journals(self) -> None:
        """At the start: drop the wire journals of claims that hold no lease any more."""
        try:
            leases = await asyncio.to_thread(self.store.leases)
        except RelaydError as exc:
            log.error("wire journals: %s", exc.message)
            return
        await asyncio.to_thread(wirelog.prune, {lease.owner for lease in leases})

    async def _expire_leases(self) -> None:
        """The sweep: leases that ran out (a runner elsewhere died); never a live claim here."""
        await self._requeue(
            "lease sweep",
            lambda: self._return(
                self.store.leases(expired_by=self.clock(), keep=tuple(self.runner.live))
            ),
            "%d lease(s) expired: back in the queue",
        )

    def _return(self, leases: Sequence[Lease]) -> tuple[str, ...]:
        """Return `leases` (in a thread); those whose data may have gone out (their claim's
        journal says so, or there is none to tell) get an `interrupted` attempt and a
        possible-duplicate flag."""
        if not leases:
            return ()
        cut = wirelog.interrupted((lease.queue_id, lease.owner) for lease in leases)
        returned = self.store.release_leases(leases, self.clock(), interrupted=cut)
        wirelog.forget({lease.owner for lease in leases})
        if cut:
            log.warning(
                "%d message(s) were on the wire when their runner stopped: their next attempt "
                "is a possible duplicate",
                len(cut),
            )
        return returned

    async def _requeue(
        self, what: str, change: Callable[[], Collection[str]], done: str, *, scan: bool = True
    ) -> None:
        """Run a store change that makes mail due (in a thread); log it and scan if it did."""
        try:
            changed = await asyncio.to_thread(change)
        except RelaydError as exc:
            log.error("%s: %s", what, exc.message)
            return
        if changed:
            log.info(done, len(changed))
            if scan:
                self.wake()

    async def _scan_now(self) -> None:
        if self._scanning:
            self._rescan = True
            return
        self._scanning = True
        try:
            while not self.stopping:
                self._rescan = False
                await self._scan()
                if not self._rescan:
                    break
        finally:
            self._scanning = False

    async def _scan(self) -> None:
        """Kick every account with due mail; schedule a scan at the next retry if it falls
        before the next periodic scan."""
        now = self.clock()
        try:
            summary = await asyncio.to_thread(self.store.due_summary, now)
        except RelaydError as exc:
            log.error("scan: %s", exc.message)
            return
        for account in summary:
            if account.due:
                self.runner.kick(account.account)
        # No message count: counting reads every queued message (`relayd status` does that).
        sdnotify.notify(
            f"STATUS={len(summary)} account(s) with queued mail, "
            f"{len(self.runner.busy)} delivering; "
            f"since start: {self.runner.tally}"
        )
        later = [a.next_at for a in summary if not a.due and a.next_at is not None]
        if later and min(later) - now < self.scan_interval and not self.stopping:
            self.scheduler.add_job(
                self._scan_now,
                DateTrigger(_at(min(later)), _UTC),
                id="retry-at",
                replace_existing=True,
                **_JOB,
            )

    def _network_up_soon(self) -> None:
        self._spawn(self._network_up())

    async def _network_up(self) -> None:
        """The network is back: mail whose last attempt never reached a server is due now."""
        await self._requeue(
            "network up",
            lambda: self.store.make_due(self.clock(), network_only=True),
            "network up: %d message(s) that failed offline are due now",
        )

    async def _retain(self) -> None:
        """`[retain]`: purge old sent and failed bodies (the settings as SIGHUP left them)."""
        settings = self.runner.settings
        await retention.run(self.store, settings.retain, self.clock(), stop=lambda: self.stopping)

    async def _ping(self) -> None:
        sdnotify.notify("WATCHDOG=1")
