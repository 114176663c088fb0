"""Shared fixtures: every test runs with HOME, XDG_* and RELAYD_* pointed at a temp directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_ISOLATED_PREFIXES = ("RELAYD_", "XDG_")
_ISOLATED_NAMES = (
    "EMAIL",
    "SMTPSERVER",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "LISTEN_PID",
    "LISTEN_FDS",
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HOME with XDG directories inside it; the real user's files are never seen."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    keep = {"RELAYD_TEST_DATABASE_URL", "RELAYD_REQUIRE_MSMTP"}
    for name in list(os.environ):
        if (name.startswith(_ISOLATED_PREFIXES) and name not in keep) or name in _ISOLATED_NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = home / sub
        path.mkdir(parents=True, mode=0o700)
        monkeypatch.setenv(var, str(path))
    # As root the default queue is /var/spool/relayd: never let a test write there.
    monkeypatch.setenv("RELAYD_DATABASE_URL", f"sqlite:///{tmp_path / 'queue' / 'queue.sqlite3'}")
    # Likewise /run/relayd for the daemon's sockets.
    monkeypatch.setenv("RELAYD_RUNTIME_DIR", str(home / "run" / "relayd"))
    yield home
