"""The sendmail fast path: light imports, private files, schema check, wake-ups, crashes."""

from __future__ import annotations

import os
import pwd
import random
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relayd.errors import QueueError
from relayd.store import fastpath, ids
from relayd.store.migrate import migrate_url
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.submission import submit
from relayd.sysexits import ExitCode
from tests.sendmail_helpers import queue_db, run_sendmail, write_msmtprc
from tests.store_helpers import (
    PG_URL,
    REPO,
    count,
    list_messages,
    message,
    orphans,
    postgres_schema,
    run_python,
)

T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "relayd" / "queue.sqlite3"


def test_finding_the_database_without_relayd_toml_skips_the_settings_module() -> None:
    code = (
        "import sys, relayd.store.location\n"
        "url = relayd.store.location.database_url()\n"
        "print(url.startswith('sqlite:///'), 'relayd.settings' in sys.modules)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


@pytest.fixture
def common_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: files would be 0644 and directories 0755
    yield
    os.umask(old)


@pytest.mark.usefixtures("common_umask")
def test_first_enqueue_creates_a_private_migrated_queue(db: Path) -> None:
    queue_id = fastpath.enqueue(str(db), message(), T0)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    reader = sqlite3.connect(db)  # keeps the -wal and -shm files in place
    try:
        reader.execute("SELECT count(*) FROM messages").fetchone()
        fastpath.enqueue(str(db), message(1), T0)
        for suffix in ("-wal", "-shm"):
            assert stat.S_IMODE(Path(f"{db}{suffix}").stat().st_mode) == 0o600
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        reader.close()
    assert ids.is_queue_id(queue_id)


def test_fast_path_rows_read_back_through_sqlstore(db: Path) -> None:
    new = message(
        recipients=("a@x.org", "b@x.org"), overrides=(("from_full_name", "A  B"),), user="alice"
    )
    queue_id = fastpath.enqueue(str(db), new, T0)
    with SqlStore.open(f"sqlite:///{db}") as store:
        got = store.get(queue_id)
        assert store.read_data(queue_id) == new.data
        same_way = store.get(store.enqueue(new, T0))
    assert got is not None and same_way is not None
    assert (got.state, got.overrides, got.created_at, got.next_attempt_at) == (
        State.QUEUED,
        (("from_full_name", "A  B"),),
        T0,
        T0,
    )
    assert (got.uid, got.user) == (1000, "alice")
    assert got.__dict__ | {"queue_id": "x"} == same_way.__dict__ | {"queue_id": "x"}


def test_a_missing_schema_is_migrated_and_an_unknown_one_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch()  # an empty file: no tables at all
    fastpath.enqueue(str(db), message(), T0)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    with pytest.raises(QueueError) as caught:
        fastpath.enqueue(str(db), message(1), T0)
    assert caught.value.exit_code == ExitCode.TEMPFAIL
    assert count(db) == 1


def test_a_colliding_queue_id_is_drawn_again(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = fastpath.enqueue(str(db), message(), T0)
    draws = iter([first, first, "0000000000AB"])
    monkeypatch.setattr(fastpath, "new_queue_id", lambda now: next(draws))
    assert fastpath.enqueue(str(db), message(1), T0) == "0000000000AB"
    assert count(db) == 2


def test_submit_chooses_the_fast_path_or_sqlstore(tmp_path: Path) -> None:
    fastpath.submit(f"sqlite:///{tmp_path / 'a.sqlite3'}", message(), T0)
    fastpath.submit(str(tmp_path / "b.sqlite3"), message(), T0)
    assert count(tmp_path / "a.sqlite3") == 1 and count(tmp_path / "b.sqlite3") == 1


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")
def test_submit_to_postgresql_goes_through_sqlstore() -> None:
    with postgres_schema() as url:
        queue_id = fastpath.submit(url, message(), T0)
        with SqlStore.open(url) as store:
            assert [m.queue_id for m in list_messages(store)] == [queue_id]


def test_a_submission_records_the_name_of_its_uid() -> None:
    write_msmtprc()
    sent = run_sendmail(["-odq", "rcpt@example.org"], b"Subject: mine\n\nhello\n")
    assert sent.returncode == 0, sent.stderr
    conn = sqlite3.connect(queue_db())
    try:
        owners = conn.execute("SELECT submitted_uid, submitted_user FROM messages").fetchall()
    finally:
        conn.close()
    assert owners == [(os.getuid(), pwd.getpwuid(os.getuid()).pw_name)]


def test_a_uid_without_a_usable_name_is_recorded_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {1000: "alice", 1001: "b" * 65, 1002: "caf\udce9"}

    def getpwuid(uid: int) -> Any:
        if uid not in names:
            raise KeyError(f"getpwuid(): uid not found: {uid}")
        return SimpleNamespace(pw_name=names[uid])

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(submit, "_names", {})
    assert submit.user_name(1000) == "alice"
    assert submit.user_name(4242) is None  # no passwd entry
    assert submit.user_name(1001) is None  # longer than the column
    assert submit.user_name(1002) is None  # not UTF-8
    # A long-lived process (the listener) looks a name up again only after a while.
    names[1000] = "alice2"
    assert submit.user_name(1000) == "alice"
    monkeypatch.setattr(submit, "_NAME_SECONDS", 0.0)
    assert submit.user_name(1000) == "alice2"


def test_wake_without_a_daemon_is_silent(tmp_path: Path) -> None:
    assert not fastpath.wake(str(tmp_path / "nobody" / "wake"))
    plain = tmp_path / "not-a-socket"
    plain.write_text("")
    assert not fastpath.wake(str(plain))


def test_wake_reaches_a_listening_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "wake")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(path)
        assert fastpath.wake(path)
        assert daemon.recv(64) == b"wake"
    assert not fastpath.wake(path)  # bound file left behind, nobody listening: ECONNREFUSED


def test_wake_defaults_to_the_users_runtime_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as root it would be /run/relayd/wake
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "relayd"
    runtime.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(str(runtime / "wake"))
        assert fastpath.wake(payload=b"acct")
        assert daemon.recv(64) == b"acct"


SUBMITTER = """
import sys, time
from relayd.store import fastpath
from relayd.store.records import NewMessage
db, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    body = b"Subject: %d/%d\\r\\n\\r\\n" % (worker, i) + b"x" * 2000 + b"\\r\\n"
    msg = NewMessage("default", (), "s@x", ("a@x", "b@x", "c@x"), body)
    print(fastpath.enqueue(db, msg, time.time()), flush=True)
"""


def test_twenty_parallel_submitters_store_a_thousand_messages(db: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(db), str(w), "50"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for w in range(20)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    errors = [err for _, err in outputs if err]
    assert errors == [] and all(p.returncode == 0 for p in procs)
    queue_ids = [line for out, _ in outputs for line in out.split()]
    assert len(queue_ids) == 1000 and len(set(queue_ids)) == 1000
    assert count(db) == 1000 and count(db, "recipients") == 3000 and orphans(db) == 0


@pytest.fixture
def crash_db(db: Path) -> Iterator[Path]:
    # Migrate first: on a loaded machine the children could otherwise all die while importing
    # the migration code, and the kills would never land near a commit (racing migrations are
    # covered in test_migrate.py).
    migrate_url(f"sqlite:///{db}")
    yield db
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def test_sigkill_around_the_commit_leaves_whole_messages_or_none(crash_db: Path) -> None:
    rng = random.Random(3)
    reported: list[str] = []
    for _ in range(30):
        child = subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(crash_db), "0", "100000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        time.sleep(rng.uniform(0.03, 0.3))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        whole = [line for line in out.splitlines(keepends=True) if line.endswith(b"\n")]
        reported += [line.decode().strip() for line in whole]
    conn = sqlite3.connect(crash_db)
    try:
        stored = {
            queue_id: (size, data, rcpts)
            for queue_id, size, data, rcpts in conn.execute(
                "SELECT queue_id, size, data,"
                " (SELECT count(*) FROM recipients r WHERE r.message_id = m.id)"
                " FROM messages m JOIN bodies b ON b.message_id = m.id"
            )
        }
    finally:
        conn.close()
    assert reported, "the child never got to commit anything: raise the sleep bounds"
    assert set(reported) <= set(stored)
    body = b"\r\n\r\n" + b"x" * 2000 + b"\r\n"
    for size, data, rcpts in stored.values():
        assert data.startswith(b"Subject: 0/") and data.endswith(body)
        assert (size, rcpts) == (len(data), 3)
    assert orphans(crash_db) == 0


def test_queue_ids_are_base32_of_the_millisecond_and_20_random_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 digits of the time in milliseconds (modulo 2**40), 4 of the random draw's top 20 bits,
    most significant first: as spelled digit by digit here, for many times and draws."""
    import random

    from relayd.store import ids

    def spelled(value: int, digits: int) -> str:
        return "".join(ids._ALPHABET[value >> (5 * n) & 31] for n in reversed(range(digits)))

    rng = random.Random(14)
    for now in [0.0, 1e12 / 1000 - 0.001, *(rng.uniform(0, 4e9) for _ in range(2000))]:
        draw = rng.getrandbits(24).to_bytes(3, "big")
        monkeypatch.setattr(os, "urandom", lambda size, draw=draw: draw[:size])
        expected = spelled(int(now * 1000) % (1 << 40), 8) + spelled(int.from_bytes(draw) >> 4, 4)
        assert ids.new_queue_id(now) == expected
        assert ids.is_queue_id(expected)
