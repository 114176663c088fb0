"""The queue runner: per-account drains on asyncio, woken by submissions and a periodic scan."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from relayd import drain, paths, retry, sdnotify
from relayd import settings as settings_module
from relayd.accounts import secrets
from relayd.accounts.account import Account
from relayd.accounts.stored import account_for
from relayd.errors import ConfigError, RelaydError
from relayd.settings import Settings
from relayd.store.dialects import describe
from relayd.store.queued import QueuedMessage
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode

SCAN_INTERVAL = 30.0  # recovers lost wake-ups and due retries (SPEC §4: at most 30 s)
SHUTDOWN_GRACE = 5.0  # in-flight transactions get this long after SIGTERM, then are abandoned
LOCK_SUFFIX = ".daemon.lock"

log = logging.getLogger("relayd.daemon")


class AlreadyRunning(RelaydError):
    """Another daemon holds the instance lock of this SQLite queue."""

    default_code = ExitCode.TEMPFAIL


@dataclass
class Tally:
    """What the attempts of a pass did to their messages, by the state each moved to."""

    states: dict[State, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, state: State, count: int = 1) -> None:
        self.states[state] += count

    def __str__(self) -> str:
        order = (State.SENT, State.QUEUED, State.HELD, State.FAILED)
        return ", ".join(f"{self.states[s]} {s.value}" for s in order)


@dataclass(frozen=True)
class Due:
    """What a scan found: accounts with mail due now, the next retry time, and counts."""

    accounts: tuple[str, ...]
    next_at: float | None
    queued: int


def scan(messages: Iterable[QueuedMessage], now: float) -> Due:
    """Which accounts have queued mail due at `now`, and when the next one falls due."""
    accounts: dict[str, None] = {}
    later: list[float] = []
    queued = 0
    for message in messages:
        queued += 1
        when = message.next_attempt_at
        if when is None:  # cannot be claimed; counting it as due would spin the scheduler
            continue
        if when <= now:
            accounts[message.account] = None
        else:
            later.append(when)
    return Due(tuple(accounts), min(later, default=None), queued)


async def _daemon_password(account: Account) -> str | None:
    """msmtp's password order without any prompt (keyring lookups may block: a thread)."""
    return (await asyncio.to_thread(secrets.lookup_password, account)).password


class Runner:
    """Drains accounts: one task per account, `connections_per_account` connections in each.

    A connection claims up to `messages_per_connection` due messages, resolves their account
    from the current msmtprc (gone or invalid: the messages are held with the reason) and
    delivers them with `drain.deliver_claimed`; it claims again until nothing is due. A kick
    while an account's drain runs marks it dirty, and the drain runs once more.
    """

    def __init__(
        self,
        store: SqlStore,
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

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give in-flight deliveries `grace` seconds, then abandon them."""
        self.stopping = True
        tasks = list(self._workers.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("abandoned %d account drain(s) in flight", len(pending))
            await asyncio.wait(pending)

    async def _account(self, account: str) -> None:
        worked = False
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
            while not self.stopping:
                # Each claim its own owner: if a lease ran out and the message was claimed
                # again, the late result of the first claim cannot overwrite the second's.
                owner = f"{self.owner}/{next(self._claims)}"
                claimed = await asyncio.to_thread(
                    self.store.claim_due,
                    account,
                    self._clock(),
                    self.lease_seconds,
                    owner,
                    self.settings.delivery.messages_per_connection,
                    queue_ids=self._queue_ids,
                )
                if not claimed:
                    break
                claimed_total += len(claimed)
                await self._deliver(claimed, owner)
        except RelaydError as exc:  # the queue cannot be read or written: the next scan retries
            log.error("account %r: %s", account, exc.message)
            return -1
        except Exception:  # a bug: report it, keep the other accounts running
            log.exception("account %r: delivery stopped by an internal error", account)
            return -1
        return claimed_total

    async def _deliver(self, claimed: Sequence[QueuedMessage], owner: str) -> None:
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
                ids = [m.queue_id for m in messages]
                held = await asyncio.to_thread(self.store.hold, ids, exc.message)
                log.warning("held %s: %s", " ".join(held), exc.message)
                self.tally.add(State.HELD, len(held))
                continue
            delivered = await drain.deliver_claimed(
                self.store,
                account,
                messages,
                self.settings,
                owner=owner,
                password=_daemon_password,
                prog="relayd",
                clock=self._clock,
            )
            for item in delivered:
                self.tally.add(item.outcome.state)


def instance_lock(database_url: str) -> int | None:
    """Lock a SQLite queue for this daemon (an fcntl lock on a file beside it); the lock's fd.

    None for a server database, where several daemons may share the queue. Raises
    AlreadyRunning when another daemon holds the lock: it is released when that process dies.
    """
    db = paths.sqlite_path(database_url)
    if db is None:
        return None
    path = db + LOCK_SUFFIX
    paths.ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"another relayd daemon is already running on the queue {db} (it holds {path})"
        ) from None
    return fd


def bind_wake_socket(path: str) -> socket.socket:
    """The wake-up datagram socket at `path` (0600 in a 0700 directory), non-blocking.

    A socket file left by a dead daemon is removed; anything else in the way is an error.
    """
    paths.ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise RelaydError(f"{path}: exists and is not a socket", ExitCode.CANTCREAT)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise RelaydError(f"{path}: cannot bind: {exc.strerror}", ExitCode.CANTCREAT) from None
    sock.setblocking(False)
    return sock


def default_owner() -> str:
    return f"daemon-{socket.gethostname()}-{os.getpid()}"


async def run_daemon(
    settings: Settings,
    *,
    scan_interval: float = SCAN_INTERVAL,
    grace: float = SHUTDOWN_GRACE,
    clock: Callable[[], float] = time.time,
) -> int:
    """`relayd daemon`: run until SIGTERM/SIGINT; the exit code."""
    lock = instance_lock(settings.database)
    try:
        store = await asyncio.to_thread(SqlStore.open, settings.database)
        try:
            return await _Lifecycle(store, settings, lock, scan_interval, grace, clock).run()
        finally:
            store.close()
    finally:
        if lock is not None:
            os.close(lock)


class _Lifecycle:
    """Start (leases, socket, READY), the scan loop, signals, and an orderly stop."""

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
        self.wake = asyncio.Event()
        self.stopping = False
        self.runner = Runner(
            store, settings, owner=default_owner(), clock=clock, on_idle=self.wake.set
        )
        self.last_release = float("-inf")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self._release_leases(everything=self.locked)
        sock = bind_wake_socket(paths.wake_socket())
        loop.add_reader(sock.fileno(), self._on_datagram, sock)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        watchdog = asyncio.create_task(self._watchdog())
        sdnotify.notify("READY=1", "STATUS=started")
        log.info("ready: queue %s, wake-up socket %s", self.store_name, sock.getsockname())
        try:
            while not self.stopping:
                timeout = await self._scan()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
                self.wake.clear()
        finally:
            sdnotify.notify("STOPPING=1", "STATUS=stopping")
            loop.remove_reader(sock.fileno())
            with contextlib.suppress(OSError):
                os.unlink(sock.getsockname())
            sock.close()
            watchdog.cancel()
            await self.runner.stop(self.grace)
            await self._release_leases(everything=self.locked)
        log.info("stopped")
        return ExitCode.OK

    @property
    def store_name(self) -> str:
        return describe(self.runner.settings.database)  # never a password in the log

    def _on_datagram(self, sock: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(512):
                pass
        self.wake.set()

    def _stop(self) -> None:
        if not self.stopping:
            log.info("stopping: finishing or abandoning transactions in flight")
        self.stopping = True
        self.runner.stopping = True
        self.wake.set()

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
        self.wake.set()

    async def _release_leases(self, *, everything: bool) -> None:
        """Return expired leases to `queued`; with the instance lock, every lease at once
        (no other daemon runs on this queue, so a `sending` message is one nobody delivers)."""
        now = self.clock()
        until = sys.float_info.max if everything else now
        released = await asyncio.to_thread(self.store.release_stale, until)
        self.last_release = now
        if released:
            log.info("returned %d leased message(s) to the queue", len(released))

    async def _scan(self) -> float:
        """Kick every account with due mail; the seconds until the next scan."""
        now = self.clock()
        try:
            if now - self.last_release >= self.scan_interval:
                await self._release_leases(everything=False)
            due = scan(await asyncio.to_thread(self.store.list, State.QUEUED), now)
        except RelaydError as exc:
            log.error("scan: %s", exc.message)
            return self.scan_interval
        for account in due.accounts:
            self.runner.kick(account)
        sdnotify.notify(
            f"STATUS={due.queued} queued, {len(self.runner.busy)} account(s) delivering; "
            f"since start: {self.runner.tally}"
        )
        if due.next_at is None:
            return self.scan_interval
        return min(self.scan_interval, max(0.0, due.next_at - self.clock()))

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:  # pinged from the event loop: a hung loop stops pinging
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
