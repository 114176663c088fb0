"""`relayd debug-server`: the real console script, spoken to with smtplib over loopback."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from typer.testing import CliRunner

from relayd.cli import app
from relayd.text import display_headers
from tests.test_text import HOSTILE, HOSTILE_ESCAPED, assert_harmless

RELAYD = str(Path(sys.executable).with_name("relayd"))
TIMEOUT = 15.0
READY = re.compile(r"^relayd debug-server: listening on (\S+):(\d+)")
SEPARATOR = "-" * 72

MESSAGE = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: =?utf-8?b?SGVsbMO2IHfDtnJsZA==?=\r\n"
    b"X-Folded: one\r\n two\r\n"
    b"X-Control: a\x1bb\r\n"
    b"\r\n"
    b"Hello\r\n"
    b".a line that starts with a dot\r\n"
    b"caf\xc3\xa9\r\n"
)


class Server:
    """`relayd debug-server --port 0 ARGS…` in a child process; its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [RELAYD, "debug-server", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
            text=True,
            encoding="utf-8",
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.ready = self.line()
        self.host = ""
        self.port = 0

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _drain(self, stream: IO[str]) -> None:
        self._stderr.extend(stream)

    def line(self, timeout: float = TIMEOUT) -> str:
        """The next line of output (AssertionError at EOF or after `timeout`)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s") from None
        assert line is not None, f"output ended; stderr: {self.stderr}"
        return line

    def report(self) -> list[str]:
        """The lines of the next message report, up to its separator (excluded)."""
        lines: list[str] = []
        while (line := self.line()) != SEPARATOR:
            lines.append(line)
        return lines

    def no_more_output(self) -> list[str]:
        """Everything printed after the lines already read, once the process has exited."""
        rest: list[str] = []
        while (line := self._lines.get(timeout=TIMEOUT)) is not None:
            rest.append(line)
        return rest

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)
        return code

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, local_hostname="client.test", timeout=TIMEOUT)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=TIMEOUT)


def start(servers: list[Server], *args: str) -> Server:
    server = Server(*args)
    servers.append(server)
    if "--json" in args:
        ready = json.loads(server.ready)
        assert ready["event"] == "listening"
        server.host, server.port = ready["host"], ready["port"]
    else:
        match = READY.match(server.ready)
        assert match, server.ready
        server.host, server.port = match.group(1), int(match.group(2))
    assert server.port > 0
    return server


def send(server: Server, sender: str, recipients: list[str], data: bytes, **kw: Any) -> None:
    with server.smtp() as client:
        refused = client.sendmail(sender, recipients, data, **kw)
    assert refused == {}


def test_prints_the_envelope_and_decoded_headers(servers: list[Server]) -> None:
    server = start(servers)
    assert server.host == "127.0.0.1"
    send(server, "alice@example.org", ["bob@example.org", "hidden@example.org"], MESSAGE)
    report = server.report()
    assert re.fullmatch(
        r"Message 1 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d from 127\.0\.0\.1:\d+ \(EHLO client\.test\)",
        report[0],
    )
    size = len(MESSAGE)  # after the server undid smtplib's dot-stuffing
    assert report[1:5] == [
        f"MAIL FROM:<alice@example.org> SIZE={size}",
        "RCPT TO:<bob@example.org>",
        "RCPT TO:<hidden@example.org>",
        f"Size: {size} bytes",
    ]
    assert report[5:] == [
        "",
        "From: Jörg <joerg@example.org>",
        "To: Bob <bob@example.org>",
        "Subject: Hellö wörld",
        "X-Folded: one two",
        "X-Control: a\\x1bb",
    ]
    assert server.stop() == 0
    assert server.no_more_output() == []
    assert "Traceback" not in server.stderr
    assert "stopped after 1 message(s)" in server.stderr


def test_json_lines(servers: list[Server]) -> None:
    server = start(servers, "--json")
    assert json.loads(server.ready) == {
        "event": "listening",
        "host": "127.0.0.1",
        "port": server.port,
        "maildir": None,
    }
    before = time.time()
    send(server, "alice@example.org", ["bob@example.org"], MESSAGE, mail_options=["BODY=8BITMIME"])
    utf8 = "Subject: Grüße\r\n\r\nü\r\n".encode()
    send(server, "jörg@example.org", ["zoë@example.org"], utf8, mail_options=["SMTPUTF8"])
    send(server, "<>", ["alice@example.org"], b"Subject: a bounce\r\n\r\nx\r\n")
    first, second, third = (json.loads(server.line()) for _ in range(3))
    assert before <= first["received_at"] <= second["received_at"] <= time.time()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", first["peer"])
    assert {k: v for k, v in first.items() if k not in ("received_at", "peer")} == {
        "event": "message",
        "number": 1,
        "helo": "client.test",
        "esmtp": True,
        "mail_from": "alice@example.org",
        "mail_options": [f"SIZE={len(MESSAGE)}", "BODY=8BITMIME"],
        "rcpt_tos": ["bob@example.org"],
        "size": len(MESSAGE),
        "headers": [
            ["From", "Jörg <joerg@example.org>"],
            ["To", "Bob <bob@example.org>"],
            ["Subject", "Hellö wörld"],
            ["X-Folded", "one two"],
            ["X-Control", "a\x1bb"],
        ],
        "maildir_file": None,
    }
    assert second["mail_from"] == "jörg@example.org"
    assert second["rcpt_tos"] == ["zoë@example.org"]
    assert "SMTPUTF8" in second["mail_options"]
    assert second["headers"] == [["Subject", "Grüße"]]
    assert third["mail_from"] == ""  # the null sender
    assert server.stop() == 0
    assert server.no_more_output() == []


def test_maildir_files_each_message(servers: list[Server], tmp_path: Path) -> None:
    maildir = tmp_path / "mail" / "box"
    server = start(servers, "--json", "--maildir", str(maildir))
    assert json.loads(server.ready)["maildir"] == str(maildir)
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    send(server, "alice@example.org", ["bob@example.org", "hidden@example.org"], MESSAGE)
    record = json.loads(server.line())
    (stored,) = (maildir / "new").iterdir()
    assert record["maildir_file"] == str(stored)
    assert re.fullmatch(rf"\d+\.M\d+P{server.process.pid}Q\d+R[0-9a-f]+\..+", stored.name)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    delivery = (
        b"Return-Path: <alice@example.org>\r\n"
        b"X-Original-To: bob@example.org\r\n"
        b"X-Original-To: hidden@example.org\r\n"
        b"Delivered-To: bob@example.org\r\n"
        b"Delivered-To: hidden@example.org\r\n"
    )
    assert stored.read_bytes() == delivery + MESSAGE  # as sent, the dot-stuffing undone
    assert list((maildir / "tmp").iterdir()) == []
    send(server, "<>", ["alice@example.org"], b"Subject: a bounce\r\n\r\nx\r\n")
    second = Path(json.loads(server.line())["maildir_file"])
    assert second.read_bytes().startswith(b"Return-Path: <>\r\nX-Original-To: alice@example.org")
    assert server.stop() == 0


def test_quiet_prints_only_the_ready_line(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, "--quiet", "--maildir", str(tmp_path / "box"))
    assert server.ready.endswith(f"storing messages in Maildir {tmp_path / 'box'}")
    send(server, "alice@example.org", ["bob@example.org"], MESSAGE)
    assert server.stop() == 0
    assert server.no_more_output() == []
    assert len(list((tmp_path / "box" / "new").iterdir())) == 1
    assert server.stderr == ""


def test_accepts_long_lines(servers: list[Server]) -> None:
    server = start(servers, "--json")
    data = b"Subject: long\r\n\r\n" + b"x" * 20_000 + b"\r\n"
    send(server, "alice@example.org", ["bob@example.org"], data)
    assert json.loads(server.line())["size"] == len(data)
    assert server.stop() == 0


def test_offers_smtputf8_and_8bitmime_and_refuses_auth_without_tls(
    servers: list[Server],
) -> None:
    server = start(servers)
    with server.smtp() as client:
        client.ehlo()
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AHVzZXIAc2VjcmV0")
        assert code == 538, text
    assert server.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_closes_open_connections_and_exits_0(servers: list[Server], signum: int) -> None:
    server = start(servers)
    with server.smtp() as client:
        client.ehlo()
        server.process.send_signal(signum)
        code, text = client.getreply()
        assert code == 421, text
        client.close()
    assert server.process.wait(timeout=TIMEOUT) == 0
    assert server.stop() == 0  # the signal finds the process gone: wait() only
    assert "Traceback" not in server.stderr


def run_debug_server(*args: str) -> subprocess.CompletedProcess[str]:
    """`relayd debug-server ARGS` to its end (for the ways it refuses to start)."""
    return subprocess.run(
        [RELAYD, "debug-server", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "[::]"])
def test_refuses_a_non_loopback_address(host: str) -> None:
    result = run_debug_server("--port", "0", "--host", host)
    assert result.returncode == 64
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"relayd: debug-server: refusing to listen on {host}: ")
    assert "not a loopback address" in result.stderr


def test_refusal_through_the_typer_app() -> None:
    result = CliRunner().invoke(app, ["debug-server", "--host", "0.0.0.0"])
    assert result.exit_code == 64
    assert "not a loopback address" in result.stderr


def test_a_name_that_resolves_to_loopback(servers: list[Server]) -> None:
    server = start(servers, "--json", "--host", "localhost")
    assert server.host in ("127.0.0.1", "::1")
    send(server, "alice@example.org", ["bob@example.org"], MESSAGE)
    assert json.loads(server.line())["number"] == 1
    assert server.stop() == 0


def test_a_port_in_use_is_reported_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_debug_server("--port", str(port))
    assert result.returncode == 69
    assert result.stderr.startswith(f"relayd: debug-server: cannot listen on 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1


def test_a_maildir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = run_debug_server("--port", "0", "--maildir", str(tmp_path / "file"))
    assert result.returncode == 73
    assert result.stderr.startswith(f"relayd: cannot create Maildir {tmp_path / 'file'}: ")


def test_a_hostile_header_reaches_no_terminal(servers: list[Server]) -> None:
    data = b"X-Hostile: " + HOSTILE.encode() + b"\r\n\r\nbody\r\n"
    text, as_json = start(servers), start(servers, "--json")
    for server in (text, as_json):
        send(server, "alice@example.org", ["bob@example.org"], data, mail_options=["BODY=8BITMIME"])
    report = text.report()
    assert report[-1] == f"X-Hostile: {HOSTILE_ESCAPED}"
    line = as_json.line()
    assert_harmless("\n".join([*report, line]))
    assert json.loads(line)["headers"] == [["X-Hostile", HOSTILE]]  # the data, exact


def test_header_fields_survive_undecodable_bytes() -> None:
    data = b"X-Latin: caf\xe9\r\nX-Utf8: Gr\xc3\xbc\xc3\x9fe\r\nX-Bad: =?bogus?q?abc?=\r\n\r\nbody"
    assert tuple(display_headers(data)) == (
        ("X-Latin", "caf\ufffd"),
        ("X-Utf8", "Grüße"),
        ("X-Bad", "abc"),
    )


def test_stops_cleanly_when_nobody_reads_its_output() -> None:
    process = subprocess.Popen(
        [RELAYD, "debug-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        match = READY.match(process.stdout.readline().decode())
        assert match
        process.stdout.close()  # as `relayd debug-server | head -1` does
        client = smtplib.SMTP("127.0.0.1", int(match.group(2)), timeout=TIMEOUT)
        assert client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
        client.close()
        assert process.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
