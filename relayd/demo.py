"""`make demo`: a throw-away HOME, a local SMTP sink, relayd daemon and relayd-sendmail at work."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

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

This message was stored durably in relayd's queue.
"""


def _run(title: str, argv: list[str], env: dict[str, str], stdin: bytes = b"") -> None:
    print(f"\n$ {title}", flush=True)
    result = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    sys.stdout.write(result.stdout.decode(errors="replace"))
    sys.stdout.write(result.stderr.decode(errors="replace"))
    print(f"(exit status {result.returncode})", flush=True)


class _Sink:
    """A local SMTP server standing in for your provider: it prints what it receives."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        print(f"\n[sink] received from <{envelope.mail_from}> for {envelope.rcpt_tos}:")
        print(envelope.original_content.decode(errors="replace").replace("\r\n", "\n"))
        return "250 2.0.0 Ok: delivered by the demo sink"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _state(queue: Path) -> str:
    with sqlite3.connect(queue) as db:
        row = db.execute("SELECT state FROM messages ORDER BY id DESC LIMIT 1").fetchone()
    return str(row[0]) if row else "(none)"


def _deliver_with_daemon(relayd: str, env: dict[str, str], queue: Path, sink: _Sink) -> None:
    """Start `relayd daemon`, submit one more message, wait until the sink has both, stop."""
    print("\n$ relayd daemon   (in the background)", flush=True)
    daemon = subprocess.Popen([relayd, "daemon"], env=env)
    try:
        deadline = time.monotonic() + 20
        while sink.received < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"Queued message now: {_state(queue)}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
    print(f"(daemon stopped, exit status {daemon.returncode})")


def main() -> int:
    """Run the demo in a temporary HOME; nothing outside it is read or written."""
    sendmail = shutil.which("relayd-sendmail") or str(
        Path(sys.executable).with_name("relayd-sendmail")
    )
    with tempfile.TemporaryDirectory(prefix="relayd-demo-") as tmp:
        home = Path(tmp)
        sink = _Sink()
        port = _free_port()
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()
        rc = home / ".msmtprc"
        rc.write_text(MSMTPRC.format(port=port))
        rc.chmod(0o600)
        queue = home / "state" / "relayd" / "queue.sqlite3"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "RELAYD_RUNTIME_DIR": str(home / "run" / "relayd"),
            "RELAYD_DATABASE_URL": f"sqlite:///{queue}",
            "LANG": "C.UTF-8",
        }
        print(f"A throw-away HOME: {home}\nA local SMTP sink on 127.0.0.1:{port}\n")
        print(f"~/.msmtprc:\n{rc.read_text()}")
        _run("relayd-sendmail --pretend -t", [sendmail, "--pretend", "-t"], env, MESSAGE)
        _run(
            "relayd-sendmail -t -odq < message   (store only)",
            [sendmail, "-t", "-odq"],
            env,
            MESSAGE,
        )
        with sqlite3.connect(queue) as db:
            for queue_id, state, account, sender, size in db.execute(
                "SELECT queue_id, state, account, sender, size FROM messages"
            ):
                print(f"\nQueued {queue_id}: state={state} account={account}", end=" ")
                print(f"from=<{sender}> {size} bytes")
            for (address,) in db.execute("SELECT address FROM recipients ORDER BY position"):
                print(f"  to <{address}>")
            (data,) = db.execute("SELECT data FROM bodies").fetchone()
        print("\nStored bytes (exactly what goes on the wire; Bcc removed, Date/Message-ID added):")
        print(bytes(data).decode(errors="replace").replace("\r\n", "\n"))
        file_mode = oct(queue.stat().st_mode & 0o777)
        dir_mode = oct(queue.parent.stat().st_mode & 0o777)
        print(f"Queue file mode: {file_mode}, directory {dir_mode}")
        relayd = str(Path(sendmail).with_name("relayd"))
        _deliver_with_daemon(relayd, env, queue, sink)
        controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
