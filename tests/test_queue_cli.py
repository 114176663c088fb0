"""`relayd queue list/show/flush/delete` and `mailq`: Postfix's layouts, JSON, exit codes.

The queue is a real SQLite file in the isolated HOME, filled through SqlStore; commands run
through typer's CliRunner and through the real console scripts. Flushes deliver to the upstream
fixture on 127.0.0.1, in-process and through a running daemon.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relayd import paths
from relayd.cli import app
from relayd.cli import queue as queue_cli
from relayd.store import location
from relayd.store.queued import Attempt, Outcome, Recipient, RecipientState, State
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import run_sendmail, sendmail_env
from tests.store_helpers import message, record_attempt, return_expired
from tests.test_daemon import (
    RELAYD,
    Daemon,
    eventually,
    rc_for,
    run_relayd,
    start_daemon,
    submit,
    upstream,
)
from tests.test_delivery_session import free_port
from tests.test_text import HOSTILE, HOSTILE_ESCAPED, assert_harmless
from tests.upstream import Fault, UpstreamServer

__all__ = ["start_daemon", "upstream"]  # pytest fixtures, used by name

runner = CliRunner()
# Postfix's showq_compat layout for long queue ids.
HEADING = "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"


@pytest.fixture
def store() -> Iterator[SqlStore]:
    with SqlStore.open(location.database_url()) as opened:
        yield opened


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def attempt(code: int | None, text: str, *recipients: Recipient, exit_code: int = 75) -> Attempt:
    return Attempt(
        started_at=time.time(),
        duration=0.25,
        host="mx.example.org",
        tls=True,
        auth=False,
        exit_code=exit_code,
        reply_code=code,
        reply=text,
        recipients=recipients,
    )


def deferred(store: SqlStore, queue_id: str, reason: str, *recipients: Recipient) -> None:
    outcome = Outcome(State.QUEUED, next_attempt_at=time.time() + 600, reason=reason)
    text = reason.removeprefix("451 ")  # the attempt keeps the code and the text apart
    assert record_attempt(store, queue_id, attempt(451, text, *recipients), outcome)


# -- queue list --------------------------------------------------------------------------------


def test_an_empty_queue_says_so_everywhere(tmp_path: Path) -> None:
    assert invoke("queue", "list") == (0, "Mail queue is empty\n")
    assert invoke("queue", "list", "--json") == (0, "")
    mailq = tmp_path / "mailq"
    mailq.symlink_to(Path(sys.executable).with_name("relayd-sendmail"))
    for command in ([str(mailq)], [str(mailq.resolve()), "-bp"]):
        env = sendmail_env()
        shown = subprocess.run(command, capture_output=True, env=env, timeout=30)
        assert (shown.returncode, shown.stdout) == (0, b"Mail queue is empty\n"), shown.stderr
    # Listing never creates the queue.
    assert not os.path.exists(str(paths.sqlite_path(location.database_url())))


def test_the_listing_has_postfixs_layout(store: SqlStore) -> None:
    first = store.enqueue(message(1, recipients=("a@example.org", "b@example.org")), time.time())
    second = store.enqueue(message(2, sender=""), time.time())
    reason = "cannot connect to mx.example.org, port 25: Connection refused"
    deferred(store, first, reason)
    store.hold([second], "held by the user")
    code, out = invoke("queue", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == HEADING
    size = len(store.read_data(first) or b"")
    first_line = re.compile(
        rf"^{first} {{5}} {size:>8} [A-Z][a-z]{{2}} [A-Z][a-z]{{2}} [ \d]\d "
        r"\d\d:\d\d:\d\d sender@example\.org  owner=1000$"
    )
    assert first_line.match(lines[1]), lines[1]
    assert lines[2] == " " * (76 - len(reason)) + f"({reason})"
    assert lines[3:5] == [" " * 47 + "a@example.org", " " * 47 + "b@example.org"]
    assert lines[5] == ""
    assert lines[6].startswith(f"{second}!    ") and lines[6].endswith(" MAILER-DAEMON  owner=1000")
    assert lines[7] == " " * (76 - len("held by the user")) + "(held by the user)"
    assert lines[8] == " " * 47 + "rcpt@example.org"
    total = sum(len(store.read_data(q) or b"") for q in (first, second))
    assert lines[9:] == ["", f"-- {total // 1024} Kbytes in 2 Requests."]


def test_each_recipient_shows_its_own_reason_and_delivered_ones_drop_out(
    store: SqlStore,
) -> None:
    queue_id = store.enqueue(
        message(recipients=("sent@example.org", "later@example.org", "gone@example.org")),
        time.time(),
    )
    outcome = Outcome(State.QUEUED, next_attempt_at=time.time() + 60, reason="451 busy")
    results = (
        Recipient(0, "sent@example.org", RecipientState.SENT, 250, "2.0.0 ok"),
        Recipient(1, "later@example.org", RecipientState.PENDING, 451, "4.3.0 busy"),
        Recipient(2, "gone@example.org", RecipientState.FAILED, 550, "5.1.1 no such user"),
    )
    assert record_attempt(store, queue_id, attempt(451, "busy", *results), outcome)
    lines = invoke("queue", "list")[1].splitlines()
    assert lines[2:6] == [
        " " * (76 - 8) + "(451 busy)",
        " " * 47 + "later@example.org",
        " " * (76 - 22) + "(550 5.1.1 no such user)",
        " " * 47 + "gone@example.org",
    ]
    assert lines[-1] == "-- 0 Kbytes in 1 Request."


def test_markers_states_and_account_filters(store: SqlStore) -> None:
    sent, failed, sending = (store.enqueue(message(n), time.time()) for n in range(3))
    other = store.enqueue(message(9, account="work"), time.time())
    done = (Recipient(0, "rcpt@example.org", RecipientState.SENT, 250, "ok"),)
    record_attempt(store, sent, attempt(250, "ok", *done, exit_code=0), Outcome(State.SENT))
    gone = (Recipient(0, "rcpt@example.org", RecipientState.FAILED, 550, "no"),)
    record_attempt(store, failed, attempt(550, "no", *gone, exit_code=69), Outcome(State.FAILED))
    assert store.claim_due("default", time.time(), 60, "me", queue_ids=[sending])

    def ids(*args: str) -> list[str]:
        lines = invoke("queue", "list", "--json", *args)[1].splitlines()
        return [json.loads(line)["queue_id"] for line in lines]

    assert ids() == [failed, sending, other]  # sent mail is not listed by default
    assert ids("--state", "sent") == [sent]
    assert ids("--state", "all") == [sent, failed, sending, other]
    assert ids("-s", "failed", "-s", "sending") == [failed, sending]
    assert ids("--account", "work") == [other]
    text = invoke("queue", "list", "--state", "all")[1]
    for queue_id, marker in ((sent, "+"), (failed, "-"), (sending, "*"), (other, " ")):
        assert f"\n{queue_id}{marker}" in "\n" + text
    code, out = invoke("queue", "list", "--state", "bogus")
    assert code == 64 and "unknown state 'bogus'" in out
    # mailq shows only the waiting mail, as Postfix does.
    shown = run_sendmail(["-bp"], b"")
    assert shown.returncode == 0
    assert re.findall(rb"^([0-9A-Z]{12})", shown.stdout, re.M) == [
        sending.encode(),
        other.encode(),
    ]


def test_json_lines_carry_the_spec_keys(store: SqlStore) -> None:
    before = time.time()
    queue_id = store.enqueue(
        message(recipients=("x@example.org", "y@example.org"), user="alice"), before
    )
    pending = (Recipient(1, "y@example.org", RecipientState.PENDING, 451, "4.2.0 full"),)
    deferred(store, queue_id, "451 4.2.0 full", *pending)
    listed = subprocess.run(
        [RELAYD, "queue", "list", "--json"], capture_output=True, env=sendmail_env(), timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    (record,) = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert record == {
        "queue_id": queue_id,
        "state": "queued",
        "account": "default",
        "arrival_time": int(before),
        "message_size": len(store.read_data(queue_id) or b""),
        "sender": "sender@example.org",
        "recipients": [
            {"address": "x@example.org", "state": "pending", "reply": None},
            {"address": "y@example.org", "state": "pending", "reply": "451 4.2.0 full"},
        ],
        "attempts": 1,
        "next_attempt": record["next_attempt"],
        "reason": "451 4.2.0 full",
        "owner": "alice",
        "owner_uid": 1000,
        "hidden": False,
    }
    assert before + 590 < record["next_attempt"] < time.time() + 610


# -- queue show --------------------------------------------------------------------------------


def test_show_prints_envelope_attempts_and_headers(store: SqlStore) -> None:
    data = (
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nSubject: Hello\r\n"
        b"X-Long: one\r\n two\r\n\r\nthe body\r\n"
    )
    queue_id = store.enqueue(
        message(data=data, overrides=(("host", "mx.example.org"),)), time.time()
    )
    deferred(store, queue_id, "451 4.3.0 later")
    code, out = invoke("queue", "show", queue_id)
    assert code == 0, out
    for expected in (
        f"Queue ID: {queue_id}",
        "State: queued",
        "Account: default",
        "Override: --host=mx.example.org",
        "Sender: sender@example.org",
        f"Size: {len(data)} bytes",
        "Attempts: 1",
        "Reason: 451 4.3.0 later",
        "  rcpt@example.org: pending",
        "host=mx.example.org tls=on auth=off duration=0.250s exitcode=EX_TEMPFAIL",
        "    reply: 451 4.3.0 later",
        "  From: Jörg <j@example.org>",
        "  X-Long: one two",
    ):
        assert expected in out.splitlines() or any(expected in line for line in out.splitlines())
    assert "the body" not in out
    code, out = invoke("queue", "show", queue_id, "--json")
    record = json.loads(out)
    assert record["headers"][0] == ["From", "Jörg <j@example.org>"]
    assert record["attempt_log"][0]["exit_name"] == "EX_TEMPFAIL"
    assert record["overrides"] == [["host", "mx.example.org"]]
    raw = subprocess.run(
        [RELAYD, "queue", "show", "--raw", queue_id],
        capture_output=True,
        env=sendmail_env(),
        timeout=30,
    )
    assert (raw.returncode, raw.stdout) == (0, data)


def test_show_of_an_unknown_id_is_one_line_and_69(store: SqlStore) -> None:
    code, out = invoke("queue", "show", "0000000000ZZ")
    assert (code, out) == (69, "relayd: 0000000000ZZ: no such message\n")


# -- queue delete ------------------------------------------------------------------------------


def test_delete_spares_a_message_being_sent(store: SqlStore) -> None:
    idle, busy = (store.enqueue(message(n), time.time()) for n in range(2))
    assert store.claim_due("default", time.time(), 60, "runner", queue_ids=[busy])
    code, out = invoke("queue", "delete", idle, busy, "0000000000ZZ")
    assert code == 69
    assert f"relayd: {idle}: removed" in out
    assert f"relayd: {busy}: being sent right now; not removed" in out
    assert "relayd: 0000000000ZZ: no such message" in out
    assert store.get(idle) is None and store.get(busy) is not None
    # Once its lease has run out (the runner died), it can go.
    return_expired(store, time.time() + 120)
    assert invoke("queue", "delete", busy) == (0, f"relayd: {busy}: removed\n")


def test_hold_of_a_message_being_sent_applies_after_its_attempt(store: SqlStore) -> None:
    busy = store.enqueue(message(1), time.time())
    assert store.claim_due("default", time.time(), 60, "runner", queue_ids=[busy])
    code, out = invoke("queue", "hold", busy)
    assert (code, out) == (
        0,
        f"relayd: {busy}: being sent right now; placed on hold when this attempt ends\n",
    )
    code, out = invoke("queue", "release", busy)
    assert (code, out) == (
        0,
        f"relayd: {busy}: being sent right now; no longer held after this attempt ends\n",
    )
    found = store.get(busy)
    assert found is not None and found.state is State.SENDING


def test_delete_asks_on_a_terminal_unless_yes(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = store.enqueue(message(), time.time())
    monkeypatch.setattr(queue_cli, "_asks", lambda: True)
    refused = runner.invoke(app, ["queue", "delete", queue_id], input="n\n")
    assert refused.exit_code == 75 and "Delete 1 message(s)" in refused.output
    assert store.get(queue_id) is not None
    assert runner.invoke(app, ["queue", "delete", "--yes", queue_id]).exit_code == 0
    assert store.get(queue_id) is None


# -- queue flush --wait and relayd-sendmail -q -------------------------------------------------


def test_flush_wait_in_process_exits_with_the_pass_code(upstream: UpstreamServer) -> None:
    rc_for(upstream.port)
    queue_id = submit("-odq")
    upstream.fail("RCPT", Fault(reply="451 4.3.0 later"))
    later = run_relayd("queue", "flush", "--wait")
    assert later.returncode == 75, later.stderr
    upstream.fail("RCPT", Fault(reply="550 5.1.1 no such user"))
    refused = run_relayd("queue", "flush", "--wait", queue_id)
    assert refused.returncode == 65, refused.stderr  # msmtp's EX_DATAERR for a refused recipient
    assert b"0 sent, 0 queued, 0 held, 1 failed" in refused.stdout
    upstream.clear_faults()
    good = submit("-odq")
    assert run_relayd("queue", "flush", "--wait", good).returncode == 0
    assert len(upstream.transactions) == 1
    # A flush of an id that is not queued says so and exits 69.
    missing = run_relayd("queue", "flush", queue_id)
    assert missing.returncode == 69 and f"{queue_id}: no such queued message".encode() in (
        missing.stderr
    )


def test_flush_wait_follows_a_running_daemon(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply="451 4.3.0 later"))
    start_daemon()
    queue_id = submit()

    def listed() -> dict[str, Any]:
        return dict(json.loads(run_relayd("queue", "list", "--json").stdout))

    eventually(lambda: listed()["attempts"] == 1, 10, "a deferral")
    assert listed()["state"] == "queued"
    upstream.clear_faults()
    flushed = run_relayd("queue", "flush", "--wait", "--timeout", "20")
    assert flushed.returncode == 0, flushed.stderr
    assert b"the daemon delivers them" in flushed.stdout
    assert json.loads(run_relayd("queue", "list", "--json", "-s", "sent").stdout)["queue_id"] == (
        queue_id
    )


def test_flush_wait_with_a_daemon_prints_the_outcome_when_the_server_is_down(
    start_daemon: Callable[..., Daemon],
) -> None:
    """A dead destination defers the account's due mail in one statement, without an attempt
    for each message: the wait must end with that pass (it waited for attempts that never came,
    until --timeout), print what happened and exit 75."""
    rc_for(free_port())  # nothing listens there: connection refused
    start_daemon()
    queued = sorted(submit("-odq") for _ in range(3))  # -odq: the daemon is not woken
    started = time.monotonic()
    flushed = run_relayd("queue", "flush", "--wait", "--timeout", "20")
    assert flushed.returncode == 75, flushed.stderr
    assert time.monotonic() - started < 15  # the pass's end, not the timeout
    assert flushed.stdout.decode().splitlines() == [
        "relayd: 3 message(s) due now; the daemon delivers them",
        "relayd: the daemon's pass: 0 sent, 3 queued, 0 held, 0 failed",
    ]
    lines = flushed.stderr.decode().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == queued
    assert all(
        re.match(r"relayd: \S+: queued until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", x) for x in lines
    )
    assert any(line.endswith("Connection refused") for line in lines)  # the one tried


def test_flush_wait_with_a_daemon_names_what_was_not_sent(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    start_daemon()
    upstream.fail("RCPT", Fault(reply="550 5.1.1 no such user"))
    refused = submit("-odq")
    flushed = run_relayd("queue", "flush", "--wait", "--timeout", "20")
    assert flushed.returncode == 65, flushed.stderr  # msmtp's EX_DATAERR, as in-process
    assert b"relayd: the daemon's pass: 0 sent, 0 queued, 0 held, 1 failed\n" in flushed.stdout
    assert flushed.stderr.decode() == (
        f"relayd: {refused}: failed: recipient address you@example.org not accepted by the server\n"
    )


def test_sendmail_q_flushes(upstream: UpstreamServer) -> None:
    rc_for(upstream.port)
    submit("-odq")
    flushed = run_sendmail(["-q"], b"")
    assert flushed.returncode == 0, flushed.stderr
    assert b"delivered in-process: 1 sent" in flushed.stdout
    assert len(upstream.transactions) == 1


def test_shell_completion_is_offered() -> None:
    shown = subprocess.run(
        [RELAYD, "--show-completion", "bash"], capture_output=True, env=sendmail_env(), timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert b"complete" in shown.stdout and b"relayd" in shown.stdout


def test_a_terminal_gets_colour_and_a_pipe_plain_text(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = store.enqueue(message(), time.time())
    store.hold([queue_id], "held by the user")
    plain = invoke("queue", "list")[1]
    assert "\x1b[" not in plain
    monkeypatch.setattr("relayd.cli.queue_list.on_terminal", lambda: True)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich colours for CliRunner's captured output
    monkeypatch.setenv("COLUMNS", "200")
    coloured = invoke("queue", "list")[1]
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain  # the same text, only coloured


def test_an_in_process_flush_shows_a_progress_bar_on_a_terminal(
    upstream: UpstreamServer,
) -> None:
    import pty

    rc_for(upstream.port)
    for _ in range(3):
        submit("-odq")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [RELAYD, "queue", "flush", "--wait"],
            stderr=terminal,
            stdout=subprocess.PIPE,
            env=sendmail_env(COLUMNS="100"),
            timeout=60,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0, shown
    assert b"delivering" in shown and b"3/3" in shown
    assert b"delivered in-process: 3 sent" in done.stdout


def test_show_never_passes_control_characters_to_the_terminal(store: SqlStore) -> None:
    data = b"Subject: =?utf-8?q?=1B]0;pwned=07x?=\r\nX-Raw: a\x1bb\r\n\r\nbody\r\n"
    queue_id = store.enqueue(message(data=data), time.time())
    code, out = invoke("queue", "show", queue_id)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    # Shown escaped, as every output for people shows them (relayd.text's "terminal" policy).
    assert "Subject: \\x1b]0;pwned\\x07x" in out and "X-Raw: a\\x1bb" in out


def test_a_hostile_reply_or_header_reaches_no_terminal(store: SqlStore) -> None:
    data = b"X-Hostile: " + HOSTILE.encode() + b"\r\n\r\nbody\r\n"
    queue_id = store.enqueue(message(data=data), time.time())
    pending = Recipient(0, "rcpt@example.org", RecipientState.PENDING, 451, HOSTILE)
    deferred(store, queue_id, f"451 {HOSTILE}", pending)
    listing, shown = invoke("queue", "list")[1], invoke("queue", "show", queue_id)[1]
    assert f"(451 {HOSTILE_ESCAPED})" in listing
    assert f"  X-Hostile: {HOSTILE_ESCAPED}" in shown.splitlines()
    listed, record = (
        invoke("queue", "list", "--json")[1],
        invoke("queue", "show", queue_id, "-j")[1],
    )
    for output in (listing, shown, listed, record):
        assert_harmless(output)
    # JSON escapes them in its text: a program reads the data exactly as stored.
    assert json.loads(listed)["reason"] == f"451 {HOSTILE}"
    assert json.loads(listed)["recipients"][0]["reply"] == f"451 {HOSTILE}"
    assert json.loads(record)["headers"] == [["X-Hostile", HOSTILE]]
    assert json.loads(record)["attempt_log"][0]["reply"] == f"451 {HOSTILE}"


def test_mailq_into_a_closed_pipe_ends_quietly(store: SqlStore) -> None:
    enqueue_many(store, [message(n) for n in range(3000)], time.time())
    mailq = subprocess.Popen(
        [str(Path(RELAYD).with_name("relayd-sendmail")), "-bp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=sendmail_env(),
    )
    assert mailq.stdout is not None and mailq.stdout.readline().startswith(b"----Queue ID")
    mailq.stdout.close()  # as `mailq | head -1` does
    _, err = mailq.communicate(timeout=60)
    assert (mailq.returncode, err) == (0, b"")


def test_an_in_process_flush_never_delivers_beside_a_daemon(upstream: UpstreamServer) -> None:
    from relayd.daemon import instance

    rc_for(upstream.port)
    queue_id = submit("-odq")
    lock = instance.instance_lock(location.database_url())  # a daemon whose wake-up was lost
    try:
        flushed = run_relayd("queue", "flush", queue_id)
    finally:
        assert lock is not None
        os.close(lock)
    assert flushed.returncode == 0, flushed.stderr
    assert b"the running daemon delivers them" in flushed.stdout
    assert upstream.transactions == []
