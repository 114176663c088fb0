"""`relayd queue show` reads a SQLite queue on stdlib sqlite3 (`store/sqlite_reader.py`): the
same records as SqlStore, the same output on PostgreSQL (through SqlStore), its failures as one
line, and the modules it loads kept to what it needs (SPEC §6: show within 40 MiB).

Queues are real SQLite files and a real PostgreSQL schema; the commands run as the real console
script in a fresh interpreter where what they import is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayd.cli import app
from relayd.store import location
from relayd.store.queued import Attempt, Outcome, Recipient, RecipientState, State
from relayd.store.sql import SqlStore
from relayd.store.sqlite_reader import SqliteReader, open_reader
from relayd.sysexits import ExitCode
from tests.sendmail_helpers import queue_db, sendmail_env
from tests.store_helpers import PG_URL, message, postgres_schema, record_attempt
from tests.test_daemon import RELAYD, rc_for, submit
from tests.test_imports import HEAVY

runner = CliRunner()
# Several body rows (64 KiB each), dot lines and a last line without a line end.
BODY = (
    b"From: me@example.org\r\nSubject: several chunks\r\nX-Folded: one\r\n two\r\n\r\n"
    + b"".join(b".%06d a line of the body\r\n" % n for n in range(12_000))
    + b"no final newline"
)
# What `relayd queue show` may not load on a SQLite queue, beside relayd-sendmail's HEAVY list:
# asyncio and ssl (~6 MiB) belong to the daemon and debug-server, the store's SQLAlchemy side
# and the daemon's pieces to the commands that write.
NOT_FOR_SHOW = (
    *HEAVY,
    "authlib",  # OAuth2 token work belongs to the commands and delivery that use it
    "asyncio",
    "ssl",
    "relayd.store.sql",
    "relayd.store.tables",
    "relayd.store.migrate",
    "relayd.daemon.flush",
    "relayd.daemon.actions",
    "relayd.daemon.lifecycle",
)
ALLOWED_HEAVY = ("typer", "click")  # the CLI itself
# Runs the `relayd` console script's entry point and writes the loaded modules to argv[1].
SHOW_MODULES = (
    "import atexit, json, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "sys.argv[0] = 'relayd'\n"
    "from relayd.cli import main\n"
    "main()\n"
)


def _store() -> SqlStore:
    return SqlStore.open(location.database_url())


def _attempted(store: SqlStore, queue_id: str) -> None:
    """Two attempts with per-recipient replies, the second one interrupted and late."""
    first = Attempt(
        started_at=time.time() - 60,
        duration=0.25,
        host="mx.example.org",
        tls=True,
        auth=False,
        exit_code=75,
        reply_code=451,
        reply="4.3.0 later",
        recipients=(Recipient(0, "a@example.org", RecipientState.SENT, 250, "2.0.0 ok"),),
    )
    record_attempt(store, queue_id, first, Outcome(State.QUEUED, time.time() + 60, "451 later"))
    second = Attempt(
        started_at=time.time() - 30,
        duration=1.5,
        host="/run/lmtp.sock",
        tls=False,
        auth=True,
        exit_code=69,
        reply=None,
        possible_duplicate=True,
        note="interrupted",
    )
    record_attempt(store, queue_id, second, Outcome(State.FAILED, None, "gone"))


def test_the_sqlite_reader_reads_what_sqlstore_reads() -> None:
    with _store() as store:
        new = message(
            data=BODY,
            recipients=("a@example.org", "b@example.org"),
            overrides=(("host", "mx.example.org"), ("tls", "on")),
            user="alice",
        )
        queue_id = store.enqueue(new, time.time())
        plain = store.enqueue(message(1), time.time())
        _attempted(store, queue_id)
        reader = SqliteReader.open(str(queue_db()))
        assert reader is not None
        with reader:
            for wanted in (queue_id, plain, "0000000000ZZ"):
                assert reader.get(wanted) == store.get(wanted)
                assert reader.attempts(wanted) == list(store.attempts(wanted))
                assert b"".join(reader.read_data_chunks(wanted)) == (store.read_data(wanted) or b"")
            assert len(list(reader.read_data_chunks(queue_id))) > 2  # several rows
        assert len(store.attempts(queue_id)) == 2


def test_a_queue_never_created_or_without_schema_is_empty(tmp_path: Path) -> None:
    assert SqliteReader.open(str(tmp_path / "none.sqlite3")) is None
    (tmp_path / "empty.sqlite3").write_bytes(b"")  # a file SQLite has not written yet
    assert SqliteReader.open(str(tmp_path / "empty.sqlite3")) is None
    code, out = _invoke("queue", "show", "0000000000ZZ")
    assert (code, out) == (69, "relayd: 0000000000ZZ: no such message\n")
    assert not queue_db().exists()  # reading created nothing


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_a_queue_that_is_not_a_database_is_one_line_and_73() -> None:
    rc_for(9)
    queue_id = submit()
    queue_db().write_bytes(b"not a database at all, " * 400)
    for args in (("queue", "show", queue_id), ("queue", "show", "--raw", queue_id)):
        env = sendmail_env()
        done = subprocess.run(
            [RELAYD, *args], capture_output=True, env=env, cwd=env["HOME"], timeout=30
        )
        assert done.returncode == ExitCode.CANTCREAT, done.stderr
        err = done.stderr.decode()
        assert err.count("\n") == 1 and err.startswith("relayd: cannot read the queue in "), err
        assert "the queue database is corrupt" in err and done.stdout == b""


def test_a_message_gone_between_reads_is_one_line_and_69() -> None:
    rc_for(9)
    queue_id = submit()
    reader = SqliteReader.open(str(queue_db()))
    assert reader is not None
    with reader, _store() as store:
        assert reader.get(queue_id) is not None
        store.delete([queue_id])
        assert reader.get(queue_id) is None  # each read sees the latest commit
        assert list(reader.read_data_chunks(queue_id)) == []


def _shown(queue_id: str) -> tuple[list[str], dict[str, object], bytes]:
    """`queue show` of `queue_id` (text, JSON, --raw) in this process, less what differs
    between two queues holding the same message: its id and the times of its attempts."""
    code, out = _invoke("queue", "show", queue_id)
    assert code == 0, out
    record = json.loads(_invoke("queue", "show", "--json", queue_id)[1])
    raw = runner.invoke(app, ["queue", "show", "--raw", queue_id]).stdout_bytes
    for key in ("queue_id", "next_attempt", "last_attempt"):
        record.pop(key)
    for attempt in record["attempt_log"]:
        attempt.pop("started_at")
    lines = [line for line in out.splitlines() if not line.startswith(("Queue ID:", "  20"))]
    return lines, record, raw


def _fill(store: SqlStore) -> str:
    queue_id = store.enqueue(message(data=BODY, user="alice"), 1_700_000_000.0)
    _attempted(store, queue_id)
    return queue_id


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")
def test_show_on_postgresql_reads_through_sqlstore_and_prints_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _store() as store:
        on_sqlite = _shown(_fill(store))
    with postgres_schema() as url:
        monkeypatch.setenv("RELAYD_DATABASE_URL", url)
        with SqlStore.open(url) as store:
            queue_id = _fill(store)
        reader = open_reader(url)
        assert isinstance(reader, SqlStore)  # a server queue: read through SQLAlchemy
        reader.close()
        on_postgresql = _shown(queue_id)
    assert on_sqlite == on_postgresql
    assert on_sqlite[2] == BODY
    assert "Attempt log:" in on_sqlite[0] and "  Subject: several chunks" in on_sqlite[0]


def _show_modules(tmp_path: Path, *args: str) -> set[str]:
    listing = tmp_path / "modules.json"
    env = sendmail_env()
    done = subprocess.run(
        [sys.executable, "-c", SHOW_MODULES, str(listing), *args],
        capture_output=True,
        env=env,
        cwd=env["HOME"],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(listing.read_text()))


@pytest.mark.parametrize("flag", [None, "--raw", "--json"])
def test_show_on_sqlite_loads_no_sqlalchemy_rich_or_asyncio(
    flag: str | None, tmp_path: Path
) -> None:
    rc_for(9)
    queue_id = submit()
    modules = _show_modules(tmp_path, "queue", "show", *([flag] if flag else []), queue_id)
    assert "relayd.store.sqlite_reader" in modules  # the light reader did the reading
    loaded = sorted(
        m
        for m in modules
        if (m in NOT_FOR_SHOW or m.split(".")[0] in NOT_FOR_SHOW)
        and m.split(".")[0] not in ALLOWED_HEAVY
    )
    assert loaded == []
