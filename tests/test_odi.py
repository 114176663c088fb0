"""`relayd-sendmail -odi`, `--serverinfo` and `--rmqs` end to end (SPEC §1.1, §4).

The real console script in a subprocess, against the fault-injecting server of tests/upstream.py
on 127.0.0.1. The queue, its attempts and the account's logfile are read back with stdlib
sqlite3 and plain file reads: each attempt leaves one attempts row and one msmtp-format log line;
a temporary failure keeps the message queued (exit 0, a note on stderr, the daemon woken), a
permanent one fails it with msmtp's exit code, a problem only the user can fix holds it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from relayd import paths
from relayd.store.queued import mail_size
from tests.sendmail_helpers import (
    check_consistent,
    queue_db,
    row_counts,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)
from tests.upstream import Fault, Features, TlsMode, UpstreamServer

PROG = "relayd-sendmail"
PASSWORD = "pw-Zq8vX3-unique"  # searched for everywhere relayd writes
USERS = {"user": PASSWORD}
MESSAGE = (
    b"From: Me <me@example.org>\n"
    b"To: a@y.test\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    b"Message-ID: <odi.1@example.org>\n"
    b"Subject: interactive\n"
    b"\n"
    b"Line one.\n"
    b".leading dot\n"
    b"..two dots\n"
    b"\xc3\xa9t\xc3\xa9\n"
)
WIRE = MESSAGE.replace(b"\n", b"\r\n")
R1, R2 = "a@y.test", "b@y.test"
LOG_TIME = r"[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(timeout=10) as upstream:
        yield upstream


def logfile() -> Path:
    return Path(os.environ["HOME"], "relayd.log")


def msmtprc(port: int, *lines: str) -> Path:
    """~/.msmtprc for one account at 127.0.0.1:PORT with a logfile and `lines`."""
    base = [
        "account default",
        "host 127.0.0.1",
        f"port {port}",
        "from me@example.org",
        f"logfile {logfile()}",
    ]
    return write_msmtprc("\n".join([*base, *lines]) + "\n")


def odi(
    *args: str, stdin: bytes = MESSAGE, recipients: tuple[str, ...] = (R1,)
) -> subprocess.CompletedProcess[bytes]:
    return run_sendmail(["-odi", *args, *recipients], stdin, timeout=30)


def sendmail(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run_sendmail(list(args), b"", timeout=30)


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode("utf-8", "replace").splitlines()


def log_lines() -> list[str]:
    path = logfile()
    return path.read_text().splitlines() if path.exists() else []


@dataclass(frozen=True)
class AttemptRow:
    exit_code: int
    reply_code: int | None
    reply: str | None
    host: str
    tls: bool
    auth: bool
    recipients: list[dict[str, Any]]
    possible_duplicate: bool


def attempt_rows() -> list[AttemptRow]:
    with sqlite3.connect(f"file:{queue_db()}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT exit_code, reply_code, reply, host, tls, auth, recipient_replies,"
            " possible_duplicate FROM attempts ORDER BY id"
        ).fetchall()
    return [
        AttemptRow(code, rcode, reply, host, bool(tls), bool(auth), json.loads(rcpts), bool(dup))
        for code, rcode, reply, host, tls, auth, rcpts, dup in rows
    ]


def message_row() -> dict[str, Any]:
    """The one message's columns that sendmail_helpers.Stored does not carry."""
    with sqlite3.connect(f"file:{queue_db()}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        (row,) = conn.execute(
            "SELECT queue_id, state, attempts, reason, next_attempt_at, lease_until, lease_owner,"
            " created_at FROM messages"
        ).fetchall()
    return dict(row)


def recipient_rows() -> list[tuple[str, str, int | None, str | None]]:
    with sqlite3.connect(f"file:{queue_db()}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT address, state, reply_code, reply_text FROM recipients ORDER BY position"
        ).fetchall()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def daemon() -> Iterator[socket.socket]:
    """A stand-in for the daemon's wake-up socket, to see whether -odi nudged it."""
    path = paths.wake_socket(sendmail_env())
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)


def wakeups(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            return got


def failure_report(error: str, reply: str | None = None) -> list[str]:
    """msmtp's stderr report of a failed attempt, for the account in ~/.msmtprc."""
    rc = Path(os.environ["HOME"], ".msmtprc")
    lines = [f"{PROG}: {error}"]
    if reply is not None:
        lines.append(f"{PROG}: server message: {reply}")
    return [*lines, f"{PROG}: could not send mail (account default from {rc})"]


# -- success ---------------------------------------------------------------------------------------


def test_success_delivers_the_exact_bytes_and_records_one_attempt(
    server: UpstreamServer, daemon: socket.socket
) -> None:
    msmtprc(server.port)
    result = odi(recipients=(R1, R2))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    (got,) = server.transactions
    assert (got.mail_from, got.rcpt_tos, got.data) == ("me@example.org", (R1, R2), WIRE)
    assert got.mail_params == "BODY=8BITMIME"  # the message has 8-bit bytes
    (stored,) = stored_messages()
    assert stored.data == WIRE
    assert (stored.state, stored.recipients) == ("sent", [(R1, "sent"), (R2, "sent")])
    row = message_row()
    assert (row["attempts"], row["reason"], row["next_attempt_at"]) == (1, None, None)
    assert (row["lease_until"], row["lease_owner"]) == (None, None)
    assert recipient_rows() == [
        (R1, "sent", 250, "2.0.0 Ok: queued"),
        (R2, "sent", 250, "2.0.0 Ok: queued"),
    ]
    (attempt,) = attempt_rows()
    assert attempt == AttemptRow(
        exit_code=0,
        reply_code=250,
        reply="2.0.0 Ok: queued",
        host="127.0.0.1",
        tls=False,
        auth=False,
        recipients=[
            {
                "position": 0,
                "address": R1,
                "state": "sent",
                "code": 250,
                "text": "2.0.0 Ok: queued",
            },
            {
                "position": 1,
                "address": R2,
                "state": "sent",
                "code": 250,
                "text": "2.0.0 Ok: queued",
            },
        ],
        possible_duplicate=False,
    )
    (line,) = log_lines()
    size = mail_size(MESSAGE)
    assert re.fullmatch(
        rf"{LOG_TIME} host=127\.0\.0\.1 tls=off auth=off from=me@example\.org "
        rf"recipients={R1},{R2} mailsize={size} smtpstatus=250 "
        r"smtpmsg='250 2\.0\.0 Ok: queued' exitcode=EX_OK",
        line,
    ), line
    assert wakeups(daemon) == []  # nothing left for the daemon
    check_consistent()


def test_generated_headers_are_sent_as_stored(server: UpstreamServer) -> None:
    msmtprc(server.port)
    result = odi(stdin=b"Subject: bare\n\nbody\n")
    assert result.returncode == 0, result.stderr
    (got,) = server.transactions
    (stored,) = stored_messages()
    assert got.data == stored.data
    assert got.data.startswith(b"From: me@example.org\r\nDate: ")
    assert got.data.endswith(b"\r\nSubject: bare\r\n\r\nbody\r\n")


def test_tls_and_auth_are_recorded(tmp_path: Path) -> None:
    with UpstreamServer(tls="starttls", features=Features(auth=("PLAIN",)), users=USERS) as up:
        assert up.certificates is not None
        msmtprc(
            up.port,
            "tls on",
            f"tls_trust_file {up.certificates.ca_file}",
            "auth on",
            "user user",
            f"password {PASSWORD}",
        )
        result = odi()
        assert result.returncode == 0, result.stderr
        assert up.auth_attempts[0].success
    (attempt,) = attempt_rows()
    assert (attempt.tls, attempt.auth, attempt.exit_code) == (True, True, 0)
    (line,) = log_lines()
    assert " tls=on auth=on user=user from=me@example.org " in line


# -- temporary failures: the message stays queued -------------------------------------------------


def test_451_at_rcpt_stays_queued(server: UpstreamServer, daemon: socket.socket) -> None:
    msmtprc(server.port)
    server.fail("RCPT", Fault("451 4.3.0 try again later"))
    result = odi(recipients=(R1, R2))
    assert (result.returncode, result.stdout) == (0, b"")
    (stored,) = stored_messages()
    assert stored.state == "queued"
    assert stderr_lines(result) == [
        *failure_report(
            f"recipient address {R1} not accepted by the server", "451 4.3.0 try again later"
        ),
        f"{PROG}: message {stored.queue_id} stays queued; relayd will retry it",
    ]
    assert stored.recipients == [(R1, "pending"), (R2, "pending")]
    assert server.transactions == []
    row = message_row()
    assert row["attempts"] == 1
    assert row["reason"] == f"recipient address {R1} not accepted by the server"
    # [retry] first = 60 s after this first attempt; no lease left behind
    assert row["created_at"] + 60 <= row["next_attempt_at"] <= row["created_at"] + 90
    assert (row["lease_until"], row["lease_owner"]) == (None, None)
    (attempt,) = attempt_rows()
    assert (attempt.exit_code, attempt.reply_code, attempt.reply) == (
        69,
        451,
        "4.3.0 try again later",
    )
    assert [r["state"] for r in attempt.recipients] == ["pending", "pending"]
    (line,) = log_lines()
    assert line.endswith(
        f"recipients={R1},{R2} smtpstatus=451 smtpmsg='451 4.3.0 try again later' "
        f"errormsg='recipient address {R1} not accepted by the server' exitcode=EX_UNAVAILABLE"
    )
    assert wakeups(daemon) == [b"wake"]  # the daemon takes over the retry
    check_consistent()


def test_connection_refused_stays_queued(daemon: socket.socket) -> None:
    port = closed_port()
    msmtprc(port)
    result = odi()
    assert (result.returncode, result.stdout) == (0, b"")
    (stored,) = stored_messages()
    assert stored.state == "queued"
    assert stderr_lines(result) == [
        *failure_report(f"cannot connect to 127.0.0.1, port {port}: Connection refused"),
        f"{PROG}: message {stored.queue_id} stays queued; relayd will retry it",
    ]
    (attempt,) = attempt_rows()
    assert (attempt.exit_code, attempt.reply_code) == (75, None)  # what msmtp would exit with
    assert attempt.reply == f"cannot connect to 127.0.0.1, port {port}: Connection refused"
    (line,) = log_lines()
    assert line.endswith(
        f"errormsg='cannot connect to 127.0.0.1, port {port}: Connection refused' "
        "exitcode=EX_TEMPFAIL"
    )
    assert wakeups(daemon) == [b"wake"]


def test_drop_after_the_dot_stays_queued(server: UpstreamServer) -> None:
    msmtprc(server.port)
    server.fail("END", Fault(drop=True))
    result = odi()
    assert result.returncode == 0, result.stderr
    assert len(server.transactions) == 1  # the server may have it: at-least-once
    (stored,) = stored_messages()
    assert stored.state == "queued"
    assert stderr_lines(result)[0] == f"{PROG}: the server sent an empty reply"


# -- permanent failures ----------------------------------------------------------------------------


def test_550_at_mail_fails_with_65(server: UpstreamServer, daemon: socket.socket) -> None:
    msmtprc(server.port)
    server.fail("MAIL", Fault("550 5.7.1 sender refused"))
    result = odi(recipients=(R1, R2))
    assert (result.returncode, result.stdout) == (65, b"")
    error = "envelope from address me@example.org not accepted by the server"
    assert stderr_lines(result) == failure_report(error, "550 5.7.1 sender refused")
    (stored,) = stored_messages()
    assert (stored.state, stored.recipients) == ("failed", [(R1, "failed"), (R2, "failed")])
    row = message_row()
    assert (row["attempts"], row["reason"], row["next_attempt_at"]) == (1, error, None)
    (attempt,) = attempt_rows()
    assert (attempt.exit_code, attempt.reply_code) == (65, 550)
    (line,) = log_lines()
    assert line.endswith(f"errormsg='{error}' exitcode=EX_DATAERR")
    assert wakeups(daemon) == []
    assert stored.data == WIRE  # a failed message keeps its body (retention decides)


def test_550_to_one_of_two_recipients_delivers_the_other(server: UpstreamServer) -> None:
    msmtprc(server.port)
    server.fail("RCPT", Fault("550 5.1.1 no such user"), address=R2)
    result = odi(recipients=(R1, R2))
    assert result.returncode == 65  # msmtp's code for a refused recipient (EX_DATAERR)
    error = f"recipient address {R2} not accepted by the server"
    assert stderr_lines(result) == failure_report(error, "550 5.1.1 no such user")
    (got,) = server.transactions
    assert (got.rcpt_tos, got.data) == ((R1,), WIRE)
    (stored,) = stored_messages()
    assert (stored.state, stored.recipients) == ("failed", [(R1, "sent"), (R2, "failed")])
    assert recipient_rows() == [
        (R1, "sent", 250, "2.0.0 Ok: queued"),
        (R2, "failed", 550, "5.1.1 no such user"),
    ]
    assert message_row()["reason"] == error
    (attempt,) = attempt_rows()
    assert [(r["address"], r["state"], r["code"]) for r in attempt.recipients] == [
        (R1, "sent", 250),
        (R2, "failed", 550),
    ]
    assert attempt.exit_code == 65


def test_554_after_the_dot_fails_with_69(server: UpstreamServer) -> None:
    msmtprc(server.port)
    server.fail("END", Fault("554 5.7.1 rejected as spam"))
    result = odi()
    assert result.returncode == 69
    assert stderr_lines(result) == failure_report(
        "the server did not accept the mail", "554 5.7.1 rejected as spam"
    )
    assert stored_messages()[0].state == "failed"


# -- held: only the user can fix it ------------------------------------------------------------


def held_note(queue_id: str) -> str:
    return (
        f"{PROG}: message {queue_id} is held; fix the problem, then: "
        f"relayd queue release {queue_id}"
    )


def test_auth_rejected_is_held_with_77(daemon: socket.socket) -> None:
    with UpstreamServer(features=Features(auth=("CRAM-MD5",)), users=USERS) as up:
        msmtprc(up.port, "auth cram-md5", "user user", "password wrong-one")
        result = odi()
        commands = up.commands
    assert (result.returncode, result.stdout) == (77, b"")
    (stored,) = stored_messages()
    error = "authentication failed (method CRAM-MD5)"
    assert stderr_lines(result) == [
        *failure_report(error, "535 5.7.8 Authentication credentials invalid"),
        held_note(stored.queue_id),
    ]
    assert (stored.state, stored.recipients) == ("held", [(R1, "pending")])
    row = message_row()
    assert (row["reason"], row["attempts"]) == (error, 1)
    assert (row["lease_until"], row["lease_owner"]) == (None, None)
    (attempt,) = attempt_rows()
    assert (attempt.exit_code, attempt.reply_code, attempt.auth) == (77, 535, True)
    (line,) = log_lines()
    assert line.endswith(f"errormsg='{error}' exitcode=EX_NOPERM")
    assert not any(c.startswith("MAIL") for c in commands)
    assert wakeups(daemon) == []  # the daemon could not do better


def test_starttls_required_but_not_offered_is_held_with_69(server: UpstreamServer) -> None:
    ca = Path(os.environ["HOME"], "ca.pem")
    trustme.CA().cert_pem.write_to_path(str(ca))
    msmtprc(server.port, "tls on", f"tls_trust_file {ca}")
    result = odi()
    assert result.returncode == 69
    (stored,) = stored_messages()
    error = "the server does not support TLS via the STARTTLS command"
    assert stderr_lines(result) == [*failure_report(error), held_note(stored.queue_id)]
    assert (stored.state, message_row()["reason"]) == ("held", error)
    # never on in plaintext
    assert server.commands == ["CONNECT", "EHLO localhost", "QUIT"]
    assert attempt_rows()[0].exit_code == 69


def test_certificate_from_another_ca_is_held_with_69() -> None:
    with UpstreamServer(tls="starttls") as up:
        other = Path(os.environ["HOME"], "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(str(other))
        msmtprc(up.port, "tls on", f"tls_trust_file {other}")
        result = odi()
        commands = up.commands
    assert result.returncode == 69
    (stored,) = stored_messages()
    error = (
        "TLS certificate verification failed: The certificate is NOT trusted. "
        "The certificate issuer is unknown. "
    )
    assert stderr_lines(result) == [*failure_report(error), held_note(stored.queue_id)]
    assert (stored.state, message_row()["reason"]) == ("held", error)
    assert commands[-1] == "STARTTLS"  # nothing after the failed handshake
    assert attempt_rows()[0].tls


def test_dsn_without_server_support_is_held(server: UpstreamServer) -> None:
    msmtprc(server.port, "dsn_notify failure", "dsn_return headers")
    result = odi()
    assert result.returncode == 69
    assert stored_messages()[0].state == "held"
    assert message_row()["reason"] == "the server does not support DSN"


# -- -d: the dialogue, AUTH masked -------------------------------------------------------------


def test_debug_prints_the_dialogue(server: UpstreamServer) -> None:
    msmtprc(server.port)
    result = odi("-d")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    (stored,) = stored_messages()
    assert f"queued as {stored.queue_id}" in out
    dialogue = [line for line in out if line.startswith(("--> ", "<-- "))]
    assert dialogue[:2] == ["<-- 220 upstream.test Python SMTP 1.4.6", "--> EHLO localhost"]
    start = dialogue.index("--> MAIL FROM:<me@example.org> BODY=8BITMIME")
    assert dialogue[start : start + 6] == [
        "--> MAIL FROM:<me@example.org> BODY=8BITMIME",
        "<-- 250 2.1.0 Ok",
        f"--> RCPT TO:<{R1}>",
        "<-- 250 2.1.5 Ok",
        "--> DATA",
        "<-- 354 End data with <CR><LF>.<CR><LF>",
    ]
    body = dialogue[start + 6 :]
    assert body[:2] == ["--> From: Me <me@example.org>", "--> To: a@y.test"]
    assert "--> ..leading dot" in body  # dot-stuffed, as on the wire
    assert "--> ...two dots" in body
    assert body[-4:] == ["--> .", "<-- 250 2.0.0 Ok: queued", "--> QUIT", "<-- 221 Bye"]


def _secrets_in(text: bytes) -> list[str]:
    """Where the password shows up in `text`: verbatim, or inside any base64 token."""
    found = []
    if PASSWORD.encode() in text:
        found.append("verbatim")
    for token in re.findall(rb"[A-Za-z0-9+/=]{12,}", text):
        try:
            decoded = base64.b64decode(token + b"=" * (-len(token) % 4))
        except ValueError:
            continue
        if PASSWORD.encode() in decoded:
            found.append(f"base64 {token.decode()}")
    return found


MECHANISMS = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "XOAUTH2",
    "OAUTHBEARER",
]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_debug_masks_the_auth_exchange(mechanism: str) -> None:
    with UpstreamServer(tls="starttls", features=Features(auth=(mechanism,)), users=USERS) as up:
        assert up.certificates is not None
        msmtprc(
            up.port,
            "tls on",
            f"tls_trust_file {up.certificates.ca_file}",
            f"auth {mechanism.lower()}",
            "user user",
            f"password {PASSWORD}",
        )
        result = odi("-d")
        assert up.auth_attempts[-1].success
    assert result.returncode == 0, result.stderr
    dialogue = [
        line for line in result.stdout.decode().splitlines() if line.startswith(("--> ", "<-- "))
    ]
    start = next(i for i, line in enumerate(dialogue) if line.startswith("--> AUTH "))
    end = dialogue.index("<-- 235 2.7.0 Authentication successful")
    assert dialogue[start] in (f"--> AUTH {mechanism}", f"--> AUTH {mechanism} ********")
    sent = [line for line in dialogue[start + 1 : end] if line.startswith("--> ")]
    assert all(line == "--> ********" for line in sent), sent
    assert dialogue[start].endswith(" ********") or sent  # the credentials went, masked
    assert _secrets_in(result.stdout + result.stderr) == []
    assert _secrets_in(logfile().read_bytes()) == []


# -- never a password in the queue or the logs ------------------------------------------------


def _queue_bytes() -> bytes:
    db = queue_db()
    return b"".join(
        Path(f"{db}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-journal")
        if Path(f"{db}{suffix}").exists()
    )


def test_no_password_in_the_queue_or_the_logs(tmp_path: Path) -> None:
    secret_file = tmp_path / "password.txt"
    secret_file.write_text(PASSWORD + "\n")
    with UpstreamServer(tls="starttls", features=Features(auth=("PLAIN",)), users=USERS) as up:
        assert up.certificates is not None
        tls = ["tls on", f"tls_trust_file {up.certificates.ca_file}", "auth plain", "user user"]
        outputs = []
        msmtprc(up.port, *tls, f"password {PASSWORD}")
        outputs.append(odi("-d"))  # sent
        msmtprc(up.port, *tls, f"passwordeval cat {secret_file}")
        outputs.append(odi("-d"))  # sent, password from a command
        up.fail("MAIL", Fault("451 4.3.0 later"))
        outputs.append(odi("-d"))  # queued after a successful AUTH
        up.clear_faults()
        msmtprc(up.port, *tls, f"password {PASSWORD}-but-wrong")
        outputs.append(odi("-d"))  # held: the server rejected it
    # the checker itself finds what msmtp -d would print for AUTH PLAIN
    assert _secrets_in(b"--> AUTH PLAIN " + base64.b64encode(b"\0user\0" + PASSWORD.encode()))
    assert [r.returncode for r in outputs] == [0, 0, 0, 77]
    assert [m.state for m in stored_messages()] == ["sent", "sent", "queued", "held"]
    assert len(attempt_rows()) == 4 and len(log_lines()) == 4
    for result in outputs:
        assert _secrets_in(result.stdout + result.stderr) == []
    assert _secrets_in(logfile().read_bytes()) == []
    assert _secrets_in(_queue_bytes()) == []


# -- --serverinfo ------------------------------------------------------------------------------


def _header(port: int, protocol: str = "SMTP") -> str:
    """The first line, with the name 127.0.0.1 resolves to as msmtp looks it up."""
    try:
        name = socket.gethostbyaddr("127.0.0.1")[0]
    except OSError:
        return f"{protocol} server at 127.0.0.1 ([127.0.0.1]), port {port}:"
    return f"{protocol} server at 127.0.0.1 ({name} [127.0.0.1]), port {port}:"


RICH = Features(size=10485760, pipelining=True, etrn=True, dsn=True, auth=("PLAIN", "CRAM-MD5"))
RICH_LINES = [
    "Capabilities:",
    "    SIZE 10485760:",
    "        Maximum message size is 10485760 bytes = 10.00 MiB",
    "    PIPELINING:",
    "        Support for command grouping for faster transmission",
    "    ETRN:",
    "        Support for RMQS (Remote Message Queue Starting)",
    "    DSN:",
    "        Support for Delivery Status Notifications",
]


def test_serverinfo_plain() -> None:
    with UpstreamServer(features=RICH) as up:
        msmtprc(up.port)
        result = sendmail("--serverinfo")
        commands = up.commands
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode().splitlines() == [
        _header(up.port),
        "    upstream.test Python SMTP 1.4.6",
        *RICH_LINES,
        "    AUTH:",
        "        Supported authentication methods:",
        "        PLAIN CRAM-MD5 ",
    ]
    assert commands == ["CONNECT", "EHLO localhost", "QUIT"]  # no AUTH, no mail
    assert row_counts() == (0, 0)
    assert log_lines() == []


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "implicit"])
def test_serverinfo_tls(starttls: bool) -> None:
    mode: TlsMode = "starttls" if starttls else "implicit"
    with UpstreamServer(features=RICH, tls=mode) as up:
        certs = up.certificates
        assert certs is not None
        msmtprc(
            up.port,
            "tls on",
            f"tls_starttls {'on' if starttls else 'off'}",
            f"tls_trust_file {certs.ca_file}",
        )
        result = run_sendmail(["--serverinfo"], b"", env=sendmail_env(TZ="UTC"), timeout=30)
    assert (result.returncode, result.stderr) == (0, b"")
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == [
        _header(up.port),
        "    upstream.test Python SMTP 1.4.6",
        "TLS session parameters:",
    ]
    assert re.fullmatch(r"    \(TLS1\.[23]\)-(\([A-Z0-9-]+\)-)*\([A-Z0-9-]+\)", lines[3]), lines[3]
    assert lines[4:16] == [
        "TLS certificate information:",
        "    Subject:",
        lines[6],
        "    Issuer:",
        lines[8],
        "    Validity:",
        "        Activation time: Sat Jan  1 00:00:00 2000",
        "        Expiration time: Wed Jan  1 00:00:00 3000",
        "    Fingerprints:",
        f"        SHA256: {certs.fingerprint('sha256')}",
        f"        SHA1 (deprecated): {certs.fingerprint('sha1')}",
        "Capabilities:",
    ]
    assert lines[6].startswith("        O=trustme") and "Testing cert" in lines[6]
    assert lines[8].startswith("        O=trustme") and "Testing CA" in lines[8]
    starttls_lines = (
        ["    STARTTLS:", "        Support for TLS encryption via the STARTTLS command"]
        if starttls
        else []
    )
    assert lines[15:] == [
        *RICH_LINES,
        *starttls_lines,
        "    AUTH:",
        "        Supported authentication methods:",
        "        PLAIN CRAM-MD5 ",
    ]


def test_serverinfo_failure_has_no_trailer(server: UpstreamServer) -> None:
    server.fail("GREETING", Fault("554 5.7.1 go away"))
    msmtprc(server.port)
    result = sendmail("--serverinfo")
    assert (result.returncode, result.stdout) == (76, b"")
    assert stderr_lines(result) == [
        f"{PROG}: cannot get initial OK message from server",
        f"{PROG}: server message: 554 5.7.1 go away",
    ]
    assert log_lines() == []


# -- --rmqs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["@example.org", "mx.example.org", "#queue"])
def test_rmqs_sends_etrn(argument: str) -> None:
    with UpstreamServer(features=Features(etrn=True)) as up:
        msmtprc(up.port)
        result = sendmail(f"--rmqs={argument}")
        commands = up.commands
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert commands == ["CONNECT", "EHLO localhost", f"ETRN {argument}", "QUIT"]
    assert row_counts() == (0, 0)


def test_rmqs_debug_shows_the_etrn_exchange() -> None:
    with UpstreamServer(features=Features(etrn=True)) as up:
        msmtprc(up.port)
        result = sendmail("-d", "--rmqs=@example.org")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    at = out.index("--> ETRN @example.org")
    assert out[at + 1] == "<-- 250 2.0.0 Queuing started"


def test_rmqs_refused() -> None:
    with UpstreamServer(features=Features(etrn=True)) as up:
        up.fail("ETRN", Fault("458 4.0.0 unable to queue messages for node"))
        msmtprc(up.port)
        result = sendmail("--rmqs=@example.org")
    assert (result.returncode, result.stdout) == (69, b"")
    assert stderr_lines(result) == [
        f"{PROG}: the server is unable to fulfill the request",
        f"{PROG}: server message: 458 4.0.0 unable to queue messages for node",
    ]


def test_rmqs_not_offered(server: UpstreamServer) -> None:
    msmtprc(server.port)
    result = sendmail("--rmqs=@example.org")
    assert (result.returncode, result.stdout) == (69, b"")
    assert stderr_lines(result) == [
        f"{PROG}: the server does not support Remote Message Queue Starting"
    ]
    assert not any(c.startswith("ETRN") for c in server.commands)
