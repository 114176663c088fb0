"""`relayd daemon` refusing to start: one stderr line naming the path and the reason, a sysexits
code systemd can act on, and a live daemon's wake-up socket left alone.

Faults are real: a regular file where a directory must be, a path under /proc, a read-only bind
mount in a private mount namespace (`unshare -m`, root only), a queue owned by root opened by a
daemon running as `nobody` (`setpriv`, root only), a second daemon on another queue sharing the
runtime directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd import paths
from tests.sendmail_helpers import sendmail_env
from tests.test_daemon import RELAYD, Daemon, rc_for, start_daemon, submit, upstream
from tests.upstream import UpstreamServer

__all__ = ["start_daemon", "upstream"]  # fixtures used by name below

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, setpriv)")


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("relayd: "), err
    assert "Traceback" not in err and "╭" not in err, err
    return err


def _daemon(
    *args: str, prefix: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[bytes]:
    environ = sendmail_env(**env)
    return subprocess.run(
        [*prefix, RELAYD, "daemon", "--scan-interval", "0.5", *args],
        capture_output=True,
        env=environ,
        cwd=environ["HOME"],
        timeout=30,
    )


def test_a_queue_directory_that_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way\n")
    result = _daemon(RELAYD_DATABASE_URL=f"sqlite:///{blocker}/queue.sqlite3")
    assert result.returncode == 73
    err = _one_line(result)
    assert str(blocker) in err and "not a directory" in err


def test_a_runtime_directory_that_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way\n")
    result = _daemon(RELAYD_RUNTIME_DIR=str(blocker / "relayd"))
    assert result.returncode == 73
    err = _one_line(result)
    assert "wake-up socket" in err and str(blocker) in err and "not a directory" in err


def test_a_runtime_directory_that_cannot_be_created() -> None:
    result = _daemon(RELAYD_RUNTIME_DIR="/proc/relayd-test")
    assert result.returncode == 73
    err = _one_line(result)
    assert "/proc/relayd-test" in err


def _read_only_bind(directory: Path) -> tuple[str, ...]:
    """A command prefix running the rest in a private mount namespace where `directory` is a
    read-only bind mount of itself: a real EROFS that root cannot write through."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip("no mount namespaces here")
    mount = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory}"
    return ("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh")


@ROOT_ONLY
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_queue_on_a_read_only_file_system(tmp_path: Path, existing: bool) -> None:
    queue = tmp_path / "ro"
    queue.mkdir(mode=0o700)
    url = f"sqlite:///{queue}/queue.sqlite3"
    if existing:  # a queue a daemon already ran on, so its lock file exists
        (queue / "queue.sqlite3.daemon.lock").touch()
    result = _daemon(prefix=_read_only_bind(queue), RELAYD_DATABASE_URL=url)
    assert result.returncode == 73
    err = _one_line(result)
    assert str(queue) in err and "read-only file system" in err


@ROOT_ONLY
def test_a_runtime_directory_on_a_read_only_file_system(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    result = _daemon(prefix=_read_only_bind(run), RELAYD_RUNTIME_DIR=str(run / "relayd"))
    assert result.returncode == 73
    err = _one_line(result)
    assert "wake-up socket" in err and "read-only file system" in err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's own temp directory is root's, mode 0700)."""
    made = Path(tempfile.mkdtemp(prefix="relayd-test-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made)


@ROOT_ONLY
@pytest.mark.parametrize("owner", ["file", "directory"])
def test_a_queue_created_by_root_and_a_daemon_running_as_another_user(
    shared_dir: Path, owner: str
) -> None:
    """The system unit's case: root queued mail before the daemon (user relayd) first started."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    spool, run = shared_dir / "spool", shared_dir / "run"
    spool.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    url = f"sqlite:///{spool}/queue.sqlite3"
    env = {"RELAYD_DATABASE_URL": url, "RELAYD_RUNTIME_DIR": str(run / "relayd")}
    created = subprocess.run(
        [str(Path(RELAYD).with_name("relayd-sendmail")), "-C", str(rc_for(1)), "a@example.org"],
        input=b"Subject: s\n\nbody\n",
        capture_output=True,
        env=sendmail_env(**env),
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    os.chown(run, 65534, 65534)
    if owner == "file":
        os.chown(spool, 65534, 65534)  # as the unit's ExecStartPre does; the file stays root's
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    result = _daemon(prefix=nobody, HOME=str(shared_dir), **env)
    assert result.returncode == 77
    err = _one_line(result)
    if owner == "file":
        assert f"{spool}/queue.sqlite3: owned by root (mode 0600)" in err, err
    else:
        assert f"its directory {spool} is owned by root (mode 0700)" in err, err
    assert "the daemon runs as nobody" in err and "chown" in err, err


def test_a_live_daemons_wake_up_socket_is_not_taken(
    tmp_path: Path, upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    """Two queues, one runtime directory: the second daemon refuses (75) and the first still
    gets its wake-ups (a submission is delivered at once, not at the next periodic scan)."""
    rc_for(upstream.port)
    first = start_daemon()  # --scan-interval stays 30 s: only a wake-up delivers within 5 s
    wake = paths.wake_socket()
    before = os.stat(wake).st_ino
    other = f"sqlite:///{tmp_path / 'other' / 'queue.sqlite3'}"
    second = start_daemon(ready=False, RELAYD_DATABASE_URL=other)
    code, err = second.wait(timeout=15)
    assert code == 75, err
    assert err.count("\n") == 1 and wake in err and "another relayd daemon" in err, err
    assert os.stat(wake).st_ino == before  # not unlinked and bound again
    submit()
    sent = time.monotonic()
    upstream.wait_for(1, timeout=5)
    assert time.monotonic() - sent < 5
    assert first.proc.poll() is None


def test_a_dead_daemons_wake_up_socket_is_replaced(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    first = start_daemon()
    wake = paths.wake_socket()
    first.proc.kill()  # SIGKILL: the socket file stays behind, bound by nobody
    first.proc.communicate(timeout=10)
    assert os.path.exists(wake)
    start_daemon()
    submit()
    upstream.wait_for(1, timeout=5)
