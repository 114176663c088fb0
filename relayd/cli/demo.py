"""`make demo`: debug-server, daemon and relayd-sendmail at work in a throw-away HOME."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from relayd.cli.debug import SEPARATOR  # the line the debug server ends each message with

MSMTPRC = """\
# An ordinary msmtp configuration: relayd reads it unchanged.
defaults
tls off
auth off
logfile ~/.msmtp.log

account demo
host 127.0.0.1
port {port}
from demo@example.org

account default : demo
"""

MESSAGE = b"""\
From: Demo User <demo@example.org>
To: Friend <friend@example.org>
Bcc: hidden@example.org
Subject: Hello from relayd

This message was stored durably in relayd's queue, then delivered by the daemon.
"""

WAIT = 20.0  # seconds for any one step; the demo never hangs


class _Lines:
    """A child's stdout read by a thread, one line at a time, waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = WAIT) -> str | None:
        """The next line, or None at the end of the output or after `timeout` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None


def _run(title: str, argv: list[str], env: dict[str, str], stdin: bytes = b"") -> int:
    print(f"\n$ {title}", flush=True)
    result = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    sys.stdout.write(result.stdout.decode(errors="replace"))
    sys.stdout.write(result.stderr.decode(errors="replace"))
    print(f"(exit status {result.returncode})", flush=True)
    return result.returncode


def _stop(name: str, proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    print(f"({name} stopped, exit status {proc.returncode})", flush=True)


def _environment(home: Path) -> dict[str, str]:
    """Everything relayd reads points inside `home`: nothing of the real user is touched."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        # Named outright: as root the defaults would be the system queue in /var/spool/relayd.
        "RELAYD_DATABASE_URL": f"sqlite:///{home / 'queue.sqlite3'}",
        "RELAYD_RUNTIME_DIR": str(home / "run" / "relayd"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }


def _received(lines: _Lines) -> bool:
    """Echo the debug server's output until it has printed one whole message."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = lines.next(max(0.1, deadline - time.monotonic()))
        if line is None:
            return False
        print(f"  [debug-server] {line}", flush=True)
        if line == SEPARATOR:
            return True
    return False


def _state_is(relayd: str, env: dict[str, str], state: str) -> bool:
    """Whether the queue holds a message in `state` (polled briefly: results are committed
    right after the server's reply, a moment after the debug server printed the message)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        listed = subprocess.run(
            [relayd, "queue", "list", "--json", "--state", state],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if listed.stdout.strip():
            return True
        time.sleep(0.1)
    return False


def main() -> int:
    """Run the demo in a temporary HOME; nothing outside it is read or written."""
    bin_dir = Path(sys.executable).parent
    sendmail = shutil.which("relayd-sendmail", path=str(bin_dir)) or "relayd-sendmail"
    relayd = shutil.which("relayd", path=str(bin_dir)) or "relayd"
    with tempfile.TemporaryDirectory(prefix="relayd-demo-") as tmp:
        home = Path(tmp)
        env = _environment(home)
        for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
            Path(env[name]).mkdir(mode=0o700, parents=True, exist_ok=True)
        print(f"A throw-away HOME: {home}")
        print("\n$ relayd debug-server --port 0   (in the background: a local SMTP sink)")
        sink = subprocess.Popen(
            [relayd, "debug-server", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        lines = _Lines(sink)
        try:
            ready = lines.next()
            if ready is None or ":" not in ready:
                print("the debug server did not start", file=sys.stderr)
                return 1
            print(f"  [debug-server] {ready}")
            port = int(ready.rsplit(":", 1)[1].split(",")[0])
            rc = home / ".msmtprc"
            rc.write_text(MSMTPRC.format(port=port))
            rc.chmod(0o600)
            print(f"\n~/.msmtprc:\n{rc.read_text()}")
            _run("relayd config check", [relayd, "config", "check"], env)
            _run("relayd-sendmail --pretend -t", [sendmail, "--pretend", "-t"], env, MESSAGE)
            _run(
                "relayd-sendmail -t < message   (no daemon runs yet: the message waits)",
                [sendmail, "-t"],
                env,
                MESSAGE,
            )
            _run("relayd queue list", [relayd, "queue", "list"], env)
            print("\n$ relayd daemon   (in the background)", flush=True)
            daemon = subprocess.Popen(
                [relayd, "daemon"], env=env, stderr=subprocess.PIPE, text=True
            )
            try:
                delivered = _received(lines) and _state_is(relayd, env, "sent")
                _run("relayd queue list --state sent", [relayd, "queue", "list", "-s", "sent"], env)
                _run("relayd queue log", [relayd, "queue", "log"], env)
                _run("relayd status", [relayd, "status"], env)
            finally:
                _stop("daemon", daemon)
                assert daemon.stderr is not None
                for line in daemon.stderr.read().splitlines():
                    print(f"  [daemon log] {line}")
        finally:
            _stop("debug-server", sink)
    if not delivered:
        print("the message was not delivered within the demo's time", file=sys.stderr)
        return 1
    print("\nDelivered: stored durably, sent by the daemon, every attempt on record.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
