"""`relayd queue import-msmtpq` on queues written by Debian's real msmtpq script."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from relayd.cli import app
from relayd.store.sql import SqlStore
from relayd.submission import msmtpq
from relayd.sysexits import ExitCode
from tests.msmtpq_helpers import entries, msmtpq_script, queue_with_msmtpq
from tests.sendmail_helpers import queue_db, stored_messages, write_msmtprc
from tests.store_helpers import PG_URL, list_messages, postgres_schema
from tests.upstream import UpstreamServer

MAIL = b"Subject: hello\nTo: you@example.com\n\nbody\n"
OLD_ID = "2024-01-02-03.04.05"  # an entry msmtpq made then (local time)
OLD_ARRIVAL = time.mktime((2024, 1, 2, 3, 4, 5, 0, 0, -1))


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    msmtpq_script()  # skip early without it
    monkeypatch.setenv("RELAYD_MSMTPRC_SYSTEM", str(tmp_path / "no-system-msmtprc"))
    return tmp_path / "msmtp.queue"


def run_import(*args: str) -> Result:
    return CliRunner().invoke(app, ["queue", "import-msmtpq", *args])


def backdate(queue: Path, old: str, new: str) -> None:
    """Rename an entry as msmtpq would have named it at another time."""
    for suffix in (".mail", ".msmtp"):
        (queue / f"{old}{suffix}").rename(queue / f"{new}{suffix}")


def only_id(queue: Path) -> str:
    (name,) = {Path(name).stem for name in entries(queue)}
    return name


def test_msmtpq_queue_is_imported_with_arrival_times_and_split_names_joined(
    queue: Path,
) -> None:
    queue_with_msmtpq(queue, ["-oi", "-F", "Alice Smith", "you@example.com"], b"Subject: a\n\nx\n")
    backdate(queue, only_id(queue), OLD_ID)
    queue_with_msmtpq(queue, ["-t", "-oi"], b"To: Bob <bob@example.com>\nBcc: hid@example.com\n\n")
    backdate(queue, Path(entries(queue)[-1]).stem, f"{OLD_ID}-1")
    assert (queue / f"{OLD_ID}.msmtp").read_text() == "-oi -F Alice Smith you@example.com\n"

    result = run_import(str(queue))

    assert result.exit_code == 0, result.output
    assert result.stderr.count("\n") == 1  # only the note that no daemon drains the queue
    assert "arguments read as -oi -F 'Alice Smith' you@example.com" in result.stdout
    assert "imported 2 message(s)" in result.stdout
    assert entries(queue) == []
    assert not (queue / ".lock").exists()
    first, second = stored_messages()
    assert first.created_at == second.created_at == OLD_ARRIVAL
    assert first.recipients == [("you@example.com", "pending")]
    assert b"From: Alice Smith <me@example.org>\r\n" in first.data
    assert first.sender == "me@example.org"
    assert [address for address, _ in second.recipients] == ["bob@example.com", "hid@example.com"]
    assert b"Bcc" not in second.data  # msmtp's header rules, as relayd-sendmail applies them
    assert first.state == second.state == "queued"


def test_ambiguous_and_broken_entries_stay_and_say_one_line_each(queue: Path) -> None:
    queue_with_msmtpq(queue, ["-F", "Alice Smith", "root"], MAIL)  # "root": name or recipient?
    queue_with_msmtpq(queue, ["--no-such-option", "you@example.com"], MAIL)
    left = entries(queue)
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    (queue / "2023-05-06-07.08.09.mail").write_bytes(MAIL)  # its .msmtp never written

    result = run_import(str(queue))

    assert result.exit_code == ExitCode.DATAERR
    problems = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(problems) == 3, result.stderr
    assert any("ambiguous arguments" in line and "Alice Smith root" in line for line in problems)
    assert any("unrecognized option '--no-such-option'" in line for line in problems)
    assert any("2023-05-06-07.08.09.mail: skipped: its partner" in line for line in problems)
    assert entries(queue) == sorted([*left, "2023-05-06-07.08.09.mail"])
    (message,) = stored_messages()
    assert message.recipients == [("you@example.com", "pending")]


def test_dry_run_changes_nothing(queue: Path) -> None:
    queue_with_msmtpq(queue, ["-F", "Alice Smith", "you@example.com"], MAIL)
    before = {name: (queue / name).read_bytes() for name in entries(queue)}

    result = run_import("--dry-run", str(queue))

    assert result.exit_code == 0, result.output
    assert "would queue (account default, from <me@example.org>, to you@example.com" in (
        result.stdout
    )
    assert "would import 1 message(s)" in result.stdout
    assert {name: (queue / name).read_bytes() for name in entries(queue)} == before
    assert not queue_db().exists()


def test_queue_directory_from_msmtpq_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = os.environ["HOME"]
    monkeypatch.delenv("MSMTPQ_Q", raising=False)
    monkeypatch.delenv("Q", raising=False)
    assert msmtpq.queue_dir(None) == f"{home}/.msmtp.queue"
    monkeypatch.setenv("Q", "/q")
    assert msmtpq.queue_dir(None) == "/q"
    monkeypatch.setenv("MSMTPQ_Q", "/msmtpq_q")
    assert msmtpq.queue_dir(None) == "/msmtpq_q"
    assert msmtpq.queue_dir("~/given") == f"{home}/given"


def test_default_queue_is_msmtpqs(queue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    monkeypatch.delenv("MSMTPQ_Q", raising=False)
    monkeypatch.setenv("Q", str(queue))
    result = run_import()
    assert result.exit_code == 0, result.output
    assert entries(queue) == []
    assert len(stored_messages()) == 1


def test_arrival_time_from_the_id_else_the_file() -> None:
    local = time.mktime((2025, 7, 1, 23, 59, 58, 0, 0, -1))
    assert msmtpq.arrival_time("2025-07-01-23.59.58", 5.0) == local
    assert msmtpq.arrival_time("2025-07-01-23.59.58-12", 5.0) == local
    uuid = "2025-07-01-23.59.58-0b5c6c34-6f4e-4c1e-9d8f-7a1b2c3d4e5f"
    assert msmtpq.arrival_time(uuid, 5.0) == local
    assert msmtpq.arrival_time("renamed-by-hand", 5.0) == 5.0
    assert msmtpq.arrival_time("2025-13-45-99.99.99", 5.0) != local


def test_no_queue_directory(tmp_path: Path) -> None:
    result = run_import(str(tmp_path / "absent"))
    assert result.exit_code == ExitCode.NOINPUT
    assert result.stderr == f"relayd: no msmtpq queue at {tmp_path / 'absent'}\n"


def test_msmtpqs_lock_is_respected(queue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    (queue / ".lock").mkdir()  # an msmtpq sending right now
    monkeypatch.setenv("RELAYD_LOCK_TIMEOUT", "0.3")

    result = run_import(str(queue))

    assert result.exit_code == ExitCode.TEMPFAIL
    assert len(result.stderr.splitlines()) == 1
    assert "msmtpq's queue is locked" in result.stderr
    assert (queue / ".lock").is_dir()  # not ours to remove
    assert len(entries(queue)) == 2
    assert stored_messages() == []


def test_unwritable_queue_keeps_every_entry(
    queue: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    queue_with_msmtpq(queue, ["other@example.com"], MAIL)
    before = entries(queue)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("RELAYD_DATABASE_URL", f"sqlite:///{blocker}/queue.sqlite3")

    result = run_import(str(queue))

    assert result.exit_code in (ExitCode.CANTCREAT, ExitCode.TEMPFAIL)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert entries(queue) == before
    assert not (queue / ".lock").exists()


def test_files_go_only_after_the_commit(queue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    seen: list[int] = []
    unlink = os.unlink

    def spy(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(queue)):
            # Another connection sees the message: it is committed before a file goes.
            seen.append(len(stored_messages()))
        unlink(path)

    monkeypatch.setattr(os, "unlink", spy)
    result = run_import(str(queue))
    assert result.exit_code == 0, result.output
    assert seen == [1, 1]


def test_message_over_max_size_is_left(queue: Path) -> None:
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[submit]\nmax_size = 100\n")
    queue_with_msmtpq(queue, ["you@example.com"], MAIL + b"x" * 200 + b"\n")
    result = run_import(str(queue))
    assert result.exit_code == ExitCode.DATAERR
    assert "skipped: message too big" in result.stderr
    assert len(entries(queue)) == 2
    assert stored_messages() == []


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")
def test_import_into_a_postgresql_queue(queue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_with_msmtpq(queue, ["-F", "Alice Smith", "you@example.com"], MAIL)
    backdate(queue, only_id(queue), OLD_ID)
    with postgres_schema() as url:
        monkeypatch.setenv("RELAYD_DATABASE_URL", url)
        result = run_import(str(queue))
        assert result.exit_code == 0, result.output
        with SqlStore.open(url) as store:
            (stored,) = list_messages(store)
    assert stored.created_at == OLD_ARRIVAL
    assert entries(queue) == []


def test_an_entry_queued_but_not_removed_is_said_and_74(
    queue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_with_msmtpq(queue, ["you@example.com"], MAIL)
    unlink = os.unlink

    def refuse_msmtp_files(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if str(path).endswith(".msmtp"):  # as on a file system that turned read-only
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(os, "unlink", refuse_msmtp_files)
    result = run_import(str(queue))

    assert result.exit_code == ExitCode.IOERR
    (line,) = [line for line in result.stderr.splitlines() if "queued as" in line]
    assert "Permission denied; remove the entry by hand" in line
    assert len(stored_messages()) == 1
    assert [name for name in entries(queue) if name.endswith(".msmtp")] == entries(queue)


def test_imported_mail_is_delivered_with_its_name_and_date(queue: Path) -> None:
    """Offline: msmtpq keeps the mail. Back online: import, flush, and the server gets it."""
    queue_with_msmtpq(queue, ["-oi", "-F", "Alice Smith", "you@example.com"], MAIL)
    backdate(queue, only_id(queue), OLD_ID)
    assert run_import(str(queue)).exit_code == 0
    with UpstreamServer(timeout=20) as server:
        write_msmtprc(f"account default\nhost 127.0.0.1\nport {server.port}\nfrom me@example.org\n")
        flushed = CliRunner().invoke(app, ["queue", "flush", "--wait", "--timeout", "20"])
        assert flushed.exit_code == 0, flushed.output
        (sent,) = server.transactions
    assert (sent.mail_from, sent.rcpt_tos) == ("me@example.org", ("you@example.com",))
    assert b"From: Alice Smith <me@example.org>\r\n" in sent.data
    date = time.strftime("%a, %d %b %Y %H:%M:%S", time.localtime(OLD_ARRIVAL))
    assert f"Date: {date}".encode() in sent.data
    assert [message.state for message in stored_messages()] == ["sent"]
