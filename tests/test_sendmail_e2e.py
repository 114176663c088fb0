"""relayd-sendmail end to end: the real console script in a subprocess, the queue read back
with stdlib sqlite3. Storage, envelope and header rules, exit codes, queue failures, wake-ups."""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd import paths
from relayd.store import fastpath
from tests.sendmail_helpers import (
    DEFAULT_RC,
    SENDMAIL,
    assert_nothing_stored,
    can_unshare_mounts,
    check_consistent,
    error_line,
    in_private_mounts,
    queue_db,
    row_counts,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)

PROG = "relayd-sendmail"
SIMPLE = b"Subject: test\n\nbody\n"

# msmtp's Date: (local time, English names, numeric offset) and Message-ID: <HEX32.FROM>.
DATE_RE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" \d{4} \d\d:\d\d:\d\d [+-]\d{4}"
)
GENERATED_RE = re.compile(
    rb"\A(?:From: (?P<from>[^\r\n]*)\r\n)?Date: (?P<date>[^\r\n]*)\r\n"
    rb"Message-ID: (?P<msgid>[^\r\n]*)\r\n(?P<rest>.*)\Z",
    re.DOTALL,
)

TWO_ACCOUNTS = (
    DEFAULT_RC
    + "\naccount work\nhost 127.0.0.1\nport 2\nfrom work@example.com\n"
    + "\naccount jane\nhost 127.0.0.1\nport 3\nfrom jane@example.net\n"
)


@pytest.fixture
def msmtprc() -> Path:
    return write_msmtprc()


def submit_ok(args: list[str], stdin: bytes = SIMPLE, /, **env: str) -> None:
    """Run a submission that must succeed silently."""
    result = run_sendmail(args, stdin, env=sendmail_env(**env))
    assert (result.returncode, result.stderr, result.stdout) == (0, b"", b"")


def only_message() -> tuple[str, list[str], bytes, str, object]:
    """(sender, recipient addresses, data, account, overrides) of the one stored message."""
    [stored] = stored_messages()
    return (
        stored.sender,
        [address for address, _ in stored.recipients],
        stored.data,
        stored.account,
        stored.overrides,
    )


def generated(data: bytes) -> tuple[bytes | None, bytes]:
    """(the value of a From: field relayd generated or None, `data` without the From:, Date:
    and Message-ID: fields relayd put in front of the message)."""
    match = GENERATED_RE.match(data)
    assert match is not None, data[:300]
    return match["from"], match["rest"]


# --- 1. The happy path ------------------------------------------------------------------------


def test_a_message_is_stored_exactly_as_it_will_go_on_the_wire(msmtprc: Path) -> None:
    raw = (
        b"From: Me <me@example.org>\n"
        b"To: You <rcpt@example.org>\n"
        b"Subject: Hello\n"
        b"\n"
        b"Line one\n"
        b".a dot at the start\r\n"
        b"From the start of a line\n"
        b"\n"
        b"last line without a newline"
    )
    expected = (
        b"From: Me <me@example.org>\r\n"
        b"To: You <rcpt@example.org>\r\n"
        b"Subject: Hello\r\n"
        b"\r\n"
        b"Line one\r\n"
        b".a dot at the start\r\n"
        b"From the start of a line\r\n"
        b"\r\n"
        b"last line without a newline\r\n"
    )
    before = time.time()
    result = run_sendmail(["rcpt@example.org", "second@example.org"], raw)
    after = time.time()
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")

    db = queue_db()
    [stored] = stored_messages(db)
    assert stored.state == "queued"
    assert stored.account == "default"
    assert stored.sender == "me@example.org"
    assert stored.overrides == []
    assert stored.recipients == [
        ("rcpt@example.org", "pending"),
        ("second@example.org", "pending"),
    ]
    assert re.fullmatch(r"[0-9A-Z]{8,16}", stored.queue_id), stored.queue_id
    assert stored.size == len(stored.data)
    assert before - 1 <= stored.created_at <= after + 1
    assert stored.next_attempt_at is not None and before - 1 <= stored.next_attempt_at <= after + 1

    match = GENERATED_RE.match(stored.data)
    assert match is not None, stored.data
    assert match["from"] is None  # the message has one
    assert match["rest"] == expected
    assert DATE_RE.fullmatch(match["date"]), match["date"]
    dated = email.utils.parsedate_to_datetime(match["date"].decode()).timestamp()
    assert before - 2 <= dated <= after + 1
    assert re.fullmatch(rb"<[0-9a-f]{32}\.me@example\.org>", match["msgid"]), match["msgid"]

    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    check_consistent(db)


def test_two_submissions_get_distinct_ids_and_their_own_generated_headers(msmtprc: Path) -> None:
    submit_ok(["a@example.org"])
    submit_ok(["b@example.org"])
    first, second = stored_messages()
    assert first.queue_id != second.queue_id
    assert [first.recipients, second.recipients] == [
        [("a@example.org", "pending")],
        [("b@example.org", "pending")],
    ]
    ids = [re.findall(rb"^Message-ID: (<.*>)\r$", m.data, re.MULTILINE) for m in (first, second)]
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1], ids


def test_existing_date_and_message_id_are_kept_and_bytes_untouched(msmtprc: Path) -> None:
    raw = (
        b"From: me@example.org\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <fixed@example.org>\r\n"
        b"\r\n"
        b"\xe2\x82\xac 8-bit body\r\n"
    )
    submit_ok(["rcpt@example.org"], raw)
    assert only_message()[2] == raw


# --- 2. Envelope and header rules, as stored ----------------------------------------------------

HEADERS_WITH_BCC = (
    b"From: me@example.org\n"
    b"To: To One <to1@example.org>, to2@example.org\n"
    b"Cc: cc@example.org\n"
    b"Bcc: hidden@example.org,\n"
    b"  hidden2@example.org\n"
    b"Subject: recipients\n"
    b"\n"
    b"Bcc: in the body stays\n"
)


def test_t_adds_header_recipients_after_the_command_line_and_drops_bcc(msmtprc: Path) -> None:
    submit_ok(["-t", "cmd@example.org"], HEADERS_WITH_BCC)
    sender, recipients, data, _, _ = only_message()
    assert sender == "me@example.org"
    assert recipients == [
        "cmd@example.org",
        "to1@example.org",
        "to2@example.org",
        "cc@example.org",
        "hidden@example.org",
        "hidden2@example.org",
    ]
    assert generated(data) == (
        None,
        b"From: me@example.org\r\n"
        b"To: To One <to1@example.org>, to2@example.org\r\n"
        b"Cc: cc@example.org\r\n"
        b"Subject: recipients\r\n"
        b"\r\n"
        b"Bcc: in the body stays\r\n",
    )
    assert b"hidden" not in data


def test_without_t_header_recipients_are_not_added_but_bcc_is_still_removed(
    msmtprc: Path,
) -> None:
    submit_ok(["cmd@example.org"], HEADERS_WITH_BCC)
    _, recipients, data, _, _ = only_message()
    assert recipients == ["cmd@example.org"]
    assert b"hidden" not in data


def test_keepbcc_keeps_the_bcc_header(msmtprc: Path) -> None:
    submit_ok(["--remove-bcc-headers=off", "-t"], HEADERS_WITH_BCC)
    _, recipients, data, _, overrides = only_message()
    assert "hidden@example.org" in recipients
    assert b"Bcc: hidden@example.org,\r\n  hidden2@example.org\r\n" in data
    assert overrides == [["remove-bcc-headers", "off"]]


def test_resent_block_recipients_replace_the_normal_ones(msmtprc: Path) -> None:
    raw = (
        b"Resent-From: me@example.org\n"
        b"Resent-To: again@example.org\n"
        b"Resent-Bcc: secret@example.org\n"
        b"From: someone@example.net\n"
        b"To: original@example.net\n"
        b"\n"
        b"body\n"
    )
    submit_ok(["-t"], raw)
    _, recipients, data, _, _ = only_message()
    assert recipients == ["again@example.org", "secret@example.org"]
    assert b"Resent-Bcc: secret@example.org\r\n" in data  # msmtp never removes Resent-Bcc


def test_f_sets_the_sender_and_the_generated_from(msmtprc: Path) -> None:
    submit_ok(["-f", "other@example.org", "rcpt@example.org"], SIMPLE)
    sender, _, data, account, overrides = only_message()
    assert (sender, account, overrides) == ("other@example.org", "default", [])
    assert generated(data) == (b"other@example.org", b"Subject: test\r\n\r\nbody\r\n")


def test_f_attached_picks_the_account_whose_from_matches() -> None:
    write_msmtprc(TWO_ACCOUNTS)
    submit_ok(["-fwork@example.com", "rcpt@example.org"])
    sender, _, _, account, _ = only_message()
    assert (sender, account) == ("work@example.com", "work")


@pytest.mark.parametrize("null_sender", ["<>", "MAILER-DAEMON", "mailer-daemon"])
def test_a_null_sender_is_stored_empty(msmtprc: Path, null_sender: str) -> None:
    submit_ok(["-f", null_sender, "rcpt@example.org"])
    sender, recipients, _, account, _ = only_message()
    assert (sender, recipients, account) == ("", ["rcpt@example.org"], "default")


def test_full_name_goes_into_the_added_from_header(msmtprc: Path) -> None:
    submit_ok(["-F", "John Doe", "rcpt@example.org"])
    assert generated(only_message()[2]) == (
        b"John Doe <me@example.org>",
        b"Subject: test\r\n\r\nbody\r\n",
    )


def test_full_name_attached_to_F(msmtprc: Path) -> None:
    submit_ok(["-FJane Roe", "-oi", "rcpt@example.org"])
    assert generated(only_message()[2])[0] == b"Jane Roe <me@example.org>"


def test_read_envelope_from_takes_the_from_header_and_its_account() -> None:
    write_msmtprc(TWO_ACCOUNTS)
    raw = b"From: Jane <jane@example.net>\nSubject: x\n\nbody\n"
    submit_ok(["--read-envelope-from", "rcpt@example.org"], raw)
    sender, _, data, account, _ = only_message()
    assert (sender, account) == ("jane@example.net", "jane")
    assert generated(data) == (None, raw.replace(b"\n", b"\r\n"))


def test_options_after_recipients_and_the_double_dash(msmtprc: Path) -> None:
    args = ["first@example.org", "-f", "perm@example.org", "-oi", "--", "-second@example.org"]
    submit_ok(args)
    sender, recipients, _, _, _ = only_message()
    assert sender == "perm@example.org"
    assert recipients == ["first@example.org", "-second@example.org"]


def test_command_line_overrides_are_stored_as_a_structured_list() -> None:
    write_msmtprc(TWO_ACCOUNTS)
    submit_ok(["-a", "work", "--port=2525", "--user=John Doe", "--tls", "rcpt@example.org"])
    sender, _, _, account, overrides = only_message()
    assert (account, sender) == ("work", "work@example.com")
    assert overrides == [["port", "2525"], ["user", "John Doe"], ["tls", None]]


def test_a_named_account_with_its_long_option(msmtprc: Path) -> None:
    write_msmtprc(TWO_ACCOUNTS)
    submit_ok(["--account=jane", "rcpt@example.org"])
    sender, _, _, account, overrides = only_message()
    assert (account, sender, overrides) == ("jane", "jane@example.net", [])


def test_email_and_smtpserver_are_stored_as_a_host_override() -> None:
    submit_ok(
        ["--port=587", "rcpt@example.org"],
        EMAIL="env@example.org",
        SMTPSERVER="smtp.example.org",
    )
    sender, recipients, data, account, overrides = only_message()
    assert (sender, recipients, account) == ("env@example.org", ["rcpt@example.org"], "")
    assert overrides == [["host", "smtp.example.org"], ["port", "587"]]
    assert generated(data)[0] == b"env@example.org"


def test_host_builds_the_account_from_the_command_line_alone(msmtprc: Path) -> None:
    submit_ok(["--host=mx.example.org", "-f", "cli@example.org", "rcpt@example.org"])
    sender, _, _, account, overrides = only_message()
    assert (sender, account, overrides) == ("cli@example.org", "", [["host", "mx.example.org"]])


def test_config_file_column_records_only_the_C_file_as_an_absolute_path() -> None:
    home = Path(os.environ["HOME"])
    write_msmtprc(DEFAULT_RC)
    write_msmtprc(DEFAULT_RC, home / "conf" / "other.rc")
    submit_ok(["a@example.org"])
    submit_ok(["-C", "conf/other.rc", "b@example.org"])  # relative to the cwd, HOME
    assert [m.config_file for m in stored_messages()] == [None, str(home / "conf" / "other.rc")]


# --- 3. Exit codes; nothing stored on any error -------------------------------------------------

# Note: a NUL cannot be passed in argv at all (execve's strings end at NUL), so the NUL case of
# "recipient with CR/LF/NUL" is a NUL in a -t header recipient instead (rejected with the message).
ERRORS = [
    pytest.param([], SIMPLE, 64, "no recipients found", id="no-recipients"),
    pytest.param(["-t"], SIMPLE, 64, "no recipients found", id="t-without-headers"),
    pytest.param(["a\rb@example.org"], SIMPLE, 65, "line break", id="cr-in-argv"),
    pytest.param(["a@example.org\nBcc: x@example.org"], SIMPLE, 65, "line break", id="lf-argv"),
    pytest.param(["a@b@c"], SIMPLE, 65, "invalid address 'a@b@c'", id="two-ats"),
    pytest.param(['"a b"@example.org'], SIMPLE, 65, "invalid address", id="quoted-space"),
    pytest.param(["a@"], SIMPLE, 65, "invalid address 'a@': empty domain", id="no-domain"),
    pytest.param(["@x.org"], SIMPLE, 65, "empty local part", id="no-local-part"),
    pytest.param(["x@[1.2.3.4"], SIMPLE, 65, "invalid address", id="open-literal"),
    pytest.param(["-f", "a@b@c", "r@example.org"], SIMPLE, 65, "invalid address", id="bad-from"),
    pytest.param(["r@example.org"], b"Subject: x\n\nNUL\0here\n", 65, "NUL", id="nul-body"),
    pytest.param(["-t"], b"To: a@example.org\0\n\nbody\n", 65, "NUL", id="nul-in-header"),
    pytest.param(["--bogus", "r@example.org"], SIMPLE, 64, "unrecognized option", id="long"),
    pytest.param(["-z", "r@example.org"], SIMPLE, 64, "invalid option -- 'z'", id="short"),
    pytest.param(["--port=abc", "r@example.org"], SIMPLE, 64, "--port", id="bad-value"),
    pytest.param(
        ["-f", "x@example.org", "--read-envelope-from", "r@example.org"],
        SIMPLE,
        64,
        "cannot use both",
        id="from-twice",
    ),
    pytest.param(["-a", "nope", "r@example.org"], SIMPLE, 78, "account nope not found", id="acct"),
    pytest.param(["-C", "missing.rc", "r@example.org"], SIMPLE, 74, "missing.rc", id="no-rc"),
]


@pytest.mark.parametrize(("args", "stdin", "code", "text"), ERRORS)
def test_errors_exit_with_sysexits_and_store_nothing(
    msmtprc: Path, args: list[str], stdin: bytes, code: int, text: str
) -> None:
    result = run_sendmail(args, stdin)
    line = error_line(result)
    assert result.returncode == code, line
    assert line.startswith(f"{PROG}: ") and text in line, line
    assert_nothing_stored()


def test_no_account_anywhere_is_a_configuration_error() -> None:
    result = run_sendmail(["r@example.org"], SIMPLE)
    assert result.returncode == 78
    assert error_line(result).startswith(f"{PROG}: account default not found")
    assert_nothing_stored()


def test_an_msmtprc_with_a_password_readable_by_others() -> None:
    """msmtp's check_secure, which msmtp (and relayd) skip for root."""
    rc = write_msmtprc(DEFAULT_RC + "auth on\nuser me\npassword hunter2-secret\n")
    rc.chmod(0o644)
    result = run_sendmail(["r@example.org"], SIMPLE)
    if os.geteuid() == 0:
        assert (result.returncode, result.stderr) == (0, b"")
        assert row_counts() == (1, 1)
    else:
        assert result.returncode == 78, result.stderr
        assert error_line(result) == (
            f"{PROG}: {rc}: contains secrets and therefore must have no more than user"
            " read/write permissions"
        )
        assert_nothing_stored()


def test_passwords_never_reach_the_queue() -> None:
    write_msmtprc(DEFAULT_RC + "auth on\nuser me\npassword hunter2-secret\n")
    command = "printf evaluated-%s secret"  # its output is not in its text
    submit_ok([f"--passwordeval={command}", "r@example.org"])
    assert only_message()[4] == [["passwordeval", command]]  # the command, run at delivery
    files = [queue_db(), Path(f"{queue_db()}-wal")]
    stored = b"".join(path.read_bytes() for path in files if path.exists())
    assert b"hunter2" not in stored and b"evaluated-secret" not in stored


def test_an_error_after_earlier_messages_leaves_them_alone(msmtprc: Path) -> None:
    submit_ok(["r@example.org"])
    result = run_sendmail(["r@example.org"], b"x\0y")
    assert result.returncode == 65
    assert row_counts() == (1, 1)


# --- 4. The queue cannot be written ----------------------------------------------------------


def test_queue_directory_is_a_regular_file(msmtprc: Path) -> None:
    queue_db().parent.write_text("in the way\n")
    result = run_sendmail(["r@example.org"], SIMPLE)
    line = error_line(result)
    assert result.returncode == 73, line
    assert "not a directory" in line and str(queue_db()) in line
    assert queue_db().parent.read_text() == "in the way\n"


@pytest.fixture
def one_stored(msmtprc: Path) -> Path:
    """A healthy queue holding one message."""
    submit_ok(["first@example.org"])
    assert row_counts() == (1, 1)
    return queue_db()


def test_database_locked_past_the_timeout(one_stored: Path) -> None:
    holder = sqlite3.connect(one_stored, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        result = run_sendmail(
            ["second@example.org"], SIMPLE, env=sendmail_env(**{fastpath.TIMEOUT_ENV: "0.5"})
        )
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = error_line(result)
    assert result.returncode == 75, line
    assert "locked" in line and str(one_stored) in line
    assert 0.5 <= waited < 8
    assert row_counts() == (1, 1)
    submit_ok(["third@example.org"], **{fastpath.TIMEOUT_ENV: "0.5"})
    assert row_counts() == (2, 2)


def test_a_lock_released_within_the_timeout_is_waited_for(one_stored: Path) -> None:
    message = one_stored.parent.parent / "message"
    message.write_bytes(SIMPLE)
    holder = sqlite3.connect(one_stored, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with open(message, "rb") as stdin:
        child = subprocess.Popen(
            [SENDMAIL, "second@example.org"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sendmail_env(),
        )
    try:
        time.sleep(0.5)  # long enough to start and reach the lock
        still_waiting = child.poll() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        out, err = child.communicate(timeout=30)
    assert still_waiting, "relayd-sendmail did not wait for the lock"
    assert (child.returncode, out, err) == (0, b"", b"")
    assert row_counts() == (2, 2)


def test_a_file_that_is_not_a_database(msmtprc: Path) -> None:
    db = queue_db()
    db.parent.mkdir(mode=0o700)
    junk = b"this is not SQLite\n" * 500
    db.write_bytes(junk)
    result = run_sendmail(["r@example.org"], SIMPLE)
    line = error_line(result)
    assert result.returncode == 73, line
    assert "corrupt" in line and str(db) in line
    assert db.read_bytes() == junk


def test_a_damaged_database(one_stored: Path) -> None:
    with open(one_stored, "r+b") as handle:
        handle.seek(100)  # past the 100-byte header: the schema page
        handle.write(b"\xff" * 3000)
    result = run_sendmail(["r@example.org"], SIMPLE)
    line = error_line(result)
    assert result.returncode in (73, 75), line
    assert result.returncode == 73 and "corrupt" in line, line


needs_mounts = pytest.mark.skipif(
    not can_unshare_mounts(), reason="needs root and unshare to make private mounts"
)


def test_read_only_queue(one_stored: Path) -> None:
    if os.geteuid() == 0:
        if not can_unshare_mounts():
            pytest.skip("root ignores file modes and cannot make a read-only bind mount here")
        where = one_stored.parent
        prefix = in_private_mounts(
            f"mount --bind '{where}' '{where}'\nmount -o remount,bind,ro '{where}'"
        )
        result = run_sendmail(["r@example.org"], SIMPLE, prefix=prefix)
        expected = "read-only file system"
    else:
        one_stored.chmod(0o400)
        one_stored.parent.chmod(0o500)
        try:
            result = run_sendmail(["r@example.org"], SIMPLE)
        finally:
            one_stored.parent.chmod(0o700)
            one_stored.chmod(0o600)
        expected = "permission denied"
    line = error_line(result)
    assert result.returncode == 73, line
    assert expected in line and str(one_stored) in line
    assert row_counts() == (1, 1)
    check_consistent()


@needs_mounts
def test_disk_full(one_stored: Path, tmp_path: Path) -> None:
    """The queue on a 512 KiB tmpfs, a 2 MB message: 75, and the queue still holds only the
    first message (copied out of the private mount to be read here)."""
    seed, out = tmp_path / "seed", tmp_path / "out"
    seed.mkdir()
    out.mkdir()
    for path in one_stored.parent.iterdir():
        shutil.copy2(path, seed / path.name)
    where = one_stored.parent
    setup = f"mount -t tmpfs -o size=512k,mode=0700 tmpfs '{where}'\ncp -p '{seed}'/* '{where}'/"
    run = f"""rc=0; "$@" || rc=$?; cp -p '{where}'/* '{out}'/; exit $rc"""
    body = b"Subject: big\n\n" + (b"x" * 999 + b"\n") * 2000
    result = run_sendmail(["r@example.org"], body, prefix=in_private_mounts(setup, run))
    line = error_line(result)
    assert result.returncode == 75, line
    assert "the disk is full" in line and str(one_stored) in line
    copied = out / one_stored.name
    assert row_counts(copied) == (1, 1)
    check_consistent(copied)


# --- 5. Waking the daemon -----------------------------------------------------------------------


class WakeTarget:
    """Where relayd-sendmail looks for the daemon's wake socket: `paths.wake_socket()` of the
    test environment (conftest points RELAYD_RUNTIME_DIR into the temporary HOME, so even as
    root it is never /run/relayd)."""

    def __init__(self) -> None:
        self.path = paths.wake_socket(sendmail_env())
        assert self.path.startswith(os.environ["HOME"] + os.sep), self.path
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)

    def submit(self, args: list[str]) -> None:
        result = run_sendmail(args, SIMPLE)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.fixture
def wake_target(msmtprc: Path) -> WakeTarget:
    return WakeTarget()


@pytest.fixture
def daemon(wake_target: WakeTarget) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(wake_target.path)
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def datagrams(sock: socket.socket) -> list[bytes]:
    """Everything waiting on `sock` (the sender has exited, so all of it has arrived)."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            return got


def test_a_submission_wakes_the_daemon_once(wake_target: WakeTarget, daemon: socket.socket) -> None:
    wake_target.submit(["r@example.org"])
    assert len(datagrams(daemon)) == 1
    assert row_counts() == (1, 1)
    wake_target.submit(["-odb", "r@example.org"])
    assert len(datagrams(daemon)) == 1


def test_odq_only_queues(wake_target: WakeTarget, daemon: socket.socket) -> None:
    wake_target.submit(["-odq", "r@example.org"])
    assert datagrams(daemon) == []
    assert row_counts() == (1, 1)


def test_no_listener_is_no_error(wake_target: WakeTarget) -> None:
    wake_target.submit(["r@example.org"])  # nothing at the path
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(wake_target.path)
    stale.close()  # the socket file stays, nobody reads it: ECONNREFUSED
    wake_target.submit(["r@example.org"])
    os.unlink(wake_target.path)
    Path(wake_target.path).write_text("")  # not a socket at all
    wake_target.submit(["r@example.org"])
    assert row_counts() == (3, 3)
