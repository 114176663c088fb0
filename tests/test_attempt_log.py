"""msmtp 1.8.23's log line and stderr report (research/msmtp.md §3, §4.3): daemon.attempt_log.

The expected lines are msmtp's own (the examples of §4.3 and lines recorded from Debian's
msmtp 1.8.23); the tests at the end compare with msmtp live when it is installed.
"""

from __future__ import annotations

import calendar
import io
import os
import socket
import subprocess
import sys
import syslog
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd import text
from relayd.accounts.account import Account
from relayd.daemon.attempt_log import (
    LMTP_LOG_ERROR,
    lmtp_stderr_lines,
    log_info,
    log_line,
    log_time,
    stderr_lines,
    write,
    write_logfile,
    write_syslog,
)
from relayd.delivery.result import Reply
from relayd.store.queued import mail_size
from relayd.sysexits import ExitCode
from tests.test_serverinfo import CraftedServer, Script, msmtp_path, run_msmtp

QUEUED = Reply(250, ("2.0.0 queued as X1",))
PROG = "relayd-sendmail"


def at(hour: int, minute: int, second: int) -> float:
    """2026-11-24 at the given UTC time, as a timestamp."""
    return float(calendar.timegm((2026, 11, 24, hour, minute, second, 0, 0, 0)))


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def account(**settings: Any) -> Account:
    return Account(None, None, **{"host": "127.0.0.1", **settings})


def line(acc: Account | None = None, **kwargs: Any) -> str:
    fields: dict[str, Any] = {
        "envelope_from": "me@example.org",
        "recipients": ["you@example.com"],
        "exit_code": ExitCode.OK,
        "now": at(15, 34, 59),
    }
    return log_line(acc or account(), **{**fields, **kwargs})


# --- the examples of msmtp.md §4.3, verbatim -----------------------------------------------


def test_success() -> None:
    assert line(mailsize=167, reply=QUEUED) == (
        "Nov 24 15:34:59 host=127.0.0.1 tls=off auth=off from=me@example.org "
        "recipients=you@example.com mailsize=167 smtpstatus=250 "
        "smtpmsg='250 2.0.0 queued as X1' exitcode=EX_OK"
    )


def test_authentication_failure() -> None:
    result = line(
        account(auth="PLAIN", user="joe"),
        exit_code=ExitCode.NOPERM,
        mailsize=167,
        reply=Reply(535, ("5.7.8 bad credentials",)),
        error="authentication failed (method PLAIN)",
        now=at(15, 35, 45),
    )
    assert result == (
        "Nov 24 15:35:45 host=127.0.0.1 tls=off auth=on user=joe from=me@example.org "
        "recipients=you@example.com smtpstatus=535 smtpmsg='535 5.7.8 bad credentials' "
        "errormsg='authentication failed (method PLAIN)' exitcode=EX_NOPERM"
    )


def test_connection_refused() -> None:
    result = line(
        exit_code=ExitCode.TEMPFAIL,
        error="cannot connect to 127.0.0.1, port 2699: Connection refused",
        now=at(15, 35, 21),
    )
    assert result == (
        "Nov 24 15:35:21 host=127.0.0.1 tls=off auth=off from=me@example.org "
        "recipients=you@example.com errormsg='cannot connect to 127.0.0.1, port 2699: "
        "Connection refused' exitcode=EX_TEMPFAIL"
    )


def test_multiline_reply_and_quote() -> None:
    result = line(
        recipients=["x@example.com"],
        exit_code=ExitCode.DATAERR,
        reply=Reply(550, ("5.1.1 first line it's", "5.1.1 second line")),
        error="recipient address x@example.com not accepted by the server",
        now=at(15, 37, 42),
    )
    assert result == (
        "Nov 24 15:37:42 host=127.0.0.1 tls=off auth=off from=me@example.org "
        "recipients=x@example.com smtpstatus=550 "
        "smtpmsg='550-5.1.1 first line it?s\\n550 5.1.1 second line' "
        "errormsg='recipient address x@example.com not accepted by the server' "
        "exitcode=EX_DATAERR"
    )


def test_logfile_time_format() -> None:
    acc = account(logfile_time_format="%Y-%m-%dT%H:%M:%S%z")
    result = line(acc, recipients=["x@example.com"], mailsize=167, reply=QUEUED, now=at(15, 37, 44))
    assert result == (
        "2026-11-24T15:37:44+0000 host=127.0.0.1 tls=off auth=off from=me@example.org "
        "recipients=x@example.com mailsize=167 smtpstatus=250 "
        "smtpmsg='250 2.0.0 queued as X1' exitcode=EX_OK"
    )


# --- every rule ----------------------------------------------------------------------------


def info(acc: Account | None = None, **kwargs: Any) -> str:
    fields: dict[str, Any] = {
        "envelope_from": "f@x",
        "recipients": ["r@x"],
        "exit_code": ExitCode.OK,
    }
    return log_info(acc or account(), **{**fields, **kwargs})


def test_syslog_text_is_the_line_without_time() -> None:
    assert (
        info()
        == "host=127.0.0.1 tls=off auth=off from=f@x recipients=r@x mailsize=0 exitcode=EX_OK"
    )
    assert line(account(), envelope_from="f@x", recipients=["r@x"]) == "Nov 24 15:34:59 " + info()


def test_host_whenever_set_socket_only_without_host() -> None:
    assert info(account(socket="/run/smtp")).startswith("host=127.0.0.1 tls=off")
    assert info(account(host=None, socket="/run/smtp")).startswith("socket=/run/smtp tls=off")


def test_tls_from_the_account_setting() -> None:
    assert " tls=on auth=off " in info(account(tls=True))
    assert " tls=on auth=off " in info(account(tls=True, tls_starttls=False))


@pytest.mark.parametrize(
    ("auth", "user", "expected"),
    [
        (None, "joe", " auth=off from="),  # user without auth: not shown
        ("", "joe", " auth=on user=joe from="),  # auth on (automatic choice)
        ("CRAM-MD5", "joe", " auth=on user=joe from="),
        ("", None, " auth=on from="),  # auth without a user (e.g. EXTERNAL)
    ],
)
def test_user_only_with_auth_and_a_user(auth: str | None, user: str | None, expected: str) -> None:
    assert expected in info(account(auth=auth, user=user))


def test_recipients_are_comma_joined_verbatim() -> None:
    # Recipients keep their quotes (msmtp replaces quotes only in smtpmsg and errormsg).
    assert " recipients=a@x,o'n@x.com,a@x mailsize=" in info(recipients=["a@x", "o'n@x.com", "a@x"])


def test_mailsize_only_on_success() -> None:
    assert " mailsize=42 " in info(mailsize=42)
    failed = info(exit_code=ExitCode.UNAVAILABLE, mailsize=42, error="e")
    assert "mailsize" not in failed


def test_smtp_reply_on_success_and_failure() -> None:
    assert info(reply=QUEUED).endswith(
        " smtpstatus=250 smtpmsg='250 2.0.0 queued as X1' exitcode=EX_OK"
    )
    failed = info(exit_code=ExitCode.UNAVAILABLE, reply=Reply(452, ("4.3.1 full",)), error="e")
    assert failed.endswith(
        " smtpstatus=452 smtpmsg='452 4.3.1 full' errormsg='e' exitcode=EX_UNAVAILABLE"
    )


def test_no_reply_no_smtpstatus() -> None:
    assert "smtp" not in info(exit_code=ExitCode.TEMPFAIL, error="e")


def test_control_characters_and_quotes() -> None:
    reply = Reply(550, ("5.1.1 first\x01 line it's", "5.1.1 tab\there \x7f é"))
    result = info(
        exit_code=ExitCode.DATAERR,
        reply=reply,
        error="recipient address o'n@x.com\r\n not accepted by the server",
    )
    assert result.endswith(
        " smtpstatus=550 smtpmsg='550-5.1.1 first? line it?s\\n550 5.1.1 tab?here ? é' "
        "errormsg='recipient address o?n@x.com?? not accepted by the server' exitcode=EX_DATAERR"
    )


def test_errormsg_only_on_failure_and_when_not_empty() -> None:
    assert "errormsg" not in info(error="ignored on success")
    assert "errormsg" not in info(exit_code=ExitCode.SOFTWARE, error="")
    assert "errormsg" not in info(exit_code=ExitCode.SOFTWARE)


@pytest.mark.parametrize("code", list(ExitCode))
def test_exit_names(code: ExitCode) -> None:
    assert info(exit_code=code, error="e").endswith(f" exitcode=EX_{code.name}")
    assert info(exit_code=int(code), error="e").endswith(f" exitcode=EX_{code.name}")


def test_lmtp_partial_failure_is_logged_without_a_reply() -> None:
    result = info(exit_code=ExitCode.UNAVAILABLE, error=LMTP_LOG_ERROR)
    assert result.endswith(
        " recipients=r@x errormsg='delivery to one or more recipients failed' "
        "exitcode=EX_UNAVAILABLE"
    )


# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_format", "expected"),
    [
        (None, "Nov 24 15:34:59"),
        ("", "Nov 24 15:34:59"),  # an empty logfile_time_format is unset
        ("none", "none"),  # no special meaning in 1.8.23
        ("%Y%%", "2026%"),
        ("%", "%"),
        ("%c|%s", "Tue Nov 24 15:34:59 2026|1795534499"),
        ("x" * 127, "x" * 127),
    ],
)
def test_log_time(time_format: str | None, expected: str) -> None:
    assert log_time(time_format, at(15, 34, 59)) == expected


def test_day_is_zero_padded_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = calendar.timegm((2026, 1, 5, 3, 4, 5, 0, 0, 0))
    assert log_time(None, stamp) == "Jan 05 03:04:05"
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    assert log_time(None, stamp) == "Jan 04 22:04:05"


def test_time_format_that_does_not_fit_msmtp_buffer() -> None:
    with pytest.raises(ValueError, match=r"^invalid logfile_time_format$"):
        log_time("x" * 128)


# --- mailsize ------------------------------------------------------------------------------

HEADERS = b"From: a@b.c\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <x@y>\n"


@pytest.mark.parametrize(
    ("message", "size"),
    [  # sizes msmtp 1.8.23 logged for these inputs
        (HEADERS + b"\nhello\n", 74),
        (HEADERS + b"\nhello", 74),  # the missing last line end is counted
        (HEADERS.replace(b"\n", b"\r\n") + b"\r\nhello\r\n", 74),  # CRLF counts 1
        (HEADERS + b"\nhe\rllo\n..dots\n.\n", 84),  # bare CR kept; no dot-stuffing counted
        (HEADERS + b"\n", 68),
        (HEADERS, 67),
        (HEADERS + b"\nx\r\r\ny\n", 73),
        (b"", 0),
    ],
)
def test_mail_size(message: bytes, size: int) -> None:
    assert mail_size(message) == size


# --- the logfile ---------------------------------------------------------------------------

INFO = "host=h tls=off auth=off from=f@x recipients=r@x mailsize=1 exitcode=EX_OK"


def test_append_to_logfile(tmp_path: Path) -> None:
    path = tmp_path / "sub.log"
    assert write_logfile(str(path), INFO, prog=PROG, now=at(1, 2, 3))
    assert write_logfile(str(path), "second", prog=PROG, time_format="%H", now=at(1, 2, 3))
    assert path.read_bytes() == f"Nov 24 01:02:03 {INFO}\n01 second\n".encode()


def test_logfile_dash_is_stdout(tmp_path: Path) -> None:
    out = io.StringIO()
    assert write_logfile("-", INFO, prog=PROG, now=at(1, 2, 3), stdout=out)
    assert out.getvalue() == f"Nov 24 01:02:03 {INFO}\n"
    assert not (tmp_path / "-").exists()


def test_undecodable_reply_bytes_are_written_as_received(tmp_path: Path) -> None:
    path = tmp_path / "log"
    text = b"550 caf\xe9".decode("utf-8", "surrogateescape")
    assert write_logfile(str(path), text, prog=PROG, now=at(1, 2, 3))
    assert path.read_bytes() == b"Nov 24 01:02:03 550 caf\xe9\n"


def _failure(path: str, reason: str) -> str:
    return f"{PROG}: cannot log to {path}: {reason}\n{PROG}: log info was: {INFO}\n"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing/dir/log", "cannot open: No such file or directory"),
        (".", "cannot open: Is a directory"),
    ],
)
def test_unwritable_logfile(tmp_path: Path, name: str, reason: str) -> None:
    path = str(tmp_path / name)
    err = io.StringIO()
    assert not write_logfile(path, INFO, prog=PROG, stderr=err)
    assert err.getvalue() == _failure(path, reason)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_logfile_without_permission(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"")
    path.chmod(0o444)
    err = io.StringIO()
    assert not write_logfile(str(path), INFO, prog=PROG, stderr=err)
    assert err.getvalue() == _failure(str(path), "cannot open: Permission denied")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_write_error() -> None:
    # msmtp 1.8.23 itself crashes here (double fclose); later versions print strerror.
    err = io.StringIO()
    assert not write_logfile("/dev/full", INFO, prog=PROG, stderr=err)
    assert err.getvalue() == _failure("/dev/full", "No space left on device")


def test_invalid_time_format_is_a_logging_failure(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    err = io.StringIO()
    assert not write_logfile(path, INFO, prog="msmtp", time_format="x" * 128, stderr=err)
    assert err.getvalue() == (
        f"msmtp: cannot log to {path}: invalid logfile_time_format\nmsmtp: log info was: {INFO}\n"
    )
    assert not os.path.exists(path)


_HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"locked\n"
    return holder


def test_waits_for_another_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "log"
    holder = _hold_lock(path, 0.5)
    started = time.monotonic()
    assert write_logfile(str(path), INFO, prog=PROG, now=at(1, 2, 3))
    assert time.monotonic() - started >= 0.3
    assert holder.wait(10) == 0
    assert path.read_text() == f"Nov 24 01:02:03 {INFO}\n"


def test_gives_up_when_the_lock_is_held_too_long(tmp_path: Path) -> None:
    path = tmp_path / "log"
    holder = _hold_lock(path, 30)
    try:
        err = io.StringIO()
        started = time.monotonic()
        assert not write_logfile(str(path), INFO, prog=PROG, stderr=err, lock_timeout=1)
        assert 0.9 <= time.monotonic() - started < 5
        reason = "cannot lock (tried for 1 seconds): Resource temporarily unavailable"
        assert err.getvalue() == _failure(str(path), reason)
        assert path.read_text() == ""
    finally:
        holder.kill()
        holder.wait()


_WRITER = """
import sys
from relayd.daemon.attempt_log import write_logfile
for i in range(int(sys.argv[3])):
    write_logfile(sys.argv[1], f"{sys.argv[2]} line {i} " + "x" * 3000, prog="w")
"""


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "log"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{n}", "40"])
        for n in range(4)
    ]
    assert [w.wait(60) for w in writers] == [0, 0, 0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 160
    body = " " + "x" * 3000
    assert sorted(ln.split(" ", 3)[3].removesuffix(body) for ln in lines) == sorted(
        f"w{n} line {i}" for n in range(4) for i in range(40)
    )


# --- write(): logfile and syslog -----------------------------------------------------------


class SyslogRecorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Any, ...]] = []
        monkeypatch.setattr(syslog, "openlog", lambda *a, **k: self.calls.append(("open", a, k)))
        monkeypatch.setattr(syslog, "syslog", lambda *a: self.calls.append(("log", *a)))
        monkeypatch.setattr(syslog, "closelog", lambda: self.calls.append(("close",)))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> SyslogRecorder:
    return SyslogRecorder(monkeypatch)


@pytest.mark.parametrize(
    ("facility", "value"),
    [
        ("LOG_USER", syslog.LOG_USER),
        ("LOG_MAIL", syslog.LOG_MAIL),
        *((f"LOG_LOCAL{n}", getattr(syslog, f"LOG_LOCAL{n}")) for n in range(8)),
    ],
)
def test_syslog_facility_and_priority(recorder: SyslogRecorder, facility: str, value: int) -> None:
    write_syslog(facility, INFO, failed=False)
    write_syslog(facility, "bad", failed=True, ident="msmtp")
    assert recorder.calls == [
        ("open", ("relayd", 0, value), {}),
        ("log", syslog.LOG_INFO, INFO),
        ("close",),
        ("open", ("msmtp", 0, value), {}),
        ("log", syslog.LOG_ERR, "bad"),
        ("close",),
    ]


def test_write_to_logfile_and_syslog(tmp_path: Path, recorder: SyslogRecorder) -> None:
    path = tmp_path / "log"
    acc = account(logfile=str(path), syslog="LOG_MAIL", logfile_time_format="%s")
    write(acc, INFO, exit_code=ExitCode.UNAVAILABLE, prog=PROG, now=at(0, 0, 1))
    assert path.read_text() == f"1795478401 {INFO}\n"
    assert recorder.calls == [
        ("open", ("relayd", 0, syslog.LOG_MAIL), {}),
        ("log", syslog.LOG_ERR, INFO),
        ("close",),
    ]


def test_write_without_logfile_or_syslog_does_nothing(
    tmp_path: Path, recorder: SyslogRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    write(account(), INFO, exit_code=ExitCode.OK, prog=PROG)
    assert recorder.calls == []
    assert capsys.readouterr() == ("", "")


def test_logging_failure_never_changes_the_exit_code(
    tmp_path: Path, recorder: SyslogRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    acc = account(logfile=str(tmp_path / "missing" / "log"), syslog="LOG_USER")
    exit_code = ExitCode.OK
    write(acc, INFO, exit_code=exit_code, prog=PROG)  # returns nothing, raises nothing
    assert exit_code == ExitCode.OK
    assert capsys.readouterr().err == _failure(
        str(tmp_path / "missing" / "log"), "cannot open: No such file or directory"
    )
    assert ("log", syslog.LOG_INFO, INFO) in recorder.calls  # syslog still gets the line


# --- stderr --------------------------------------------------------------------------------

REFUSED = Reply(550, ("5.1.1 first\x01 line it's", "5.1.1 tab\there"))


def test_stderr_as_msmtp_prints_it() -> None:
    # Recorded from msmtp 1.8.23 (--host account): control characters → ?, quotes kept.
    error = "recipient address o'n@x.com not accepted by the server"
    assert stderr_lines("msmtp", account(), error, REFUSED) == [
        "msmtp: recipient address o'n@x.com not accepted by the server",
        "msmtp: server message: 550-5.1.1 first? line it's",
        "msmtp: server message: 550 5.1.1 tab?here",
        "msmtp: could not send mail",
    ]


def test_stderr_names_the_account_from_a_file() -> None:
    acc = Account("work", "/home/jdoe/.msmtprc", host="mail.work.example")
    assert stderr_lines(PROG, acc, "cannot connect to x, port 25: Connection refused", None) == [
        "relayd-sendmail: cannot connect to x, port 25: Connection refused",
        "relayd-sendmail: could not send mail (account work from /home/jdoe/.msmtprc)",
    ]


def test_stderr_for_serverinfo_and_rmqs_has_no_trailer() -> None:
    reply = Reply(421, ("closing",))
    error = "cannot get initial OK message from server"
    assert stderr_lines(PROG, account(), error, reply, sendmail=False) == [
        f"{PROG}: cannot get initial OK message from server",
        f"{PROG}: server message: 421 closing",
    ]


def test_lmtp_stderr() -> None:
    acc = Account("lmtp", "/etc/msmtprc", host="localhost")
    failures = [
        ("the server refuses to send the mail to a@x", Reply(550, ("5.1.1 no such user",))),
        ("the server refuses to send the mail to b@x", None),
    ]
    assert lmtp_stderr_lines("msmtp", acc, failures) == [
        "msmtp: the server refuses to send the mail to a@x",
        "msmtp: LMTP server message: 550 5.1.1 no such user",
        "msmtp: the server refuses to send the mail to b@x",
        "msmtp: could not send mail to all recipients (account lmtp from /etc/msmtprc)",
    ]
    assert lmtp_stderr_lines("msmtp", account(), [])[-1] == (
        "msmtp: could not send mail to all recipients"
    )


def test_sanitize() -> None:
    assert text.sanitize("a\x00\x1f\x7f\x80é'") == "a???\x80é'"


# --- against msmtp itself ------------------------------------------------------------------

MAIL = HEADERS + b"\nhello\n.dot\n"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("script", "recipients", "options", "reply"),
    [
        (Script(["220 x"], ["250 x"]), ["you@example.com", "o'n@x.com"], [], QUEUED),
        (
            Script(
                ["220 x"], ["250 x"], rcpt=["550-5.1.1 first\x01 line it's", "550 5.1.1 tab\there"]
            ),
            ["o'n@x.com"],
            [],
            REFUSED,
        ),
        (
            Script(["220 x"], ["250 AUTH PLAIN"]),
            ["a@b.c"],
            ["--auth=plain", "--user=joe", "--passwordeval=echo pw"],
            Reply(535, ("5.7.8 bad credentials",)),
        ),
        (
            Script(["220 x"], ["250 x"], end=["452 4.3.1 full"]),
            ["a@b.c"],
            [],
            Reply(452, ("4.3.1 full",)),
        ),
        (None, ["a@b.c"], [], None),
    ],
    ids=["success", "rcpt-550", "auth-535", "end-452", "refused"],
)
def test_live_log_line_and_stderr_match_msmtp(
    tmp_path: Path,
    script: Script | None,
    recipients: list[str],
    options: list[str],
    reply: Reply | None,
) -> None:
    msmtp_path()
    log = tmp_path / "log"
    server = CraftedServer(script) if script is not None else None
    port = server.port if server is not None else _closed_port()
    try:
        result = run_msmtp(
            "--host=127.0.0.1",
            f"--port={port}",
            "--from=me@example.org",
            f"--logfile={log}",
            "--logfile-time-format=T",
            *options,
            *recipients,
            stdin=MAIL,
        )
    finally:
        if server is not None:
            server.__exit__()
    code = ExitCode(result.returncode)
    stderr = result.stderr.decode().splitlines()
    # The error text is the session's business: take msmtp's, check everything around it.
    error = stderr[0].removeprefix("msmtp: ") if stderr else None
    acc = account(
        port=port,
        auth="PLAIN" if options else None,
        user="joe" if options else None,
        logfile_time_format="T",
    )
    ours = log_line(
        acc,
        envelope_from="me@example.org",
        recipients=recipients,
        exit_code=code,
        mailsize=mail_size(MAIL),
        reply=reply,
        error=error,
    )
    assert log.read_text() == ours + "\n"
    if code != ExitCode.OK:
        assert stderr == stderr_lines("msmtp", acc, error, reply)
