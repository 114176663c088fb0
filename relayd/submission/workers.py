"""The daemon's side of `[listen] workers`: start the worker processes, accept on the listener's
sockets and hand each connection to the worker with the fewest sessions, count `max_sessions`
over all of them, restart a worker that dies (reported once in the log), stop them at the end.

The daemon keeps the listening sockets (bound here or passed by systemd): the workers get only
accepted connections, so socket activation, several addresses and the session limit work as
with one process. A worker only ingests: its commits wake the daemon's one runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.sysexits import ExitCode

log = logging.getLogger("relayd.smtp")

WORKER_MODULE = "relayd.submission.listen_worker"
MAX_AUTO = 4  # workers "auto" starts at most (one per CPU)
START_TIMEOUT = 30.0  # seconds a worker may take to open the queue and say it is ready
STOP_TIMEOUT = 10.0  # seconds a worker may take to drain at the stop before it is killed
RESTARTS = 5  # deaths of one worker within RESTART_WINDOW seconds before it is given up
RESTART_WINDOW = 60.0
SIGNALLED_GRACE = 2.0  # seconds a worker stopped by a signal waits for the daemon's own stop
# Messages on a worker's socket pair: daemon -> worker, worker -> daemon.
SETTINGS, CONNECTION = b"S", b"C"
READY, DONE, WAKE = b"R", b"D", b"W"
BUSY = b"421 4.7.0 relayd: too many sessions, try again later\r\n"
DOWN = b"421 4.3.0 relayd: the SMTP listener's workers are down, try again later\r\n"


def worker_count(settings: Settings) -> int:
    """`[listen] workers`, "auto" resolved: one per CPU up to MAX_AUTO, none on one CPU."""
    if settings.listen.workers is not None:
        return settings.listen.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cpus or 1) < 2 else min(cpus or 1, MAX_AUTO)


class _Worker:
    """One worker process, its end of the socket pair, and its open sessions."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.pair: socket.socket | None = None
        self.sessions = 0
        self.sent: Settings | None = None  # the settings it has
        self.ready = asyncio.Event()
        self.deaths: list[float] = []


class Pool:
    """The workers serving the listener's sockets (a part of SmtpListener)."""

    def __init__(self, count: int, settings: Callable[[], Settings], wake: Callable[[], None]):
        self.settings, self.wake = settings, wake
        self.workers = [_Worker(slot) for slot in range(count)]
        self.stopping = False
        self.started = False  # every worker was ready once: deaths are restarted from then on
        self._accepting: list[asyncio.Task[None]] = []
        self._lock = _lock_file()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sockets: list[socket.socket]) -> None:
        """Start every worker and wait until it is ready; then accept on `sockets`."""
        for worker in self.workers:
            self._spawn(worker)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for worker in self.workers:
                    await worker.ready.wait()
        except TimeoutError:
            await self.stop()
            raise RelaydError(
                f"the SMTP listener's workers did not start in {START_TIMEOUT:g} s",
                ExitCode.TEMPFAIL,
            ) from None
        if not all(worker.proc is not None for worker in self.workers):
            await self.stop()
            raise RelaydError("an SMTP listener worker could not start", ExitCode.SOFTWARE)
        self.started = True
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
            self._accepting.append(loop.create_task(self._accept(sock)))

    def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        level = str(logging.getLogger().getEffectiveLevel())
        lock = "-" if self._lock is None else str(self._lock)
        passed = [theirs.fileno()] + ([] if self._lock is None else [self._lock])
        try:
            worker.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", WORKER_MODULE, str(theirs.fileno()), level, lock],
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            log.error("cannot start an SMTP listener worker: %s", exc.strerror or exc)
            worker.proc = None
            worker.ready.set()  # nothing to wait for
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        worker.pair, worker.sessions, worker.sent = ours, 0, None
        worker.ready.clear()
        self._send_settings(worker)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message, worker)

    def _send_settings(self, worker: _Worker) -> bool:
        settings = self.settings()
        if worker.sent is settings:
            return True
        assert worker.pair is not None
        try:
            worker.pair.send(SETTINGS + pickle.dumps(settings))
        except OSError:
            return False
        worker.sent = settings
        return True

    def _on_message(self, worker: _Worker) -> None:
        pair = worker.pair
        assert pair is not None
        while True:
            try:
                data = pair.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._lost(worker)
                return
            if data == DONE:
                worker.sessions = max(0, worker.sessions - 1)
            elif data == WAKE:
                self.wake()
            elif data == READY:
                worker.ready.set()

    def _lost(self, worker: _Worker) -> None:
        """The worker's end closed: it exited (at the stop) or died (restart it)."""
        assert worker.pair is not None
        asyncio.get_running_loop().remove_reader(worker.pair.fileno())
        worker.pair.close()
        worker.pair, worker.sessions = None, 0  # its sessions went with it
        if not self.stopping:
            task = asyncio.get_running_loop().create_task(self._restart(worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _restart(self, worker: _Worker) -> None:
        proc = worker.proc
        assert proc is not None
        code = await asyncio.to_thread(_wait, proc, STOP_TIMEOUT)
        if code == 0 and worker.ready.is_set():
            # It drained on a SIGTERM or SIGINT of its own: systemd's or a terminal's to the
            # whole group, the daemon's own stop is then on its way.
            await asyncio.sleep(SIGNALLED_GRACE)
            if not self.stopping:
                log.warning(
                    "SMTP listener worker %d stopped on a signal: starting a new one", worker.slot
                )
                self._spawn(worker)
            return
        if self.stopping:
            return
        now = time.monotonic()
        worker.deaths = [t for t in worker.deaths if now - t < RESTART_WINDOW] + [now]
        starting = not self.started  # the daemon's start fails instead
        worker.ready.set()  # nobody waits on a dead worker
        if len(worker.deaths) > RESTARTS or starting:
            worker.proc = None
            log.error(
                "SMTP listener worker %d (pid %d) %s%s; not restarted: %d of %d workers left",
                worker.slot,
                proc.pid,
                _how(code),
                " at the start" if starting else f" {len(worker.deaths)} times in a minute",
                sum(w.proc is not None for w in self.workers),
                len(self.workers),
            )
            return
        log.error(
            "SMTP listener worker %d (pid %d) %s: its open sessions were cut (nothing it had"
            " acknowledged is lost); starting a new one",
            worker.slot,
            proc.pid,
            _how(code),
        )
        self._spawn(worker)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ECONNABORTED...: never stop accepting for it
                log.warning("SMTP listener: accept: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            with conn:
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        """Give `conn` to the least busy worker, or refuse it with a 421."""
        alive = [w for w in self.workers if w.pair is not None and w.ready.is_set()]
        if not alive:
            _refuse(conn, DOWN)
            return
        if sum(w.sessions for w in self.workers) >= self.settings().listen.max_sessions:
            _refuse(conn, BUSY)
            return
        worker = min(alive, key=lambda w: w.sessions)
        assert worker.pair is not None
        if not self._send_settings(worker):
            _refuse(conn, DOWN)
            return
        try:
            socket.send_fds(worker.pair, [CONNECTION], [conn.fileno()])
        except OSError:  # its pair is full or gone: it is stuck or dying
            _refuse(conn, DOWN)
            return
        worker.sessions += 1

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None]

    async def stop(self) -> None:
        """Stop accepting, let every worker drain (SIGTERM), kill one that takes too long."""
        self.stopping = True
        for task in [*self._accepting, *self._tasks]:
            task.cancel()
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.proc is not None:
                code = await asyncio.to_thread(_wait, worker.proc, STOP_TIMEOUT)
                if code not in (0, -signal.SIGTERM):
                    log.warning("SMTP listener worker %d %s at the stop", worker.slot, _how(code))
            if worker.pair is not None:
                with contextlib.suppress(ValueError):
                    asyncio.get_running_loop().remove_reader(worker.pair.fileno())
                worker.pair.close()
                worker.pair = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _lock_file() -> int | None:
    """A file only for the workers' commit lock (memory only, gone with its last holder)."""
    try:
        return os.memfd_create("relayd-commit-lock", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return None


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """(In a thread) the worker's exit status; killed after `timeout` seconds."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _how(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _refuse(conn: socket.socket, reply: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(reply)
