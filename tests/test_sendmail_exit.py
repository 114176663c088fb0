"""relayd-sendmail's fast end (SPEC §6): after a durable commit the process leaves with os._exit,
its output flushed, the queue's connection left to the kernel: ≤ 2 fsyncs a submission, with or
without a daemon, and the message is there for the next reader."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.sendmail_helpers import (
    queue_db,
    run_sendmail,
    stored_messages,
    write_msmtprc,
)
from tests.test_daemon import Daemon, start_daemon

__all__ = ["start_daemon"]  # a fixture

MESSAGE = b"From: me@example.org\nTo: you@example.org\nSubject: hi\n\n" + b"x" * 10_000 + b"\n"
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def traced(args: list[str], log: Path) -> subprocess.CompletedProcess[bytes]:
    """relayd-sendmail under `strace -f` (fsyncs, the WAL's opens and closes, the exit)."""
    trace = "trace=fsync,fdatasync,openat,close,unlink,exit_group"
    return run_sendmail(args, MESSAGE, prefix=["strace", "-f", "-o", str(log), "-e", trace])


def syncs(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if re.search(r"\bf(data)?sync\(", line)]


def test_the_output_is_complete_and_the_message_stored() -> None:
    write_msmtprc()
    for n in range(3):
        done = run_sendmail(["-d", "you@example.org"], MESSAGE)  # -d: stdout is a pipe here
        assert done.returncode == 0, done.stderr
        assert Path(f"{queue_db()}-wal").exists()  # no checkpoint on close: the WAL stays
        last = done.stdout.decode().splitlines()[-1]
        assert last.startswith("queued as ")
        assert [m.queue_id for m in stored_messages()][n] == last.removeprefix("queued as ")


def test_a_refusal_still_prints_its_whole_line() -> None:
    write_msmtprc()
    done = run_sendmail([], MESSAGE)
    assert (done.returncode, done.stderr) == (64, b"relayd-sendmail: no recipients found\n")


@needs_strace
def test_at_most_two_fsyncs_and_the_commit_is_synced_before_the_exit(tmp_path: Path) -> None:
    write_msmtprc()
    assert run_sendmail(["you@example.org"], MESSAGE).returncode == 0  # creates the queue
    log = tmp_path / "strace.log"
    done = traced(["you@example.org"], log)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    found = syncs(log)
    assert 1 <= len(found) <= 2, found
    wal_fd = next(
        re.search(r"= (\d+)$", line).group(1)  # type: ignore[union-attr]
        for line in lines
        if "openat(" in line and line.split('"')[1].endswith("-wal")
    )
    commit = max(i for i, line in enumerate(lines) if re.search(rf"fdatasync\({wal_fd}\)", line))
    exit_at = next(i for i, line in enumerate(lines) if "exit_group(" in line)
    assert commit < exit_at
    # Nothing after the commit: no checkpoint, no WAL removed, the connection never closed.
    after = "\n".join(lines[commit + 1 :])
    assert "unlink(" not in after and f"close({wal_fd})" not in after
    assert len(stored_messages()) == 2


@needs_strace
def test_at_most_two_fsyncs_with_a_daemon_running(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    write_msmtprc()
    assert run_sendmail(["you@example.org"], MESSAGE).returncode == 0
    start_daemon()
    for n in range(3):
        log = tmp_path / f"strace-{n}.log"
        done = traced(["you@example.org"], log)
        assert done.returncode == 0, done.stderr
        assert 1 <= len(syncs(log)) <= 2, syncs(log)
    assert len(stored_messages()) == 4
