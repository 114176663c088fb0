"""relayd-sendmail's informational modes: --version (queue and daemon state), --help, errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from relayd import paths
from relayd.submission import about

SENDMAIL = str(Path(sys.executable).with_name("relayd-sendmail"))


def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SENDMAIL, *argv],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
    )


def test_version_names_the_files_the_queue_and_the_daemon_state(tmp_path: Path) -> None:
    result = run("--version")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("relayd-sendmail (relayd) version ")
    assert f"Queue: {os.environ['RELAYD_DATABASE_URL']}" in lines
    assert any(line.startswith("Daemon: not running") for line in lines)
    wake = paths.wake_socket()
    os.makedirs(os.path.dirname(wake), exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(wake)
        lines = run("--version").stdout.splitlines()
        assert any(line.startswith("Daemon: running") for line in lines)


def test_version_hides_database_passwords(monkeypatch: object) -> None:
    assert about.redact("postgresql+psycopg://u:secret@h:5432/q") == (
        "postgresql+psycopg://u:***@h:5432/q"
    )
    assert about.redact("sqlite:////x/y.sqlite3") == "sqlite:////x/y.sqlite3"


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--pretend" in result.stdout and "-odq" in result.stdout


def test_errors_are_one_line_with_the_program_name() -> None:
    result = run("-Z")
    assert (result.returncode, result.stderr) == (64, "relayd-sendmail: invalid option -- 'Z'\n")
    result = run("x@example.org")
    assert result.returncode == 78
    assert result.stderr.startswith("relayd-sendmail: account default not found")
    assert result.stderr.count("\n") == 1


def test_modes_of_later_versions_say_so() -> None:
    for argv in (["--configure=me@example.org"],):
        result = run(*argv)
        assert result.returncode == 69
        assert "not available in this version" in result.stderr
