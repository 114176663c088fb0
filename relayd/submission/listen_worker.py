"""One SMTP listener worker process (`[listen] workers`): serves the sessions the daemon hands
it over a socket pair, with its own group commit into the same queue; only ingests, never
delivers (it tells the daemon to wake its one runner).

The daemon accepts the connections and passes each one's descriptor with a "C" message; its
settings come first (and again after a SIGHUP) as an "S" message. The worker answers "R" once
ready, "D" when a session ends (the daemon counts `max_sessions` over all workers), "W" after
commits (paced) to wake the runner. SIGTERM (or the daemon's end of the pair closing: the daemon
is gone) drains: no new sessions, the commits in flight finish and their 250s are sent, then
every connection is closed and the worker exits 0. Run as `python -m
relayd.submission.listen_worker FD LOGLEVEL LOCKFD`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import signal
import socket
import ssl
import sys
import weakref

from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store import batch
from relayd.store.records import NewMessage
from relayd.submission.limits import BatchStore, Committer
from relayd.submission.listener import WAKE_PACE, Paced, tls_context
from relayd.submission.smtpd import Compose, Handler, RelaydSMTP, Sessions, options
from relayd.submission.workers import DONE, READY, SETTINGS, WAKE
from relayd.sysexits import ExitCode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from relayd.store.sql import SqlStore

log = logging.getLogger("relayd.smtp")

MAX_MESSAGE = 1 << 20  # a pickled Settings is a few KiB
DRAIN_LIMIT = 8.0  # seconds a drain waits for commits in flight (the daemon kills at 10)


class _Reported(Sessions):
    """The daemon does the counting: a session that ends is reported to it."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(lambda: sys.maxsize)
        self.worker = worker

    def leave(self) -> None:
        super().leave()
        self.worker.send(DONE)


class _Tracked:
    """The committer, with a count of the stores in flight (a drain waits for them)."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def add(self, message: NewMessage | Compose, now: float) -> str:
        self.busy += 1
        self.idle.clear()
        try:
            return await self.committer.add(message, now)
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()


class _CommitLock:
    """One commit at a time over all workers (an flock on the file the daemon passed): SQLite
    lets one writer in and makes the others poll with growing sleeps; a blocked flock is
    woken as soon as the commit before it ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def commit_lock(fd: int | None, database: str) -> _CommitLock | None:
    """The lock on the daemon's file `fd` for a SQLite queue, through a file description of
    this worker's own (flock excludes descriptions, not processes); None without one."""
    if fd is None or not database.startswith("sqlite"):
        return None
    try:
        return _CommitLock(os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return None


class Worker:
    """The worker's event loop side: the socket pair, the sessions, the drain."""

    def __init__(
        self, pair: socket.socket, settings: Settings, store: BatchStore, lock: _CommitLock | None
    ) -> None:
        self.pair, self.current, self.store = pair, settings, store
        self.paced = Paced(lambda: self.send(WAKE), WAKE_PACE)
        self.ingest = _Tracked(Committer(store, on_commit=self.paced, lock=lock))
        self.handler = Handler(lambda: self.current, self.ingest)
        self.sessions = _Reported(self)
        self.protocols: weakref.WeakSet[RelaydSMTP] = weakref.WeakSet()
        self.tls: ssl.SSLContext | None = None
        self.stop = asyncio.Event()
        self._tls_of: tuple[str | None, str | None] = (None, None)
        self._starting: set[asyncio.Task[None]] = set()

    def send(self, what: bytes) -> None:
        with contextlib.suppress(OSError):  # the daemon is gone: the drain follows
            self.pair.send(what)

    def _protocol(self) -> RelaydSMTP:
        protocol = RelaydSMTP(
            self.handler, self.sessions, tls_context=self.tls, **options(self.current)
        )
        self.protocols.add(protocol)
        return protocol

    def use(self, settings: Settings) -> None:
        """New settings (the start, a SIGHUP): a new TLS context when its files changed."""
        listen = settings.listen
        if (listen.tls_cert, listen.tls_key) != self._tls_of:
            self._tls_of = (listen.tls_cert, listen.tls_key)
            self.tls = None
            if listen.tls_cert is not None and listen.tls_key is not None:
                try:
                    self.tls = tls_context(listen.tls_cert, listen.tls_key)
                except RelaydError as err:  # the daemon checked them at its start
                    log.error("SMTP listener worker: %s", err.message)
        self.current = settings

    def on_message(self) -> None:
        """Read what the daemon sent (the loop calls this when the pair is readable)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.pair, MAX_MESSAGE, 8)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:  # the daemon is gone (or closed its end): drain and exit
                self.stop.set()
                loop.remove_reader(self.pair.fileno())
                return
            if data[:1] == SETTINGS:
                self.use(pickle.loads(data[1:]))
            for fd in fds:
                conn = socket.socket(fileno=fd)
                if self.stop.is_set():
                    conn.close()
                    continue
                task = loop.create_task(self._serve(conn))
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._protocol, conn)
        except OSError:  # the client left already: its session never started
            conn.close()
            self.send(DONE)

    async def drain(self) -> None:
        """No new sessions; the stores in flight finish (their 250s go out); close the rest."""
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.pair.fileno())
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.pause_reading()  # type: ignore[attr-defined]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_LIMIT):
                # A session with a whole message in its buffer may store it yet: wait again.
                while True:
                    await self.ingest.idle.wait()
                    for _ in range(10):  # the handlers' replies are written
                        await asyncio.sleep(0)
                    if self.ingest.idle.is_set():
                        break
        self.paced.flush()  # the runner hears of the last commits now
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        await asyncio.sleep(0)  # the transports flush what they hold and close


async def serve(pair: socket.socket, lock_fd: int | None = None) -> int:
    """Run one worker on the socket pair `pair` until SIGTERM or the daemon goes away."""
    loop = asyncio.get_running_loop()
    pair.setblocking(True)
    data, _, _, _ = socket.recv_fds(pair, MAX_MESSAGE, 0)
    if data[:1] != SETTINGS:
        return ExitCode.SOFTWARE
    settings: Settings = pickle.loads(data[1:])
    pair.setblocking(False)
    try:
        store = await asyncio.to_thread(_open_store, settings.database)
    except RelaydError as err:
        print(f"relayd: SMTP listener worker: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    try:
        worker = Worker(pair, settings, store, commit_lock(lock_fd, settings.database))
        worker.use(settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the daemon sends the settings
        loop.add_reader(pair.fileno(), worker.on_message)
        worker.send(READY)
        await worker.stop.wait()
        await worker.drain()
    finally:
        await asyncio.to_thread(store.close)
        _ignore_signals(loop)
    return ExitCode.OK


def _ignore_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Drained: a later SIGTERM or SIGINT (the daemon's, after systemd's to the whole group)
    changes nothing. The loop lets go of them now, while its wakeup pipe is open: one caught
    while the loop closes would be written to the closed pipe ("Exception ignored")."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


def _open_store(url: str) -> batch.BatchWriter | SqlStore:
    """Where the worker commits: a SQLite queue on a connection of its own (no SQLAlchemy is
    even imported), a server through SqlStore. The daemon migrated the queue already."""
    writer = batch.writer_for(url)
    if writer is not None:
        return writer.open()
    from relayd.store.sql import SqlStore

    return SqlStore.open(url, migrate=False)


class _Stopped(Exception):
    """SIGTERM before the event loop took the signal over: nothing was served yet."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped


def main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    level = int(argv[2]) if len(argv) > 2 else logging.INFO
    lock_fd = int(argv[3]) if len(argv) > 3 and argv[3] != "-" else None
    logging.basicConfig(stream=sys.stderr, level=level, format="relayd: %(message)s")
    # Lines are "relayd: message" only: a record (one per message stored) need not look up
    # its thread's and process's names.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: every SMTP command
    pair = socket.socket(fileno=int(argv[1]))
    try:
        return asyncio.run(serve(pair, lock_fd))
    except _Stopped:
        return ExitCode.OK
    finally:  # drained: a second SIGTERM (systemd's beside the daemon's) changes nothing now
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
