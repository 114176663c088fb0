"""Commands that only read the queue open it read-only, without the migration lock: they answer
behind a writer holding SQLite's write lock and on a queue this user may not write; a schema
older than the one relayd reads is one line, not a silent migration.

The writer is a real second connection holding `BEGIN IMMEDIATE`; the read-only queue is a real
read-only bind mount (`unshare -m`) or a root-owned queue read by `nobody` (`setpriv`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command

from relayd.store.migrate import alembic_config
from tests.sendmail_helpers import queue_db, run_sendmail, sendmail_env, stored_messages
from tests.test_daemon import RELAYD, rc_for, run_relayd, submit

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, setpriv)")
READERS = [
    ("queue", "list"),
    ("queue", "show", "ID"),
    ("queue", "log"),
    ("status",),
    ("mailq",),
]


def _read(args: tuple[str, ...], queue_id: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    argv = [queue_id if arg == "ID" else arg for arg in args]
    environ = sendmail_env(RELAYD_LOCK_TIMEOUT="0.5", **env)
    if argv == ["mailq"]:
        return run_sendmail(["-bp"], b"", env=environ)
    return subprocess.run(
        [RELAYD, *argv], capture_output=True, env=environ, cwd=environ["HOME"], timeout=30
    )


@pytest.fixture
def queued() -> str:
    rc_for(1)
    return submit()


@pytest.fixture
def write_lock(queued: str) -> Iterator[str]:
    """A second process's view: a connection holding the queue's write lock (BEGIN IMMEDIATE)."""
    conn = sqlite3.connect(queue_db(), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield queued
    finally:
        conn.close()


@pytest.mark.parametrize("args", READERS, ids=lambda args: " ".join(args))
def test_readers_answer_behind_a_held_write_lock(write_lock: str, args: tuple[str, ...]) -> None:
    result = _read(args, write_lock)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    if args[0] in ("queue", "mailq") and args[-1] != "log":
        assert write_lock in out, out


def test_flush_behind_a_held_write_lock_is_one_line_and_75(write_lock: str) -> None:
    result = subprocess.run(
        [RELAYD, "queue", "flush"],
        capture_output=True,
        env=sendmail_env(RELAYD_LOCK_TIMEOUT="0.5"),
        timeout=30,
    )
    assert result.returncode == 75
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "locked" in err and "Traceback" not in err, err


def test_readers_on_a_queue_never_created_create_nothing() -> None:
    for args in READERS:
        assert _read(args, "M0").returncode in (0, 69)
    assert not queue_db().exists()


@ROOT_ONLY
@pytest.mark.parametrize("args", READERS, ids=lambda args: " ".join(args))
def test_readers_on_a_read_only_file_system(queued: str, args: tuple[str, ...]) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode:
        pytest.skip("no mount namespaces here")
    directory = queue_db().parent
    mount = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory}"
    prefix = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh"]
    argv = [queued if arg == "ID" else arg for arg in args]
    sendmail = str(Path(RELAYD).with_name("relayd-sendmail"))
    program = [sendmail, "-bp"] if argv == ["mailq"] else [RELAYD, *argv]
    result = subprocess.run(
        [*prefix, *program], capture_output=True, env=sendmail_env(), timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def shared_queue() -> Iterator[Path]:
    """A queue directory `nobody` can read but not write (pytest's temp directory is 0700)."""
    made = Path(tempfile.mkdtemp(prefix="relayd-test-"))
    made.chmod(0o755)
    try:
        yield made / "queue.sqlite3"
    finally:
        shutil.rmtree(made)


@ROOT_ONLY
def test_a_user_reads_a_queue_it_may_not_write(shared_queue: Path) -> None:
    """What a non-root user sees: a root-owned queue (0644 in a 0755 directory, no daemon, so no
    -wal or -shm file) can be listed; it could not be opened for writing at all."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    url = f"sqlite:///{shared_queue}"
    rc_for(1)
    stored = run_sendmail(
        ["you@example.org"], b"\nbody\n", env=sendmail_env(RELAYD_DATABASE_URL=url)
    )
    assert stored.returncode == 0, stored.stderr
    (message,) = stored_messages(shared_queue)
    shared_queue.chmod(0o644)
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = sendmail_env(RELAYD_DATABASE_URL=url, HOME=str(shared_queue.parent))
    for argv in (["queue", "list"], ["status"]):
        result = subprocess.run(
            [*nobody, RELAYD, *argv], capture_output=True, env=env, cwd="/", timeout=30
        )
        assert result.returncode == 0, result.stderr
    assert message.queue_id.encode() in result.stdout or b"default" in result.stdout
    assert sorted(os.listdir(shared_queue.parent)) == ["queue.sqlite3"]


def test_an_older_schema_is_one_line_until_a_writer_upgrades_it() -> None:
    db = queue_db()
    db.parent.mkdir(mode=0o700)
    command.upgrade(alembic_config(f"sqlite:///{db}"), "0001")
    for args in READERS:
        result = _read(args, "M0")
        assert result.returncode == 75, (args, result.stderr)
        err = result.stderr.decode()
        assert err.count("\n") == 1 and "schema revision 0001" in err and "older" in err, err
        assert "relayd queue flush" in err
    flushed = run_relayd("queue", "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert _read(("queue", "list"), "M0").returncode == 0
