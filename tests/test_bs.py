"""`relayd-sendmail -bs`: SMTP on standard input and output (the SMTP listener's handler), run
as a subprocess over pipes; every read has a deadline and every process is killed in a finally."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd.submission.client import Reply
from relayd.submission.smtpstdio import smtp_reply
from relayd.sysexits import ExitCode
from tests.host_helpers import NOBODY, Host, host, needs_root
from tests.sendmail_helpers import (
    SENDMAIL,
    assert_nothing_stored,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)
from tests.test_daemon import Daemon, start_daemon, upstream
from tests.test_host_socket import host_daemon

__all__ = ["host", "host_daemon", "start_daemon", "upstream"]  # fixtures

# Date and Message-ID present: relayd adds nothing, so the queue must hold these exact bytes.
MESSAGE = (
    b"From: Me <me@example.org>\r\nTo: you@example.org\r\nSubject: over -bs\r\n"
    b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bs-1@example.org>\r\n\r\n"
    b"line one\r\n.leading dot\r\n\r\nlast line\r\n"
)
TIMEOUT = 20.0
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as (\S+)\r\n$")


def dot_stuffed(data: bytes) -> bytes:
    """`data` as it goes after DATA, with the terminating dot."""
    lines = data.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def transaction(data: bytes = MESSAGE, sender: str = "me@example.org") -> bytes:
    return (
        f"MAIL FROM:<{sender}>\r\nRCPT TO:<you@example.org>\r\nDATA\r\n".encode()
        + dot_stuffed(data)
        + b".\r\n"
    )


class Session:
    """`relayd-sendmail -bs` with pipes: write commands, read replies with a deadline."""

    def __init__(self) -> None:
        env = sendmail_env()
        self.proc = subprocess.Popen(
            [SENDMAIL, "-bs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=env["HOME"],
        )
        self.pending = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def reply(self) -> list[bytes]:
        """One reply's lines (a multi-line one whole), each with its CRLF."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if line[3:4] == b" ":
                return lines

    def _line(self) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n" not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            assert ready, f"no reply within {TIMEOUT} s (so far {self.pending!r})"
            block = os.read(self.proc.stdout.fileno(), 65536)
            assert block, f"stdout closed in the middle of a reply: {self.pending!r}"
            self.pending += block
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line + b"\r\n"

    def finish(self, *, close_stdin: bool = True) -> tuple[int, bytes, bytes]:
        """Exit code, the rest of stdout and stderr once the process has ended."""
        if not close_stdin:
            self.proc.wait(timeout=TIMEOUT)  # it must end by itself, its input still open
        out, err = self.proc.communicate(timeout=TIMEOUT)  # closes stdin
        return self.proc.returncode, self.pending + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=TIMEOUT)


@pytest.fixture
def session() -> Iterator[Callable[[], Session]]:
    started: list[Session] = []

    def start() -> Session:
        write_msmtprc()
        started.append(Session())
        return started[-1]

    yield start
    for one in started:
        one.kill()


def one(session: Session, command: bytes) -> bytes:
    session.send(command)
    (line,) = session.reply()
    return line


def test_a_session_queues_the_exact_bytes_and_quits(session: Callable[[], Session]) -> None:
    bs = session()
    (greeting,) = bs.reply()
    assert greeting.startswith(b"220 ") and b"relayd" in greeting
    bs.send(b"EHLO client.example\r\n")
    ehlo = bs.reply()
    assert ehlo[0].startswith(b"250-") and ehlo[-1].startswith(b"250 ")
    features = {line[4:].strip().split(b" ")[0] for line in ehlo[1:]}
    assert {b"SIZE", b"8BITMIME", b"SMTPUTF8", b"PIPELINING", b"ENHANCEDSTATUSCODES"} <= features
    assert one(bs, b"MAIL FROM:<me@example.org>\r\n").startswith(b"250 2.1.0")
    assert one(bs, b"RCPT TO:<you@example.org>\r\n").startswith(b"250 2.1.5")
    assert one(bs, b"DATA\r\n").startswith(b"354 ")
    bs.send(dot_stuffed(MESSAGE))
    queued = QUEUED.match(one(bs, b".\r\n"))
    assert queued
    assert one(bs, b"QUIT\r\n").startswith(b"221 ")
    code, rest, err = bs.finish(close_stdin=False)  # QUIT alone ends it: stdin still open
    assert (code, rest, err) == (0, b"", b"")
    (stored,) = stored_messages()
    assert stored.queue_id == queued.group(1).decode()
    assert stored.data == MESSAGE
    assert stored.sender == "me@example.org"
    assert stored.recipients == [("you@example.org", "pending")]


def test_end_of_input_without_quit_exits_0_and_stores_nothing_half(
    session: Callable[[], Session],
) -> None:
    bs = session()
    bs.reply()
    bs.send(b"EHLO client.example\r\n")
    bs.reply()
    bs.send(b"MAIL FROM:<me@example.org>\r\nRCPT TO:<you@example.org>\r\nDATA\r\n")
    assert [bs.reply()[0][:3] for _ in range(3)] == [b"250", b"250", b"354"]
    bs.send(MESSAGE[:60])  # cut off in the middle of the message
    code, rest, err = bs.finish()
    assert (code, rest, err) == (0, b"", b"")
    assert_nothing_stored()


def test_two_messages_in_one_session(session: Callable[[], Session]) -> None:
    bs = session()
    bs.reply()
    one(bs, b"HELO client.example\r\n")
    ids = []
    for sender in ("me@example.org", ""):
        bs.send(transaction(sender=sender))
        replies = [bs.reply()[0] for _ in range(4)]
        queued = QUEUED.match(replies[-1])
        assert queued, replies
        ids.append(queued.group(1).decode())
    assert one(bs, b"QUIT\r\n").startswith(b"221 ")
    assert bs.finish()[0] == 0
    stored = stored_messages()
    assert [m.queue_id for m in stored] == ids and len(set(ids)) == 2
    assert [m.sender for m in stored] == ["me@example.org", ""]
    assert all(m.data == MESSAGE for m in stored)


def test_a_nul_byte_is_refused_and_the_session_goes_on(session: Callable[[], Session]) -> None:
    bs = session()
    bs.reply()
    bs.send(b"EHLO client.example\r\n")
    bs.reply()
    bs.send(transaction(MESSAGE.replace(b"line one", b"line\0one")))
    replies = [bs.reply()[0] for _ in range(4)]
    assert replies[-1].startswith(b"554 5.6.0 "), replies
    assert one(bs, b"NOOP\r\n").startswith(b"250 ")
    assert one(bs, b"QUIT\r\n").startswith(b"221 ")
    assert bs.finish()[0] == 0
    assert_nothing_stored()


@pytest.mark.parametrize("quit", [True, False], ids=["with-quit", "end-of-input"])
def test_pipelined_commands_in_one_write_are_all_answered(quit: bool) -> None:
    write_msmtprc()
    script = b"EHLO client.example\r\n" + transaction() + (b"QUIT\r\n" if quit else b"")
    result = run_sendmail(["-bs"], script, timeout=TIMEOUT)
    assert (result.returncode, result.stderr) == (0, b"")
    lines = result.stdout.split(b"\r\n")
    assert lines[-1] == b""
    codes = [line[:4] for line in lines[:-1] if line[3:4] == b" "]  # last line of each reply
    expected = [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 "] + ([b"221 "] if quit else [])
    assert codes == expected, result.stdout
    queued = re.search(rb"\r\n250 2\.0\.0 Ok: queued as (\S+)\r\n", result.stdout)
    assert queued
    (stored,) = stored_messages()
    assert (stored.queue_id, stored.data) == (queued.group(1).decode(), MESSAGE)


def test_an_unwritable_queue_is_451_and_one_line_on_stderr() -> None:
    write_msmtprc()
    home = Path(os.environ["HOME"])
    (home / "file").write_text("not a directory\n")
    env = sendmail_env(RELAYD_DATABASE_URL=f"sqlite:///{home}/file/queue.db")
    script = b"EHLO client.example\r\n" + transaction() + b"QUIT\r\n"
    result = run_sendmail(["-bs"], script, env=env, timeout=TIMEOUT)
    assert result.returncode == 0
    assert b"\r\n451 4.3.0 Queue not writable, try again later\r\n221 " in result.stdout
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("SMTP from stdin: not stored: cannot store the message in ")


def test_swaks_sends_through_a_pipe() -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (apt-get install swaks): the Debian client test")
    write_msmtprc()
    result = subprocess.run(
        [
            swaks,
            "--pipe",
            f"{SENDMAIL} -bs",
            "--from",
            "me@example.org",
            "--to",
            "you@example.org",
            "--header",
            "Subject: through swaks",
            "--body",
            "hello from swaks",
        ],
        capture_output=True,
        env=sendmail_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    queued = re.search(rb"<-  250 2\.0\.0 Ok: queued as (\S+)", result.stdout)
    assert queued, result.stdout
    assert b"<-  221 " in result.stdout
    (stored,) = stored_messages()
    assert stored.queue_id == queued.group(1).decode()
    assert b"Subject: through swaks\r\n" in stored.data and b"hello from swaks" in stored.data


@pytest.mark.parametrize(
    ("code", "line", "expected"),
    [
        (0, "queued as ABC", "250 2.0.0 Ok: queued as ABC"),
        (75, "queue locked", "451 4.3.0 queue locked"),
        (65, "message too big: more than 9 bytes ([submit] max_size)", "552 5.3.4 "),
        (65, "invalid recipient", "554 5.6.0 invalid recipient"),
        (77, "-C: no", "550 5.7.1 -C: no"),
        (78, "no account", "550 5.7.1 no account"),
        (76, "answered badly", "451 4.3.0 answered badly"),
    ],
)
def test_host_daemon_replies_become_smtp_replies(code: int, line: str, expected: str) -> None:
    assert smtp_reply(Reply(ExitCode(code), line, [])).startswith(expected)


def test_command_line_envelope_and_account_options_are_named_as_ignored() -> None:
    write_msmtprc()
    script = b"EHLO client.example\r\n" + transaction() + b"QUIT\r\n"
    args = ["-bs", "-a", "default", "--port", "2525", "-f", "x@example.org", "r@example.org"]
    result = run_sendmail(args, script, timeout=TIMEOUT)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [
        "relayd-sendmail: warning: -bs takes the envelope and the account from the SMTP session"
        " (MAIL FROM, RCPT TO); ignoring --port, -a, -f, the recipients"
    ]
    (stored,) = stored_messages()
    assert (stored.sender, stored.overrides) == ("me@example.org", [])
    assert run_sendmail(["-bs"], script, timeout=TIMEOUT).stderr == b""  # nothing to say


# Over IN_MEMORY: the session spools it to a file; it must arrive whole and byte-exact.
BIG = MESSAGE + b"".join(b".%06d a line of a big message\r\n" % n for n in range(60_000))


def test_a_big_message_is_spooled_and_stored_byte_for_byte() -> None:
    write_msmtprc()
    script = b"EHLO client.example\r\n" + transaction(BIG) + b"QUIT\r\n"
    result = run_sendmail(["-bs"], script, timeout=60)
    assert (result.returncode, result.stderr) == (0, b"")
    assert b"\r\n250 2.0.0 Ok: queued as " in result.stdout
    (stored,) = stored_messages()
    assert stored.data == BIG


@needs_root
def test_a_big_message_of_a_host_queue_user_goes_through_the_socket_whole(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon()
    script = b"EHLO client.example\r\n" + transaction(BIG) + b"QUIT\r\n"
    result = host.sendmail(NOBODY, ["-bs"], script, timeout=60)
    assert (result.returncode, result.stderr) == (0, b""), result.stdout[-300:]
    assert b"\r\n250 2.0.0 Ok: queued as " in result.stdout
    (stored,) = stored_messages()
    assert stored.data == BIG


@needs_root
def test_a_user_of_the_host_queue_goes_through_the_submit_socket(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon("max_size = 2000")
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 50
    script = b"EHLO client.example\r\n" + transaction() + transaction(big) + b"QUIT\r\n"
    result = host.sendmail(NOBODY, ["-bs"], script, timeout=TIMEOUT)
    assert (result.returncode, result.stderr) == (0, b"")
    queued = re.search(rb"\r\n250 2\.0\.0 Ok: queued as (\S+)\r\n", result.stdout)
    assert queued, result.stdout
    assert b"\r\n552 5.3.4 " in result.stdout
    (stored,) = stored_messages()
    assert stored.queue_id == queued.group(1).decode()
    assert stored.data == MESSAGE
    assert not list(Path(host.home(NOBODY)).rglob("*.sqlite3"))
