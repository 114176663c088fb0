"""`relayd queue log`: every attempt in msmtp's log format, by message, as JSON, and followed."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from typing import IO

import pytest
from typer.testing import CliRunner, Result

from relayd.accounts.account import Account
from relayd.cli import app
from relayd.cli import queue_log as queue_log_cli
from relayd.daemon.attempt_log import log_info
from relayd.delivery.result import Reply
from relayd.store.queued import Attempt, Outcome, Recipient, RecipientState, State, mail_size
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import sendmail_env
from tests.store_helpers import message, record_attempt
from tests.test_daemon import RELAYD
from tests.test_status import T0, store, utc
from tests.test_text import HOSTILE, assert_harmless

__all__ = ["store", "utc"]  # pytest fixtures, used by name (utc: autouse, TZ=UTC)

ME, YOU, BAD = "me@example.org", "you@example.com", "o'n@example.com"
DATA = b"Subject: hi\r\n\r\nhello\r\n"
REFUSED = "cannot connect to 127.0.0.1, port 2699: Connection refused"


def log(*args: str) -> Result:
    return CliRunner().invoke(app, ["queue", "log", *args])


def sent(position: int, address: str, code: int = 250, text: str = "2.1.5 ok") -> Recipient:
    return Recipient(position, address, RecipientState.SENT, code, text)


def pending(position: int, address: str, code: int | None, text: str) -> Recipient:
    return Recipient(position, address, RecipientState.PENDING, code, text)


def populate(store: SqlStore) -> tuple[str, str]:
    """Two messages: one refused, deferred by a 451, then sent as a possible duplicate; one
    sent at once over a socket with AUTH. Their queue ids."""
    first = store.enqueue(message(recipients=(YOU, BAD), data=DATA, sender=ME), T0)
    retry = Outcome(State.QUEUED, T0 + 60, "later")
    record_attempt(
        store,
        first,
        Attempt(
            T0 + 1,
            0.1,
            "127.0.0.1",
            False,
            False,
            75,
            None,
            REFUSED,
            (pending(0, YOU, None, REFUSED), pending(1, BAD, None, REFUSED)),
        ),
        retry,
    )
    deferred = Attempt(
        T0 + 2,
        0.3,
        "127.0.0.1",
        False,
        False,
        69,
        451,
        "4.3.0 it's busy\n4.3.0 \x01 come back",
        (pending(0, YOU, 451, "4.3.0 busy"), pending(1, BAD, 451, "4.3.0 busy")),
    )
    record_attempt(store, first, deferred, retry)
    done = Attempt(
        T0 + 3,
        0.5,
        "127.0.0.1",
        True,
        False,
        0,
        250,
        "2.0.0 queued as X1",
        (sent(0, YOU), sent(1, BAD)),
        possible_duplicate=True,
    )
    record_attempt(store, first, done, Outcome(State.SENT))
    second = store.enqueue(message(recipients=(YOU,), data=b"x\n", sender=""), T0 + 4)
    over_socket = Attempt(T0 + 5, 0.2, "/run/lmtp.sock", False, True, 0, 250, "ok", (sent(0, YOU),))
    record_attempt(store, second, over_socket, Outcome(State.SENT))
    return first, second


def expected_lines(first: str, second: str) -> list[str]:
    both = f"recipients={YOU},{BAD}"
    return [
        f"2026-11-24 15:35:00 {first} host=127.0.0.1 tls=off auth=off from={ME} {both} "
        f"errormsg='{REFUSED}' exitcode=EX_TEMPFAIL",
        f"2026-11-24 15:35:01 {first} host=127.0.0.1 tls=off auth=off from={ME} {both} "
        "smtpstatus=451 smtpmsg='451-4.3.0 it?s busy\\n451 4.3.0 ? come back' "
        "exitcode=EX_UNAVAILABLE",
        f"2026-11-24 15:35:02 {first} host=127.0.0.1 tls=on auth=off from={ME} {both} "
        "mailsize=19 smtpstatus=250 smtpmsg='250 2.0.0 queued as X1' exitcode=EX_OK "
        "(possible duplicate)",
        f"2026-11-24 15:35:04 {second} socket=/run/lmtp.sock tls=off auth=on from= "
        f"recipients={YOU} mailsize=2 smtpstatus=250 smtpmsg='250 ok' exitcode=EX_OK",
    ]


def test_every_attempt_oldest_first_in_msmtps_format(store: SqlStore) -> None:
    first, second = populate(store)
    result = log()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == expected_lines(first, second)
    assert result.stderr == ""


def test_the_line_is_the_live_log_line(store: SqlStore) -> None:
    """The same formatter as the daemon's logfile: the stored success reads back as it was."""
    first, _ = populate(store)
    live = log_info(
        Account(None, None, host="127.0.0.1", tls=True),
        envelope_from=ME,
        recipients=[YOU, BAD],
        exit_code=0,
        mailsize=mail_size(DATA),
        reply=Reply(250, ("2.0.0 queued as X1",)),
    )
    line = log(first).stdout.splitlines()[2]
    assert line == f"2026-11-24 15:35:02 {first} {live} (possible duplicate)"


def test_one_message_and_the_last_lines(store: SqlStore) -> None:
    first, second = populate(store)
    lines = expected_lines(first, second)
    assert log(first).stdout.splitlines() == lines[:3]
    assert log(second).stdout.splitlines() == lines[3:]
    assert log("--lines", "2").stdout.splitlines() == lines[2:]
    assert log(first, "-n", "1").stdout.splitlines() == lines[2:3]
    assert log("--lines", "0").stdout == ""
    assert log("--lines", "10").stdout.splitlines() == lines


def test_an_unknown_id(store: SqlStore) -> None:
    populate(store)
    result = log("NOSUCHID")
    assert result.exit_code == 69  # EX_UNAVAILABLE, as `relayd queue hold` for a missing id
    assert result.stderr == "relayd: NOSUCHID: no such message\n"
    assert result.stdout == ""


def test_an_empty_log(store: SqlStore) -> None:
    queue_id = store.enqueue(message(), T0)
    assert (log().exit_code, log().stdout) == (0, "")
    assert (log(queue_id).exit_code, log(queue_id).stdout) == (0, "")


def test_json_one_object_per_attempt(store: SqlStore) -> None:
    first, second = populate(store)
    result = log("--json")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["queue_id"] for o in objects] == [first, first, first, second]
    assert objects[1] == {
        "queue_id": first,
        "started_at": T0 + 2,
        "duration": 0.3,
        "host": "127.0.0.1",
        "tls": False,
        "auth": False,
        "exit_code": 69,
        "exit_name": "EX_UNAVAILABLE",
        "reply_code": 451,
        "reply": "4.3.0 it's busy\n4.3.0 \x01 come back",
        "recipients": [
            {"position": 0, "address": YOU, "state": "pending", "code": 451, "text": "4.3.0 busy"},
            {"position": 1, "address": BAD, "state": "pending", "code": 451, "text": "4.3.0 busy"},
        ],
        "possible_duplicate": False,
        "note": None,
    }
    assert (objects[0]["exit_code"], objects[0]["exit_name"]) == (75, "EX_TEMPFAIL")
    assert (objects[0]["reply_code"], objects[0]["reply"]) == (None, REFUSED)
    assert [o["possible_duplicate"] for o in objects] == [False, False, True, False]
    assert objects[3]["exit_name"] == "EX_OK"


def test_a_hostile_reply_reaches_no_terminal(store: SqlStore) -> None:
    queue_id = store.enqueue(message(recipients=(YOU,), data=DATA, sender=ME), T0)
    hostile = Attempt(T0 + 1, 0.1, "127.0.0.1", False, False, 69, 451, HOSTILE, ())
    record_attempt(store, queue_id, hostile, Outcome(State.QUEUED, T0 + 60, "later"))
    text, as_json = log().stdout, log("--json").stdout
    assert_harmless(text)
    assert_harmless(as_json)
    # msmtp's log line already made C0 `?`; the rest is escaped (NEL, LS and PS end lines).
    assert "smtpmsg='451-a\\x9b31m b\\n451-c \\u202ed\\n451-e\\n451 f \\u2066g" in text
    assert json.loads(as_json)["reply"] == HOSTILE


def test_colour_only_on_a_terminal(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = populate(store)
    assert "\x1b" not in log().stdout
    monkeypatch.setattr(queue_log_cli, "on_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")  # long lines are not wrapped
    assert log().stdout.splitlines() == expected_lines(first, second)


def test_the_whole_log_in_pages(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_log_cli, "PAGE", 3)
    ids = enqueue_many(store, [message(n) for n in range(7)], T0)
    for n, queue_id in enumerate(ids):
        attempt = Attempt(T0 + n, 0.1, "mx", False, False, 75, None, f"refused {n}")
        record_attempt(store, queue_id, attempt, Outcome(State.QUEUED, T0 + 99))
    lines = log().stdout.splitlines()
    assert [line.split()[2] for line in lines] == ids


# --- the console script --------------------------------------------------------------------


def run_log(*args: str) -> subprocess.CompletedProcess[str]:
    env = sendmail_env(TZ="UTC")
    return subprocess.run(
        [RELAYD, "queue", "log", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["HOME"],
        timeout=30,
        check=False,
    )


def test_console_script(store: SqlStore) -> None:
    first, second = populate(store)
    result = run_log()
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == expected_lines(first, second)
    missing = run_log("NOSUCHID")
    assert (missing.returncode, missing.stderr) == (69, "relayd: NOSUCHID: no such message\n")


def queue_id_of(line: str, as_json: bool) -> str:
    return str(json.loads(line)["queue_id"]) if as_json else line.split()[2]


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines, read by a thread, so each wait for one can be bounded."""
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=read, daemon=True).start()
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_follow_prints_new_attempts_until_signalled(
    store: SqlStore, signum: signal.Signals, as_json: bool
) -> None:
    first, second = populate(store)
    env = sendmail_env(TZ="UTC")
    args = [RELAYD, "queue", "log", "--follow", "--lines", "1", *(["--json"] if as_json else [])]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=env["HOME"]
    )
    try:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        assert queue_id_of(lines.get(timeout=15), as_json) == second  # the last old attempt
        later = Attempt(time.time(), 0.1, "127.0.0.1", False, False, 75, None, "new refusal")
        record_attempt(store, first, later, Outcome(State.QUEUED, time.time() + 60))
        started = time.monotonic()
        line = lines.get(timeout=10)
        assert time.monotonic() - started < 5
        assert queue_id_of(line, as_json) == first
        assert ("new refusal" if as_json else "errormsg='new refusal'") in line
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
        assert lines.empty()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
