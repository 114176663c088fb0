"""When the queue cannot be written: one-line QueueError, exit 73 or 75, nothing half-stored."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.errors import QueueError
from relayd.store import fastpath
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode
from tests.store_helpers import REPO, count, message, orphans

T0 = 1_700_000_000.0

# Run inside a private mount namespace (see `private_mount`): fill or use the queue, report JSON.
FILL = """
import json, sqlite3, sys, time
from relayd.errors import QueueError
from relayd.store import fastpath
from relayd.store.records import NewMessage
from tests.store_helpers import count, orphans
db, limit = sys.argv[1], int(sys.argv[2])
stored, error = 0, None
for i in range(limit):
    msg = NewMessage("default", (), "s@x", ("a@x", "b@x"), b"x" * 50_000)
    try:
        fastpath.enqueue(db, msg, time.time(), timeout=1)
        stored += 1
    except QueueError as exc:
        error = [int(exc.exit_code), exc.message]
        break
report = {"stored": stored, "error": error}
if sys.argv[3:] == ["check"]:  # the database is readable here (not on a read-only mount)
    check = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
    report |= {"count": count(db), "orphans": orphans(db), "integrity": check}
print(json.dumps(report))
"""


def one_line(error: QueueError) -> str:
    assert "\n" not in error.message
    return error.message


@functools.cache
def can_mount() -> bool:
    """Whether this process may make private mounts (root with CAP_SYS_ADMIN, `unshare`)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs tmpfs /tmp"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", probe],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def private_mount(setup: str, *args: str) -> dict[str, Any]:
    """Run shell `setup` then FILL with `args` in a mount namespace that dies with it."""
    script = f'{setup}\nexec "{sys.executable}" -c "$FILL" "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "FILL": FILL},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spool" / "queue.sqlite3"
    fastpath.enqueue(str(path), message(), T0)  # a healthy queue holding one message
    yield path


@pytest.mark.skipif(not can_mount(), reason="needs root and unshare to mount a small tmpfs")
def test_disk_full_on_a_real_small_filesystem(tmp_path: Path) -> None:
    spool = tmp_path / "small"
    spool.mkdir()
    report = private_mount(
        f"mount -t tmpfs -o size=1m tmpfs '{spool}'", str(spool / "queue.sqlite3"), "200", "check"
    )
    assert report["error"] is not None, "the 1 MiB filesystem never filled up"
    code, text = report["error"]
    assert code == ExitCode.TEMPFAIL and "the disk is full" in text, text
    assert report["stored"] > 0 and report["count"] == report["stored"]
    assert (report["orphans"], report["integrity"]) == (0, "ok")


def test_disk_full_inside_the_transaction(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connect = fastpath._connect

    def no_room(path: str, timeout: float) -> sqlite3.Connection:
        conn = connect(path, timeout)
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL
        return conn

    monkeypatch.setattr(fastpath, "_connect", no_room)
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(db), message(data=b"x" * 1_000_000), T0)
    assert caught.value.exit_code == ExitCode.TEMPFAIL
    assert "the disk is full" in one_line(caught.value)
    assert (count(db), orphans(db)) == (1, 0)


def test_disk_full_creating_the_queue_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: str, mode: int = 0o777) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(os, "mkdir", full)
    target = tmp_path / "new" / "queue.sqlite3"
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(target), message(), T0)
    assert caught.value.exit_code == ExitCode.TEMPFAIL
    assert "the disk is full" in one_line(caught.value) and str(target) in caught.value.message


class _BrokenRecipients:
    """A connection whose multi-row INSERTs (the body's rows, the recipients) fail after the
    message row went in."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self._conn.execute(*args)

    def cursor(self) -> _BrokenCursor:
        return _BrokenCursor(self._conn.cursor())

    def close(self) -> None:
        self._conn.close()


class _BrokenCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self._cursor.execute(*args)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failure_mid_transaction_stores_nothing(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = fastpath._connect
    monkeypatch.setattr(fastpath, "_connect", lambda p, t: _BrokenRecipients(connect(p, t)))
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(db), message(1), T0)
    assert caught.value.exit_code == ExitCode.CANTCREAT and "I/O error" in one_line(caught.value)
    assert (count(db), orphans(db)) == (1, 0)


def test_read_only_queue(db: Path) -> None:
    if os.geteuid() == 0:
        if not can_mount():
            pytest.skip("root ignores file modes and cannot remount read-only here")
        setup = f"mount --bind '{db.parent}' '{db.parent}'\nmount -o remount,bind,ro '{db.parent}'"
        report = private_mount(setup, str(db), "1")
        code, text = report["error"]
        assert "read-only file system" in text
    else:
        db.chmod(0o400)
        db.parent.chmod(0o500)
        try:
            with pytest.raises(QueueError) as caught:
                fastpath.enqueue(str(db), message(1), T0)
        finally:
            db.parent.chmod(0o700)
            db.chmod(0o600)
        code, text = caught.value.exit_code, one_line(caught.value)
        assert "permission denied" in text
    assert code == ExitCode.CANTCREAT and str(db) in text
    assert (count(db), orphans(db)) == (1, 0)


def test_queue_owned_by_another_user(db: Path) -> None:
    """System mode without the socket: an ordinary user cannot write root's queue (EACCES)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    shared = Path(tempfile.mkdtemp(prefix="relayd-"))  # pytest's tmp dirs are root-only
    try:
        shared.chmod(0o755)
        queue = shared / "queue.sqlite3"
        shutil.copy(db, queue)
        queue.chmod(0o644)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.setgid(65534)
            os.setuid(65534)
            try:
                fastpath.enqueue(str(queue), message(1), T0)
                answer = "stored"
            except QueueError as exc:
                answer = f"{int(exc.exit_code)} {exc.message}"
            os.write(write, answer.encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        answer = os.read(read, 4096).decode()
        os.close(read)
        assert answer.startswith("73 ") and "permission denied" in answer, answer
        assert count(queue) == 1
    finally:
        shutil.rmtree(shared)


def test_queue_directory_blocked_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    target = tmp_path / "state" / "relayd" / "queue.sqlite3"
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(target), message(), T0)
    assert caught.value.exit_code == ExitCode.CANTCREAT
    assert "not a directory" in one_line(caught.value)


def test_locked_past_the_timeout(db: Path) -> None:
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(QueueError) as caught:
            fastpath.enqueue(str(db), message(1), T0, timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert caught.value.exit_code == ExitCode.TEMPFAIL
        assert "locked (waited 0.3 s)" in one_line(caught.value)
        with SqlStore.open(f"sqlite:///{db}", timeout=0.2, migrate=False) as store:
            with pytest.raises(QueueError) as via_store:
                store.enqueue(message(2), T0)
            assert via_store.value.exit_code == ExitCode.TEMPFAIL
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert count(db) == 1
    fastpath.enqueue(str(db), message(3), T0, timeout=0.3)
    assert count(db) == 2


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "queue.sqlite3"
    junk.write_bytes(b"this is not SQLite\n" * 500)
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(junk), message(), T0)
    assert caught.value.exit_code == ExitCode.CANTCREAT
    assert "corrupt" in one_line(caught.value)
    with pytest.raises(QueueError) as via_store:
        SqlStore.open(f"sqlite:///{junk}")
    assert via_store.value.exit_code == ExitCode.CANTCREAT and "corrupt" in via_store.value.message


def test_a_damaged_database(db: Path) -> None:
    with open(db, "r+b") as handle:
        handle.seek(100)  # past the header: the schema table's page
        handle.write(b"\xff" * 3000)
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(db), message(1), T0)
    assert caught.value.exit_code == ExitCode.CANTCREAT
    assert "corrupt" in one_line(caught.value)


def test_an_unreachable_postgresql_is_a_temporary_failure() -> None:
    with pytest.raises(QueueError) as caught:
        fastpath.submit("postgresql+psycopg://postgres:secret@127.0.0.1:1/test", message(), T0)
    assert caught.value.exit_code == ExitCode.TEMPFAIL
    assert "secret" not in one_line(caught.value) and "127.0.0.1:1" in caught.value.message
