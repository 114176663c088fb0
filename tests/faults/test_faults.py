"""Issue 12, "Exactly once, and honest about it": each fault scenario against SPEC §4.

Every scenario prints its figures line (see tests/faults/measure.py) and asserts the done-when
criteria: nothing lost, every duplicate flagged, no more flagged-but-single messages than were
on the wire at the faults, nothing stuck, no traceback, no phantom failed attempt, and the
scenario's own checks.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.faults import scenarios
from tests.faults.harness import Event, RecorderServer, wait_until
from tests.faults.measure import AttemptRow, Figures, _phantom, open_transactions
from tests.store_helpers import PG_URL, postgres_schema

pytestmark = pytest.mark.faults


def check(figures: Figures) -> None:
    print(figures.line())
    assert figures.problems() == [], figures.line()


def test_the_recording_server_logs_and_faults(tmp_path: Path) -> None:
    server = RecorderServer(tmp_path)
    server.start()
    try:
        server.set_faults([{"stage": "END", "action": "drop", "keys": ["f2"]}])
        message = "From: a@b\r\nMessage-ID: <{0}@faults.test>\r\n\r\nhi\r\n"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.sendmail("f1@faults.test", ["you@faults.test"], message.format("f1"))
        with (
            pytest.raises(smtplib.SMTPServerDisconnected),
            smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client,
        ):
            client.sendmail("f2@faults.test", ["you@faults.test"], message.format("f2"))
        wait_until(lambda: [e for e in server.events() if e.kind == "close"][1:], 5, "2 closes")
        events = server.events()
        kinds = [(e.kind, e.key) for e in events if e.kind in {"accept", "vanish", "fault"}]
        assert kinds == [("accept", "f1"), ("fault", "f2"), ("vanish", "f2")]
        (vanished,) = [e for e in events if e.kind == "fault"]
        assert open_transactions(events, vanished.at) == 1
        assert open_transactions(events, events[-1].at + 1) == 0
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.stderr_texts())


def test_a_phantom_is_a_failed_attempt_the_server_never_saw() -> None:
    key_of = {"Q1": "f1", "Q2": "f2"}
    seen = [Event(100.0, "mail", "c1", "f1", "-")]
    reset = "network read error: Connection reset by peer"
    tried = AttemptRow("Q1", 100.0, 0.01, 69, False, False, reset)
    unseen = AttemptRow("Q2", 200.0, 0.01, 69, False, False, reset)
    assert _phantom([tried], key_of, seen, [], []) == (0, [])
    count, rows = _phantom([tried, unseen], key_of, seen, [], [])
    assert count == 1 and rows[0].startswith("f2@200.000")
    # In progress while the server was being killed: its MAIL sat unread in the dead socket.
    assert _phantom([unseen], key_of, seen, [], [(200.005, 200.02)]) == (0, [])
    assert _phantom([unseen], key_of, seen, [], [(200.02, 200.03)])[0] == 1


def test_daemon_sigkill_loop(tmp_path: Path) -> None:
    check(scenarios.daemon_kills(tmp_path))


def test_upstream_sigkill_mid_data(tmp_path: Path) -> None:
    check(scenarios.upstream_kills(tmp_path))


def test_vanish_after_the_data(tmp_path: Path) -> None:
    check(scenarios.vanish_after_data(tmp_path))


def test_disk_full_while_recording(tmp_path: Path) -> None:
    check(scenarios.disk_full(tmp_path))


def test_write_lock_held_30_s(tmp_path: Path) -> None:
    check(scenarios.write_lock(tmp_path))


def test_read_only_queue(tmp_path: Path) -> None:
    check(scenarios.read_only(tmp_path))


def test_slow_final_reply_beyond_the_lease(tmp_path: Path) -> None:
    check(scenarios.slow_final_reply(tmp_path))


def test_hold_release_delete_while_sending(tmp_path: Path) -> None:
    check(scenarios.hold_while_sending(tmp_path))


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set: no PostgreSQL")
def test_two_daemons_on_one_postgresql_queue(tmp_path: Path) -> None:
    with postgres_schema() as url:
        check(scenarios.two_daemons(tmp_path, url))


def test_silent_server_with_10000_due(tmp_path: Path) -> None:
    check(scenarios.silent_server(tmp_path))
