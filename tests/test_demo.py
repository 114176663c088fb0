"""`make demo` keeps working: debug-server, daemon and relayd-sendmail deliver one message."""

from __future__ import annotations

import subprocess
import sys


def test_demo_delivers_through_the_daemon_to_the_debug_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relayd.cli.demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "relayd debug-server: listening on 127.0.0.1:" in out
    assert "configuration OK" in out
    waiting, delivered = out.split("$ relayd daemon", 1)
    # Listed while no daemon ran, then received by the debug server with the envelope only
    # carrying the Bcc recipient, then listed as sent (marker +) with the server's reply.
    assert "\n-- 0 Kbytes in 1 Request." in waiting
    assert "[debug-server] MAIL FROM:<demo@example.org>" in delivered
    assert "[debug-server] RCPT TO:<hidden@example.org>" in delivered
    assert "[debug-server] Subject: Hello from relayd" in delivered
    assert "Bcc:" not in delivered
    assert "+ " in delivered.split("$ relayd queue list --state sent", 1)[1]
    assert "exitcode=EX_OK" in delivered
    assert "daemon: running" in delivered
    assert "(daemon stopped, exit status 0)" in out
    assert "(debug-server stopped, exit status 0)" in out
