"""`relayd status`: daemon state, counts per account and state, next retry, last errors."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from relayd import paths
from relayd.cli import app
from relayd.cli import status as status_cli
from relayd.daemon import instance
from relayd.errors import QueueError
from relayd.store.queued import Attempt, Outcome, State
from relayd.store.sql import SqlStore
from relayd.submission import about
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import write_msmtprc
from tests.store_helpers import message, record_attempt
from tests.test_attempt_log import utc
from tests.test_daemon import Daemon, run_relayd, start_daemon
from tests.test_text import HOSTILE, assert_harmless

__all__ = ["start_daemon", "utc"]  # pytest fixtures, used by name (utc: autouse, TZ=UTC)

T0 = 1_795_534_499.0  # 2026-11-24 15:34:59 UTC
REFUSED = "cannot connect to 127.0.0.1, port 1: Connection refused"


@pytest.fixture
def store() -> Iterator[SqlStore]:
    """The test environment's queue (conftest's RELAYD_DATABASE_URL), opened with SqlStore."""
    with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as opened:
        yield opened


def status(*args: str) -> Result:
    return CliRunner().invoke(app, ["status", *args])


def status_json() -> dict[str, Any]:
    result = status("--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def attempt(
    store: SqlStore, queue_id: str, when: float, code: int, reply: tuple[int | None, str]
) -> None:
    """Log one attempt of `queue_id`: 0 sent, 75 deferred (due an hour later), else failed."""
    state = {0: State.SENT, 75: State.QUEUED}.get(code, State.FAILED)
    record_attempt(
        store,
        queue_id,
        Attempt(when, 0.2, "127.0.0.1", False, False, code, reply[0], reply[1]),
        Outcome(state, when + 3600 if state is State.QUEUED else None, reply[1] if code else None),
    )


def populate(store: SqlStore) -> dict[str, str]:
    """Mail of two accounts in every state but `sending`; the queue ids by role."""
    ids = {
        "sent": store.enqueue(message(1), T0),
        "deferred": store.enqueue(message(2), T0),
        "fresh": store.enqueue(message(3), T0 + 5),
        "held": store.enqueue(message(4), T0),
        "failed": store.enqueue(message(5, account="work"), T0),
        "work-queued": store.enqueue(message(6, account="work"), T0 + 50),
    }
    attempt(store, ids["sent"], T0 + 10, 0, (250, "2.0.0 queued as X1"))
    attempt(store, ids["deferred"], T0 + 20, 75, (None, REFUSED))
    attempt(store, ids["failed"], T0 + 30, 65, (550, "5.1.1 no such user\nsecond line"))
    attempt(store, ids["sent"], T0 + 40, 0, (250, "ok"))  # a later success changes nothing
    store.hold([ids["held"]], "held by the user")
    return ids


def test_an_empty_queue(store: SqlStore) -> None:
    assert status_json() == {
        "daemon": False,
        "database": os.environ["RELAYD_DATABASE_URL"],
        "smtp_listener": None,
        "counts": {},
        "next_retry": None,
        "accounts": [],
        "limits": {},
    }
    result = status()
    assert result.exit_code == 0
    assert result.stdout == (
        "daemon: not running\n"
        f"database: {os.environ['RELAYD_DATABASE_URL']}\n"
        "smtp listener: off\n"
        "messages: 0 queued, 0 sending, 0 held, 0 sent, 0 failed\n"
        "next retry: -\n"
    )


def test_counts_next_retry_and_last_errors_as_json(store: SqlStore) -> None:
    populate(store)
    report = status_json()
    assert report["daemon"] is False
    assert report["counts"] == {
        "default": {"queued": 2, "sending": 0, "held": 1, "sent": 1, "failed": 0},
        "work": {"queued": 1, "sending": 0, "held": 0, "sent": 0, "failed": 1},
    }
    # default: the fresh message is due at once (T0 + 5), the deferred one an hour later.
    assert report["next_retry"] == T0 + 5
    default, work = report["accounts"]
    assert default == {
        "account": "default",
        "queued": 2,
        "sending": 0,
        "held": 1,
        "sent": 1,
        "failed": 0,
        "next_retry": T0 + 5,
        # The user's hold never ran an attempt: it sorts by arrival (T0), before the deferral.
        "last_error": REFUSED,
        "last_error_at": T0 + 20,
    }
    assert work["next_retry"] == T0 + 50
    assert (work["last_error"], work["last_error_at"]) == (
        "550 5.1.1 no such user second line",
        T0 + 30,
    )


def test_a_hold_later_than_the_last_attempt_is_the_last_error(store: SqlStore) -> None:
    populate(store)
    later = store.enqueue(message(7), T0 + 100)
    store.hold([later], 'account "gone" is not in ~/.msmtprc')
    (default, _work) = status_json()["accounts"]
    assert default["last_error"] == 'account "gone" is not in ~/.msmtprc'
    assert default["last_error_at"] is None  # held before any attempt: no time recorded


def test_plain_text_when_piped(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(store)
    monkeypatch.setattr(status_cli, "clock", lambda: T0)  # every next retry still to come
    result = status()
    assert result.exit_code == 0, result.output
    url = os.environ["RELAYD_DATABASE_URL"]
    assert result.stdout == (
        "daemon: not running\n"
        f"database: {url}\n"
        "smtp listener: off\n"
        "messages: 3 queued, 0 sending, 1 held, 1 sent, 1 failed\n"
        "next retry: 2026-11-24 15:35:04\n"
        "\n"
        "ACCOUNT  QUEUED  SENDING  HELD  SENT  FAILED  NEXT RETRY\n"
        "default       2        0     1     1       0  2026-11-24 15:35:04\n"
        "work          1        0     0     0       1  2026-11-24 15:35:49\n"
        "\n"
        "ACCOUNT  LAST ERROR AT        LAST ERROR\n"
        f"default  2026-11-24 15:35:19  {REFUSED}\n"
        "work     2026-11-24 15:35:29  550 5.1.1 no such user second line\n"
    )
    assert "\x1b" not in result.stdout


def test_a_retry_time_that_has_passed_is_due_now(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(store)
    # default's fresh message was due at T0 + 5; work's queued one at T0 + 50
    monkeypatch.setattr(status_cli, "clock", lambda: T0 + 30)
    lines = status().stdout.splitlines()
    assert "next retry: due now" in lines
    assert lines[7].startswith("default ") and lines[7].endswith("  due now")
    assert lines[8].startswith("work ") and lines[8].endswith("  2026-11-24 15:35:49")
    assert status_json()["next_retry"] == T0 + 5  # the JSON keeps the time itself
    monkeypatch.setattr(status_cli, "clock", lambda: T0 + 50)  # exactly due is due
    assert status().stdout.splitlines()[8].endswith("  due now")


def test_a_hostile_last_error_reaches_no_terminal(store: SqlStore) -> None:
    attempt(store, store.enqueue(message(1), T0), T0 + 10, 65, (550, HOSTILE))
    text, as_json = status().stdout, status("--json").stdout
    assert_harmless(text)
    assert_harmless(as_json)
    assert text.endswith(
        "  550 a\\x9b31m b c \\u202ed e f \\u2066g\\u200eh\\u061ci \\U000e0041 \\x1b[2J\n"
    )
    # The stored error, its lines joined: exact in the JSON, only escaped in its text.
    last_error = json.loads(as_json)["accounts"][0]["last_error"]
    assert last_error == "550 " + " ".join(HOSTILE.splitlines())


def test_rich_tables_on_a_terminal(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(store)
    monkeypatch.setattr(status_cli, "on_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    result = status()
    assert result.exit_code == 0, result.output
    assert "daemon: not running" in result.stdout
    assert "┃ ACCOUNT ┃ QUEUED ┃" in result.stdout  # rich's box drawing
    assert any(line.startswith("│ work ") for line in result.stdout.splitlines())
    assert "550 5.1.1 no such user second line" in result.stdout


def test_status_reads_aggregates_only(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = enqueue_many(store, [message(n, account=f"a{n % 3}") for n in range(3000)], T0)
    for queue_id in ids[:500]:
        attempt(store, queue_id, T0 + 1, 75, (451, "4.3.0 later"))

    def no_loading(*_: object, **__: object) -> None:
        raise AssertionError("status must not load messages one by one")

    monkeypatch.setattr("relayd.store.sql.load_messages", no_loading)
    monkeypatch.setattr("relayd.store.rows.attempt_from_row", no_loading)
    report = status_json()
    assert sum(a["queued"] for a in report["accounts"]) == 3000
    assert {a["last_error"] for a in report["accounts"]} == {"451 4.3.0 later"}


def test_an_unreadable_queue_is_the_stores_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/queue.sqlite3"
    with pytest.raises(QueueError) as expected:
        SqlStore.open(url)
    monkeypatch.setenv("RELAYD_DATABASE_URL", url)
    for args in ((), ("--json",)):
        result = status(*args)
        assert result.exit_code == int(expected.value.exit_code)
        assert result.stderr == f"relayd: {expected.value.message}\n"
        assert result.stdout == ""


# --- the daemon's state ----------------------------------------------------------------------


def test_daemon_running_tests_the_lock_without_keeping_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q' / 'queue.sqlite3'}"
    assert instance.daemon_running(url) is False  # no lock file: never ran
    fd = instance.instance_lock(url)
    assert fd is not None
    try:
        assert instance.daemon_running(url) is True
        assert instance.daemon_running(url) is True  # a check never blocks the next one
    finally:
        os.close(fd)
    assert instance.daemon_running(url) is False
    again = instance.instance_lock(url)  # the checks left nothing locked
    assert again is not None
    os.close(again)
    assert instance.daemon_running("postgresql+psycopg://u:pw@db.example/relayd") is None


def test_a_postgresql_queue_asks_the_wake_socket_without_waking(tmp_path: Path) -> None:
    url = "postgresql+psycopg://relayd:s3cret@db.example/relayd"
    assert status_cli.daemon_state(url) is None
    path = paths.wake_socket()
    paths.ensure_private_dir(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.setblocking(False)
        assert status_cli.daemon_state(url) is True
        with pytest.raises(BlockingIOError):
            listener.recv(64)  # nothing was sent to it
    os.unlink(path)
    assert status_cli.daemon_state(url) is None  # a stale socket file: nobody listens
    assert "s3cret" not in status_cli._location(url)


def test_status_and_sendmail_version_ask_the_one_wake_socket_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert vars(status_cli)["daemon_listening"] is instance.daemon_listening
    assert not instance.daemon_listening(paths.wake_socket())  # nothing listens in this test
    monkeypatch.setattr(instance, "daemon_listening", lambda wake_socket: True)
    assert any(line.startswith("Daemon: running") for line in about.version_lines("x"))


def test_status_with_a_running_daemon(start_daemon: Callable[..., Daemon]) -> None:
    write_msmtprc()
    started = start_daemon()
    running = run_relayd("status")
    assert running.returncode == 0, running.stderr
    assert running.stdout.splitlines()[0] == b"daemon: running"
    assert json.loads(run_relayd("status", "--json").stdout)["daemon"] is True
    assert status_json()["daemon"] is True  # in-process too: the lock is another process's
    code, err = started.stop()
    assert code == 0, err
    stopped = run_relayd("status")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines()[0] == b"daemon: not running"
    assert stopped.stderr == b""
