"""Real msmtpq queues for the import tests: Debian's msmtpq script, run with its queue in a
temporary directory and an msmtprc whose server refuses connections, so every mail stays queued."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.sendmail_helpers import sendmail_env, write_msmtprc

# Where Debian's msmtp package puts it (it is not on PATH), then PATH.
_CANDIDATES = ("/usr/libexec/msmtp/msmtpq/msmtpq", "/usr/share/doc/msmtp/examples/msmtpq/msmtpq")
# Port 1 on loopback: nothing listens there, so msmtp fails at once (exit 75) and msmtpq queues.
REFUSING_RC = "account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n"


def msmtpq_script() -> str:
    """Debian's msmtpq; the test skips without it (fails with RELAYD_REQUIRE_MSMTP=1, as CI)."""
    for candidate in (*_CANDIDATES, shutil.which("msmtpq")):
        if candidate and os.access(candidate, os.X_OK) and shutil.which("msmtp"):
            return candidate
    reason = "Debian's msmtpq is not installed (apt-get install msmtp)"
    if os.environ.get("RELAYD_REQUIRE_MSMTP") == "1":
        pytest.fail(f"{reason}, and RELAYD_REQUIRE_MSMTP=1", pytrace=False)
    pytest.skip(reason)


def msmtpq_env(queue: Path) -> dict[str, str]:
    """msmtpq's environment: its queue in `queue`, no log, no ping test (`x`)."""
    return sendmail_env(MSMTPQ_Q=str(queue), MSMTPQ_LOG="", EMAIL_CONN_TEST="x")


def queue_with_msmtpq(queue: Path, args: Sequence[str], mail: bytes) -> None:
    """Run `msmtpq ARGS < mail` (msmtp cannot connect: msmtpq keeps the mail in `queue`)."""
    if not (Path(os.environ["HOME"]) / ".msmtprc").exists():
        write_msmtprc(REFUSING_RC)
    done = subprocess.run(
        [msmtpq_script(), *args],
        input=mail,
        capture_output=True,
        env=msmtpq_env(queue),
        cwd=os.environ["HOME"],
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"enqueued mail as" in done.stdout, done.stdout


def entries(queue: Path) -> list[str]:
    """The queue's file names (the lock directory aside), sorted."""
    return sorted(path.name for path in queue.iterdir() if path.name != ".lock")
