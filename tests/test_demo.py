"""`make demo` keeps working: the demo stores a message and the daemon delivers it to a sink."""

from __future__ import annotations

import subprocess
import sys


def test_demo_delivers_through_the_daemon() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relayd.demo"], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    assert "[sink] received from <demo@example.org>" in result.stdout
    assert "Queued message now: sent" in result.stdout
    delivered = result.stdout.split("[sink]")[1]
    assert "hidden@example.org" in delivered and "Bcc:" not in delivered  # envelope only
