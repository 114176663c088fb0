"""The fault harness's processes: a private world per scenario, the recording server, the daemon.

Nothing here reads pytest's environment: a `World` builds its own HOME, XDG_* and RELAYD_*
under a directory it is given, so `python -m tests.faults` runs the same scenarios outside
pytest. Every wait is bounded; every process started here is killed by `World.close`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.store.records import NewMessage
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many

REPO = Path(__file__).resolve().parents[2]
RELAYD = str(Path(sys.executable).with_name("relayd"))
DOMAIN = "faults.test"
_DROPPED_PREFIXES = ("RELAYD_", "XDG_")
_DROPPED_NAMES = ("EMAIL", "SMTPSERVER", "NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_PID")


def wait_until(probe: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `probe` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@dataclass(frozen=True)
class Event:
    """One line of the server's log (see tests/faults/recorder_server.py)."""

    at: float
    kind: str
    conn: str
    key: str | None
    detail: str


class RecorderServer:
    """tests/faults/recorder_server.py in its own process (so it can be SIGKILLed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "server.log"
        self.faults_path = directory / "faults.json"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.set_faults([])

    def start(self) -> None:
        port_file = self.directory / f"port-{self.restarts}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.recorder_server",
                "--log",
                str(self.log_path),
                "--faults",
                str(self.faults_path),
                "--port-file",
                str(port_file),
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / f"server-stderr-{self.restarts}.txt", "wb"),  # noqa: SIM115
        )
        self.restarts += 1

        def bound() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "the server died"
            return port_file.exists()

        wait_until(bound, 15, "the recording server to listen")
        self.port = int(port_file.read_text())

    def kill(self) -> None:
        """SIGKILL: whatever it was receiving is cut off."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def set_faults(self, rules: Sequence[dict[str, Any]]) -> None:
        """Replace the fault rules (atomically; the server sees them at its next stage)."""
        temp = self.faults_path.with_suffix(".tmp")
        temp.write_text(json.dumps({"rules": list(rules)}))
        temp.replace(self.faults_path)

    def events(self) -> list[Event]:
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) != 5:
                continue  # a line cut off by a SIGKILL cannot happen (one write), but be safe
            at, kind, conn, key, detail = parts
            found.append(Event(float(at), kind, conn, None if key == "-" else key, detail))
        return found

    def stderr_texts(self) -> list[str]:
        return [p.read_text(errors="replace") for p in self.directory.glob("server-stderr-*")]


class Daemon:
    """`relayd daemon` in a subprocess: stderr to a file, readiness from its NOTIFY_SOCKET."""

    def __init__(
        self,
        world: World,
        *args: str,
        preexec: Callable[[], None] | None = None,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.number = len(world.daemons)
        self.stderr_path = world.root / f"daemon-stderr-{self.number}.txt"
        self.notify_path = str(world.root / f"notify-{self.number}")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.05)
        self.states: list[str] = []
        env = dict(world.env, **(env or {}), NOTIFY_SOCKET=self.notify_path)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [RELAYD, "daemon", *args],
                env=env,
                cwd=env["HOME"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=preexec,
            )
        world.daemons.append(self)
        if ready:
            self.wait_ready()

    def poll_notify(self) -> list[str]:
        while True:
            try:
                self.states.extend(self.notify.recv(4096).decode().split("\n"))
            except (TimeoutError, BlockingIOError):
                return self.states

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"the daemon exited: {self.stderr()}"
            return "READY=1" in self.poll_notify()

        wait_until(ready, timeout, "READY=1", step=0.01)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.notify.close()

    def stop(self, timeout: float = 12) -> int:
        """SIGTERM; its exit code (SIGKILL after `timeout` s, then -9: it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.notify.close()
        return code


class World:
    """One scenario's private HOME, queue, msmtprc, relayd.toml, server and daemons."""

    def __init__(self, root: Path, *, url: str | None = None, queue_dir: Path | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        home = root / "home"
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith(_DROPPED_PREFIXES) or k in _DROPPED_NAMES)
        }
        env["HOME"] = str(home)
        for var, sub in (
            ("XDG_CONFIG_HOME", ".config"),
            ("XDG_STATE_HOME", ".local/state"),
            ("XDG_DATA_HOME", ".local/share"),
            ("XDG_CACHE_HOME", ".cache"),
            ("XDG_RUNTIME_DIR", "run"),
        ):
            (home / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
            env[var] = str(home / sub)
        self.queue_dir = queue_dir or root / "queue"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.sqlite_file = self.queue_dir / "queue.sqlite3"
        self.url = url or f"sqlite:///{self.sqlite_file}"
        env["RELAYD_DATABASE_URL"] = self.url
        env["RELAYD_RUNTIME_DIR"] = str(home / "run" / "relayd")
        env["RELAYD_MSMTPRC_SYSTEM"] = str(home / "no-system-msmtprc")
        self.env = env
        self.home = home
        self.server = RecorderServer(root / "server")
        self.daemons: list[Daemon] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Callable[[], object]] = []  # run last by `close` (e.g. umount)
        self.keys: dict[str, str] = {}  # message key (f123) -> queue id

    # -- configuration ------------------------------------------------------------------------

    def settings(self, text: str) -> None:
        """Write relayd.toml."""
        path = Path(self.env["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def msmtprc(self, extra: str = "") -> None:
        """The default account at the recording server (which must have a port by now)."""
        path = self.home / ".msmtprc"
        path.write_text(
            f"account default\nhost 127.0.0.1\nport {self.server.port}\nfrom me@{DOMAIN}\n{extra}"
        )
        path.chmod(0o600)

    # -- mail ---------------------------------------------------------------------------------

    def enqueue(self, count: int, *, body_bytes: int = 200, first: int = 0) -> list[str]:
        """Queue `count` due messages at once; message `n` has key `fn`: envelope sender
        fn@faults.test and Message-ID <fn@faults.test>. Their keys."""
        filler = (b"x" * 76 + b"\r\n") * max(1, body_bytes // 78)
        batch: list[NewMessage] = []
        keys = [f"f{n}" for n in range(first, first + count)]
        for key in keys:
            head = f"From: {key}@{DOMAIN}\r\nTo: you@{DOMAIN}\r\nMessage-ID: <{key}@{DOMAIN}>\r\n"
            data = head.encode() + f"Subject: {key}\r\n\r\n".encode() + filler
            batch.append(
                NewMessage(
                    account="default",
                    overrides=(),
                    sender=f"{key}@{DOMAIN}",
                    recipients=(f"you@{DOMAIN}",),
                    data=data,
                    smtputf8=False,
                    eightbit=False,
                    config_file=None,
                    uid=0,
                )
            )
        with SqlStore.open(self.url) as store:
            ids = enqueue_many(store, batch, time.time())
        self.keys.update(zip(keys, ids, strict=True))
        return keys

    # -- processes ----------------------------------------------------------------------------

    def daemon(self, *args: str, **kwargs: Any) -> Daemon:
        return Daemon(self, *args, **kwargs)

    def relayd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one `relayd` command in this world."""
        return subprocess.run(
            [RELAYD, *args],
            env=self.env,
            cwd=self.env["HOME"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str) -> subprocess.Popen[bytes]:
        """Another process (e.g. one holding a database lock), killed at `close`."""
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=self.env, cwd=REPO, stdout=subprocess.PIPE
        )
        self.others.append(proc)
        return proc

    def daemon_stderr(self) -> list[str]:
        return [d.stderr() for d in self.daemons]

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.kill()
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        self.server.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


def hold_write_lock(world: World, seconds: float) -> subprocess.Popen[bytes]:
    """Another process that takes the SQLite queue's write lock (BEGIN IMMEDIATE) for
    `seconds`; it prints "locked" once it holds it."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(world.sqlite_file)!r}, isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "c.execute('ROLLBACK')\n"
    )
    proc = world.python(code)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"locked", line
    return proc


def keys_of(events: Iterable[Event], kind: str) -> list[str]:
    return [e.key for e in events if e.kind == kind and e.key is not None]
