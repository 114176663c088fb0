"""`make demo`: relayd-sendmail on a throw-away HOME (msmtprc → --pretend → a queued message)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

MSMTPRC = """\
# An ordinary msmtp configuration: relayd reads it unchanged.
defaults
tls off
auth off
logfile ~/.msmtp.log

account demo
host 127.0.0.1
port 2525
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


def main() -> int:
    """Run the demo in a temporary HOME; nothing outside it is read or written."""
    sendmail = shutil.which("relayd-sendmail") or str(
        Path(sys.executable).with_name("relayd-sendmail")
    )
    with tempfile.TemporaryDirectory(prefix="relayd-demo-") as tmp:
        home = Path(tmp)
        rc = home / ".msmtprc"
        rc.write_text(MSMTPRC)
        rc.chmod(0o600)
        queue = home / "state" / "relayd" / "queue.sqlite3"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "RELAYD_DATABASE_URL": f"sqlite:///{queue}",
            "LANG": "C.UTF-8",
        }
        print(f"A throw-away HOME: {home}\n\n~/.msmtprc:\n{MSMTPRC}")
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
            (data,) = db.execute("SELECT data FROM messages").fetchone()
        print("\nStored bytes (exactly what goes on the wire; Bcc removed, Date/Message-ID added):")
        print(bytes(data).decode(errors="replace").replace("\r\n", "\n"))
        file_mode = oct(queue.stat().st_mode & 0o777)
        dir_mode = oct(queue.parent.stat().st_mode & 0o777)
        print(f"Queue file mode: {file_mode}, directory {dir_mode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
