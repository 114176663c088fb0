"""Debian's msmtp 1.8.23 and `relayd-sendmail -odi` side by side (issue 4, item 8).

For every scenario both programs run with the same msmtprc (`-C`), the same recipients and the
same message against the same fault-injecting server (tests/upstream.py on 127.0.0.1), msmtp
first, and the tests compare what they did:

* the exit code: the same, except for a temporary failure, where relayd keeps the message
  queued and exits 0 (SPEC §1.1 `-odi`);
* stderr: msmtp's lines (program name normalized) are exactly relayd's, apart from relayd's
  one note on what becomes of the message (`stays queued` / `is held`);
* the logfile line without its time stamp: identical, `exitcode=EX_…` included (SPEC §4: the
  code logged is msmtp's code for the same event);
* the transactions the server recorded: envelope and bytes identical;
* relayd's queue: the message's state, reason and each recipient's state.

`SCENARIOS` documents msmtp's exit code for each case and, where relayd differs on purpose,
why (`note`); a difference that is a relayd bug is marked `bug` (strict xfail). `--serverinfo`
and `--rmqs` are compared at the end.

The scenarios run once, in parallel threads, in the module fixture `outcomes` (each with its
own server, HOME, msmtprc and queue); the test functions only inspect the results. Without
msmtp 1.8.23 the module skips, unless RELAYD_REQUIRE_MSMTP=1: then it fails.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme

from relayd.sysexits import ExitCode
from tests.sendmail_helpers import SENDMAIL, Stored, stored_messages
from tests.test_serverinfo import msmtp_path
from tests.upstream import Fault, Features, Stage, TlsMode, Transaction, UpstreamServer

PROG = "relayd-sendmail"
RUN_TIMEOUT = 20  # seconds for one msmtp or relayd-sendmail run
SERVER_TIMEOUT = 10
WORKERS = 6

# -- the corpus ------------------------------------------------------------------------------------

# Messages with their own From, Date and Message-ID: neither program adds a header, so the bytes
# on the wire compare as they are (only the empty message gets generated headers).
HEAD = (
    b"From: Me <me@example.org>\n"
    b"To: a@y.test\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    b"Message-ID: <fixed.1@example.org>\n"
)
PLAIN = HEAD + b"Subject: plain\n\nHello.\n"
CORPUS: dict[str, bytes] = {
    "crlf": PLAIN.replace(b"\n", b"\r\n"),
    "bare-lf": HEAD + b"Subject: bare LF\n\nline one\nline two\n\nline four\n",
    "mixed-line-ends": HEAD + b"Subject: mixed\r\n\r\ncrlf\r\nlf\ncr\ralone\r\n\n",
    "long-lines": HEAD + b"Subject: long\n\n" + b"x" * 2500 + b"\n" + b"y" * 2500 + b"\n",
    "8bit": HEAD + "Subject: caf\u00e9\n\n\u00e7a va, \u00fcber \u20ac\n".encode() + b"\xe9\xff\n",
    "dots": HEAD + b"Subject: dots\n\n.\n..\n.x\n...\n. \nmid.dle\n.\n",
    "empty": b"",
    "no-final-newline": HEAD + b"Subject: no newline\n\nlast line",
    "headers-only": HEAD + b"Subject: headers only\n",
}
# What both programs generate for the empty message; normalized before comparing.
_GENERATED = re.compile(rb"^(Date|Message-ID): [^\r\n]*\r\n", re.MULTILINE)

# -- the scenarios ---------------------------------------------------------------------------------

Kind = Literal["sent", "same", "temporary"]
FaultAt = tuple[Stage, Fault, "str | None"]
BAD_PIN = ":".join(["AB"] * 32)
USER = ("user user", "password secret")
R1, R2, R3 = "a@y.test", "b@y.test", "c@y.test"
UTF8_RCPT = "j\u00f6rg@ex\u00e4mple.test"


@dataclass(frozen=True)
class Scenario:
    """One case. `rc` lines may use {ca} (the server's CA), {other_ca} (an unrelated CA),
    {sha256}/{sha1} (the server certificate's fingerprints), {cert}/{key} (a client one).

    `kind`: `sent` (both exit 0), `same` (the same non-zero exit code), or `temporary` (msmtp
    exits `msmtp`, relayd exits 0 and keeps the message queued).
    """

    id: str
    kind: Kind
    msmtp: int | tuple[int, ...]  # msmtp's exit code (a tuple: any of these, timing decides)
    state: str  # relayd's message state afterwards
    rc: tuple[str, ...] = ()
    features: Features = field(default_factory=Features)
    tls: TlsMode | None = None
    lmtp: bool = False
    closed_port: bool = False  # nothing listens on the port in the msmtprc
    faults: tuple[FaultAt, ...] = ()
    recipients: tuple[str, ...] = (R1,)
    data: bytes = PLAIN
    recipient_states: tuple[str, ...] | None = None  # None: all as `state` implies
    text: bool = True  # msmtp's stderr and log line are relayd's
    wire: bool = True  # the server recorded the same transactions from both
    mail_params: str | None = None  # relayd's MAIL parameters where they differ by design
    note: str = ""  # where relayd differs from msmtp on purpose, and why
    bug: str = ""  # a difference that is a relayd bug: the text checks are a strict xfail


def codes(scenario: Scenario) -> tuple[int, ...]:
    """The exit codes msmtp may give in this scenario."""
    return scenario.msmtp if isinstance(scenario.msmtp, tuple) else (scenario.msmtp,)


def corpus(name: str) -> Scenario:
    return Scenario(f"corpus-{name}", "sent", 0, "sent", data=CORPUS[name])


SCENARIOS: list[Scenario] = [
    # -- successes: the same envelope and bytes ----------------------------------------------------
    *(corpus(name) for name in CORPUS if name != "8bit"),
    replace(
        corpus("8bit"),
        mail_params="BODY=8BITMIME",
        note="relayd declares 8-bit data with BODY=8BITMIME when the server offers 8BITMIME "
        "(issue 4, item 4); msmtp never does. The bytes are the same.",
    ),
    Scenario(
        "two-recipients-pipelining",
        "sent",
        0,
        "sent",
        features=Features(pipelining=True),
        recipients=(R1, R2),
    ),
    Scenario("helo-fallback", "sent", 0, "sent", faults=(("EHLO", Fault("502 5.5.2 no"), None),)),
    Scenario("starttls", "sent", 0, "sent", tls="starttls", rc=("tls on", "tls_trust_file {ca}")),
    Scenario(
        "implicit-tls",
        "sent",
        0,
        "sent",
        tls="implicit",
        rc=("tls on", "tls_starttls off", "tls_trust_file {ca}"),
    ),
    Scenario(
        "fingerprint-sha256",
        "sent",
        0,
        "sent",
        tls="starttls",
        rc=("tls on", "tls_fingerprint {sha256}"),
    ),
    Scenario(
        "fingerprint-sha1",
        "sent",
        0,
        "sent",
        tls="implicit",
        rc=("tls on", "tls_starttls off", "tls_fingerprint {sha1}"),
    ),
    Scenario(
        "auth-plain-starttls",
        "sent",
        0,
        "sent",
        tls="starttls",
        features=Features(auth=("PLAIN",)),
        rc=("tls on", "tls_trust_file {ca}", "auth plain", *USER),
    ),
    Scenario(
        "auth-login-implicit-tls",
        "sent",
        0,
        "sent",
        tls="implicit",
        features=Features(auth=("LOGIN",)),
        rc=("tls on", "tls_starttls off", "tls_trust_file {ca}", "auth login", *USER),
    ),
    Scenario(
        "auth-cram-md5-without-tls",
        "sent",
        0,
        "sent",
        features=Features(auth=("CRAM-MD5",)),
        rc=("auth cram-md5", *USER),
    ),
    Scenario(
        "auth-scram-sha-1-without-tls",
        "sent",
        0,
        "sent",
        features=Features(auth=("SCRAM-SHA-1",)),
        rc=("auth scram-sha-1", *USER),
    ),
    Scenario(
        "auth-scram-sha-256-starttls",
        "sent",
        0,
        "sent",
        tls="starttls",
        features=Features(auth=("SCRAM-SHA-256",)),
        rc=("tls on", "tls_trust_file {ca}", "auth scram-sha-256", *USER),
    ),
    Scenario(
        "auth-automatic-choice",
        "sent",
        0,
        "sent",
        tls="starttls",
        features=Features(auth=("LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256")),
        rc=("tls on", "tls_trust_file {ca}", "auth on", *USER),
    ),
    Scenario(
        "auth-plain-chosen-explicitly-without-tls",
        "sent",
        0,
        "sent",
        features=Features(auth=("PLAIN",)),
        rc=("auth plain", *USER),
        note="as msmtp: only the automatic choice refuses a plaintext method without TLS",
    ),
    Scenario(
        "auth-oauthbearer",
        "sent",
        0,
        "sent",
        tls="starttls",
        features=Features(auth=("OAUTHBEARER",)),
        rc=("tls on", "tls_trust_file {ca}", "auth oauthbearer", *USER),
    ),
    Scenario(
        "auth-xoauth2",
        "sent",
        0,
        "sent",
        tls="implicit",
        features=Features(auth=("XOAUTH2",)),
        rc=("tls on", "tls_starttls off", "tls_trust_file {ca}", "auth xoauth2", *USER),
    ),
    Scenario(
        "auth-external-client-certificate",
        "sent",
        0,
        "sent",
        tls="implicit",
        features=Features(auth=("EXTERNAL",)),
        rc=(
            "tls on",
            "tls_starttls off",
            "tls_trust_file {ca}",
            "tls_cert_file {cert}",
            "tls_key_file {key}",
            "auth external",
            # with an empty authorization identity Debian's msmtp (GNU SASL) leaves the
            # server's `334` unanswered and sends MAIL: give it one
            "user user",
        ),
    ),
    Scenario(
        "dsn-offered",
        "sent",
        0,
        "sent",
        features=Features(dsn=True),
        rc=("dsn_notify failure,delay", "dsn_return headers"),
        recipients=(R1, R2),
    ),
    Scenario(
        "lmtp",
        "sent",
        0,
        "sent",
        lmtp=True,
        rc=("protocol lmtp",),
        recipients=(R1, R2),
    ),
    Scenario(
        "smtputf8-address",
        "sent",
        0,
        "sent",
        recipients=(UTF8_RCPT,),
        mail_params="SMTPUTF8",
        note="relayd asks for SMTPUTF8 when an address needs it (issue 4, item 4); msmtp sends "
        "the UTF-8 address without it",
    ),
    # -- a refusal at each stage -------------------------------------------------------------------
    Scenario(
        "connection-refused",
        "temporary",
        75,
        "queued",
        closed_port=True,
        note="msmtp gives up with 75; relayd keeps the message for the daemon",
    ),
    Scenario(
        "greeting-421",
        "temporary",
        76,
        "queued",
        faults=(("GREETING", Fault("421 4.3.2 try later"), None),),
    ),
    Scenario(
        "greeting-554",
        "temporary",
        76,
        "queued",
        faults=(("GREETING", Fault("554 5.7.1 go away"), None),),
    ),
    Scenario(
        "greeting-dropped",
        "temporary",
        76,
        "queued",
        faults=(("GREETING", Fault(drop=True), None),),
    ),
    Scenario(
        "ehlo-and-helo-refused",
        "temporary",
        76,
        "queued",
        faults=(("EHLO", Fault("502 5.5.2 no"), None), ("HELO", Fault("502 5.5.2 no"), None)),
    ),
    Scenario(
        "ehlo-reply-too-long",
        "temporary",
        76,
        "queued",
        features=Features(extra=tuple(f"X-LINE-{i}" for i in range(60))),
    ),
    Scenario(
        "mail-451", "temporary", 69, "queued", faults=(("MAIL", Fault("451 4.3.0 later"), None),)
    ),
    Scenario(
        "mail-550",
        "same",
        65,
        "failed",
        faults=(("MAIL", Fault("550 5.7.1 sender refused"), None),),
    ),
    Scenario(
        "rcpt-451",
        "temporary",
        69,
        "queued",
        faults=(("RCPT", Fault("451 4.3.0 later"), None),),
        recipients=(R1, R2),
        wire=False,
        note="msmtp stops at the first refused RCPT; relayd asks for every recipient",
    ),
    Scenario(
        "rcpt-550", "same", 65, "failed", faults=(("RCPT", Fault("550 5.1.1 no such user"), None),)
    ),
    Scenario(
        "rcpt-550-one-of-two",
        "same",
        65,
        "failed",
        faults=(("RCPT", Fault("550 5.1.1 no such user"), R2),),
        recipients=(R1, R2),
        recipient_states=("sent", "failed"),
        wire=False,
        note="msmtp sends nothing; relayd delivers to the recipient the server accepted and "
        "fails only the refused one (SPEC §4)",
    ),
    Scenario(
        "rcpt-550-one-of-two-pipelining",
        "same",
        65,
        "failed",
        features=Features(pipelining=True),
        faults=(("RCPT", Fault("550 5.1.1 no such user"), R1),),
        recipients=(R1, R2),
        recipient_states=("failed", "sent"),
        wire=False,
        note="as rcpt-550-one-of-two",
    ),
    Scenario(
        "data-451", "temporary", 69, "queued", faults=(("DATA", Fault("451 4.3.0 later"), None),)
    ),
    Scenario("data-554", "same", 65, "failed", faults=(("DATA", Fault("554 5.5.1 no"), None),)),
    Scenario(
        "after-dot-452",
        "temporary",
        69,
        "queued",
        faults=(("END", Fault("452 4.3.1 full"), None),),
    ),
    Scenario(
        "after-dot-554", "same", 69, "failed", faults=(("END", Fault("554 5.7.1 spam"), None),)
    ),
    Scenario("drop-at-mail", "temporary", 76, "queued", faults=(("MAIL", Fault(drop=True), None),)),
    Scenario(
        "drop-before-dot",
        "temporary",
        (74, 76),
        "queued",
        faults=(("BODY", Fault(drop=True), None),),
        data=HEAD + b"Subject: big\n\n" + (b"z" * 998 + b"\n") * 400,
        text=False,
        note="whether a write or a read notices the drop first, and with which errno, depends on "
        "timing, for msmtp as for relayd",
    ),
    Scenario(
        "drop-after-dot", "temporary", 76, "queued", faults=(("END", Fault(drop=True), None),)
    ),
    Scenario(
        "read-timeout",
        "temporary",
        74,
        "queued",
        rc=("timeout 1",),
        faults=(("MAIL", Fault(delay=3.0), None),),
    ),
    # -- TLS ---------------------------------------------------------------------------------------
    Scenario(
        "starttls-not-offered", "same", 69, "held", rc=("tls on", "tls_trust_file {other_ca}")
    ),
    Scenario(
        "starttls-refused-454",
        "temporary",
        76,
        "queued",
        tls="starttls",
        rc=("tls on", "tls_trust_file {ca}"),
        faults=(("STARTTLS", Fault("454 4.7.0 TLS not available now"), None),),
    ),
    Scenario(
        "wrong-ca", "same", 69, "held", tls="starttls", rc=("tls on", "tls_trust_file {other_ca}")
    ),
    Scenario(
        "wrong-host-name",
        "same",
        69,
        "held",
        tls="implicit",
        rc=("tls on", "tls_starttls off", "tls_trust_file {ca}", "tls_host_override x.test"),
    ),
    Scenario(
        "fingerprint-wrong",
        "same",
        69,
        "held",
        tls="starttls",
        rc=("tls on", f"tls_fingerprint {BAD_PIN}"),
    ),
    Scenario(
        "implicit-tls-to-plain-server",
        "temporary",
        76,
        "queued",
        rc=("tls on", "tls_starttls off", "tls_certcheck off", "timeout 5"),
    ),
    # -- AUTH --------------------------------------------------------------------------------------
    Scenario(
        "auth-rejected",
        "same",
        77,
        "held",
        features=Features(auth=("CRAM-MD5",)),
        rc=("auth cram-md5", "user user", "password wrong"),
    ),
    Scenario(
        "auth-rejected-tls-automatic",
        "same",
        77,
        "held",
        tls="starttls",
        features=Features(auth=("PLAIN",)),
        rc=("tls on", "tls_trust_file {ca}", "auth on", "user user", "password wrong"),
    ),
    Scenario(
        "auth-454",
        "temporary",
        77,
        "queued",
        features=Features(auth=("CRAM-MD5",)),
        faults=(("AUTH", Fault("454 4.7.0 try later"), None),),
        rc=("auth cram-md5", *USER),
        note="a 4xx to AUTH is temporary: retried, not held",
    ),
    Scenario("auth-not-offered", "same", 69, "held", rc=("auth on", *USER)),
    Scenario(
        "auth-method-not-offered",
        "same",
        69,
        "held",
        features=Features(auth=("LOGIN",)),
        rc=("auth cram-md5", *USER),
    ),
    Scenario(
        "auth-no-secure-method-without-tls",
        "same",
        69,
        "held",
        features=Features(auth=("PLAIN", "LOGIN")),
        rc=("auth on", *USER),
    ),
    # -- ESMTP and LMTP ----------------------------------------------------------------------------
    Scenario(
        "size-exceeded",
        "same",
        69,
        "failed",
        features=Features(size=1000),
        data=HEAD + b"Subject: big\n\n" + b"x" * 2000 + b"\n",
        text=False,
        wire=False,
        note="msmtp sends the mail and learns from the 552 after the dot; relayd compares the "
        "size with the server's SIZE first and fails without sending: the same exit code, "
        "relayd's own text",
    ),
    Scenario(
        "smtputf8-needed-not-offered",
        "same",
        65,
        "failed",
        features=Features(smtputf8=False),
        recipients=(UTF8_RCPT,),
        text=False,
        wire=False,
        note="msmtp sends the UTF-8 address and gets a 500 to RCPT; relayd sees the server "
        "lacks SMTPUTF8 and fails before MAIL: the same exit code, relayd's own text",
    ),
    Scenario("dsn-not-offered", "same", 69, "held", rc=("dsn_notify failure", "dsn_return full")),
    Scenario(
        "lmtp-one-recipient-refused",
        "same",
        69,
        "failed",
        lmtp=True,
        rc=("protocol lmtp",),
        faults=(("END", Fault("552 5.2.2 mailbox full"), R2),),
        recipients=(R1, R2),
        recipient_states=("sent", "failed"),
    ),
    Scenario(
        "lmtp-two-of-three-refused",
        "same",
        69,
        "failed",
        lmtp=True,
        rc=("protocol lmtp",),
        faults=(
            ("END", Fault("552 5.2.2 mailbox full"), R1),
            ("END", Fault("550 5.1.1 gone"), R3),
        ),
        recipients=(R1, R2, R3),
        recipient_states=("failed", "sent", "failed"),
    ),
    Scenario(
        "lmtp-one-recipient-452",
        "temporary",
        69,
        "queued",
        lmtp=True,
        rc=("protocol lmtp",),
        faults=(("END", Fault("452 4.2.2 over quota"), R1),),
        recipients=(R1, R2),
        recipient_states=("pending", "sent"),
    ),
    Scenario(
        "lhlo-refused",
        "temporary",
        76,
        "queued",
        lmtp=True,
        rc=("protocol lmtp",),
        faults=(("EHLO", Fault("500 5.5.1 no"), None),),
    ),
]


# -- running both programs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One program's run: exit code, output, and what the server and the logfile got."""

    code: int
    stdout: bytes
    stderr: list[str]  # lines, the program name normalized to relayd-sendmail
    transactions: list[Transaction]
    commands: list[str]
    log: list[str]  # logfile lines without the time stamp


@dataclass(frozen=True)
class Outcome:
    msmtp: Run
    relayd: Run
    queue: list[Stored]
    reasons: list[str | None]


_ISOLATED_PREFIXES = ("RELAYD_", "XDG_", "DBUS_", "LC_")
_ISOLATED_NAMES = ("EMAIL", "SMTPSERVER", "NOTIFY_SOCKET", "LANG", "LANGUAGE")
_LOG_TIME = re.compile(r"^[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d ")


def environment(home: Path) -> dict[str, str]:
    """One environment for both programs: a fresh HOME and queue, no session bus, C, UTC."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_ISOLATED_PREFIXES) and name not in _ISOLATED_NAMES
    }
    env.update(
        HOME=str(home),
        LC_ALL="C",
        TZ="UTC",
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(home / "run"),
        RELAYD_DATABASE_URL=f"sqlite:///{home / 'queue.sqlite3'}",
        RELAYD_RUNTIME_DIR=str(home / "run" / "relayd"),
        RELAYD_MSMTPRC_SYSTEM=str(home / "no-system-msmtprc"),
    )
    return env


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_rc(
    home: Path, server: UpstreamServer, lines: Sequence[str], *, port: int | None = None
) -> Path:
    """The msmtprc both programs use, with the placeholders of `Scenario.rc` filled in."""
    other = home / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    values = {"other_ca": str(other)}
    certs = server.certificates
    if certs is not None:
        values |= {
            "ca": str(certs.ca_file),
            "sha256": certs.fingerprint("sha256"),
            "sha1": certs.fingerprint("sha1"),
            "cert": str(certs.client_cert_file),
            "key": str(certs.client_key_file),
        }
    body = [
        "account default",
        "host 127.0.0.1",
        f"port {server.port if port is None else port}",
        "from me@example.org",
        f"logfile {home / 'log'}",
        *(line.format(**values) for line in lines),
    ]
    path = home / "msmtprc"
    path.write_text("\n".join(body) + "\n")
    path.chmod(0o600)
    return path


def normalize(stderr: bytes, prog: str) -> list[str]:
    """stderr lines with `msmtp:` turned into `relayd-sendmail:`."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    return [PROG + line[len(prog) :] if line.startswith(prog + ":") else line for line in lines]


def run_program(
    argv: Sequence[str], stdin: bytes, env: Mapping[str, str]
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        env=dict(env),
        cwd=env["HOME"],
        timeout=RUN_TIMEOUT,
        check=False,
    )


def run_against(
    server: UpstreamServer, argv: Sequence[str], stdin: bytes, env: Mapping[str, str]
) -> Run:
    """Run one program; collect what the server and the logfile got from it."""
    already = len(server.commands)
    result = run_program(argv, stdin, env)
    logfile = Path(env["HOME"], "log")
    log = logfile.read_text().splitlines() if logfile.exists() else []
    logfile.unlink(missing_ok=True)
    return Run(
        result.returncode,
        result.stdout,
        normalize(result.stderr, os.path.basename(argv[0])),
        server.take(),
        server.commands[already:],
        [_LOG_TIME.sub("", line, count=1) for line in log],
    )


def reasons(db: Path) -> list[str | None]:
    """The `reason` column of every message (sendmail_helpers.Stored does not carry it)."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT reason FROM messages ORDER BY id")]


def run_scenario(scenario: Scenario, home: Path, msmtp: str) -> Outcome:
    env = environment(home)
    with UpstreamServer(
        timeout=SERVER_TIMEOUT, features=scenario.features, tls=scenario.tls, lmtp=scenario.lmtp
    ) as server:
        for stage, fault, address in scenario.faults:
            server.fail(stage, fault, address=address)
        port = closed_port() if scenario.closed_port else None
        rc = write_rc(home, server, scenario.rc, port=port)
        args = ["-C", str(rc), *scenario.recipients]
        theirs = run_against(server, [msmtp, *args], scenario.data, env)
        ours = run_against(server, [SENDMAIL, "-odi", *args], scenario.data, env)
    db = home / "queue.sqlite3"
    return Outcome(theirs, ours, stored_messages(db), reasons(db))


def _requested(request: pytest.FixtureRequest) -> set[str]:
    """The ids of the scenarios the selected tests of this module ask for."""
    wanted = set()
    for item in request.session.items:
        if not isinstance(item, pytest.Function) or item.module is not request.module:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "scenario" in callspec.params:
            wanted.add(callspec.params["scenario"].id)
    return wanted


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome | BaseException]]:
    """Run the selected scenarios in parallel: id → Outcome (or the exception it raised)."""
    msmtp = msmtp_path()
    wanted = _requested(request)
    selected = [s for s in SCENARIOS if s.id in wanted]
    root = tmp_path_factory.mktemp("odi-msmtp")

    def attempt(scenario: Scenario) -> Outcome | BaseException:
        try:
            return run_scenario(scenario, root / scenario.id, msmtp)
        except Exception as exc:  # reported by the scenario's own tests
            return exc

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = dict(zip([s.id for s in selected], pool.map(attempt, selected), strict=True))
    elapsed = time.monotonic() - started
    print(f"\n{len(selected)} msmtp/relayd scenarios in {elapsed:.1f} s")
    yield results


def outcome_of(outcomes: Mapping[str, Outcome | BaseException], scenario: Scenario) -> Outcome:
    found = outcomes[scenario.id]
    if isinstance(found, BaseException):
        raise AssertionError(f"scenario {scenario.id} could not run: {found!r}") from found
    return found


def scenarios(*kinds: Kind, mark_bugs: bool = False) -> list[Any]:
    """pytest params for the scenarios of these kinds (all when none is given)."""
    params = []
    for scenario in SCENARIOS:
        if kinds and scenario.kind not in kinds:
            continue
        marks = []
        if mark_bugs and scenario.bug:
            marks.append(pytest.mark.xfail(strict=True, reason=f"relayd bug: {scenario.bug}"))
        params.append(pytest.param(scenario, id=scenario.id, marks=marks))
    return params


Outcomes = dict[str, Outcome | BaseException]

# -- the checks ------------------------------------------------------------------------------------


def test_the_table() -> None:
    assert len(SCENARIOS) >= 30
    assert len({s.id for s in SCENARIOS}) == len(SCENARIOS)
    for scenario in SCENARIOS:
        differs = not scenario.text or not scenario.wire or scenario.mail_params is not None
        assert not differs or scenario.note, f"{scenario.id}: say why relayd differs"
        assert scenario.kind != "temporary" or scenario.state == "queued"
        assert (scenario.kind == "sent") == (scenario.msmtp == 0)


@pytest.mark.parametrize("scenario", scenarios())
def test_exit_code(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    theirs, ours = outcome.msmtp, outcome.relayd
    assert theirs.code in codes(scenario), theirs.stderr
    if scenario.kind == "temporary":
        assert ours.code == 0, ours.stderr
    else:
        assert ours.code == theirs.code, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout == b""


@pytest.mark.parametrize("scenario", scenarios())
def test_queue_state(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    (stored,) = outcome.queue
    (reason,) = outcome.reasons
    assert stored.state == scenario.state
    states = scenario.recipient_states
    if states is None:
        one = {"sent": "sent", "failed": "failed"}.get(scenario.state, "pending")
        states = (one,) * len(scenario.recipients)
    assert stored.recipients == list(zip(scenario.recipients, states, strict=True))
    if scenario.state == "sent":
        assert reason is None
    else:  # the reason is the error relayd reported first
        assert reason is not None
        assert outcome.relayd.stderr[0] == f"{PROG}: {reason}"
    if scenario.state == "queued":
        assert stored.next_attempt_at is not None
        assert stored.next_attempt_at >= stored.created_at + 60  # [retry] first


_NOTE = re.compile(
    rf"^{PROG}: message (\w+) (?:stays queued; relayd will retry it"
    rf"|is held; fix the problem, then: relayd queue release \1)$"
)


@pytest.mark.parametrize("scenario", scenarios("same", "temporary", mark_bugs=True))
def test_error_text(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    theirs, ours = outcome.msmtp, outcome.relayd
    (stored,) = outcome.queue
    notes = [line for line in ours.stderr if _NOTE.match(line)]
    report = [line for line in ours.stderr if not _NOTE.match(line)]
    if scenario.state == "queued":
        assert notes == [f"{PROG}: message {stored.queue_id} stays queued; relayd will retry it"]
    elif scenario.state == "held":
        assert notes == [
            f"{PROG}: message {stored.queue_id} is held; fix the problem, then: "
            f"relayd queue release {stored.queue_id}"
        ]
    else:
        assert notes == []
    if notes:
        assert ours.stderr[-1] == notes[0]  # relayd's note comes last
    if not scenario.text:
        assert report[-1] == theirs.stderr[-1]  # `could not send mail (account …)`
        pytest.skip(f"the text differs by design: {scenario.note}")
    assert report == theirs.stderr


@pytest.mark.parametrize("scenario", scenarios("sent"))
def test_success_is_silent(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    assert outcome.msmtp.stderr == outcome.relayd.stderr == []


@pytest.mark.parametrize("scenario", scenarios(mark_bugs=True))
def test_log_line(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    theirs, ours = outcome.msmtp, outcome.relayd
    assert len(theirs.log) == len(ours.log) == 1
    if not scenario.text:
        names = {f"exitcode={ExitCode(code).ex_name}" for code in codes(scenario)}
        assert {ours.log[0].split()[-1], theirs.log[0].split()[-1]} <= names
        pytest.skip(f"the text differs by design: {scenario.note}")
    assert ours.log == theirs.log


def _comparable(transaction: Transaction, generated: bool) -> Transaction:
    """The transaction with generated Date/Message-ID values blanked (only for the empty
    message, which has none of its own)."""
    if not generated:
        return transaction
    return replace(transaction, data=_GENERATED.sub(rb"\1: X\r\n", transaction.data))


@pytest.mark.parametrize("scenario", scenarios())
def test_same_transactions(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    theirs, ours = outcome.msmtp.transactions, outcome.relayd.transactions
    if scenario.kind == "sent":
        assert len(theirs) == len(ours) == 1
    if not scenario.wire:
        pytest.skip(f"the transactions differ by design: {scenario.note}")
    generated = scenario.data == b""
    if scenario.mail_params is not None:
        assert [t.mail_params for t in ours] == [scenario.mail_params]
        assert [t.mail_params for t in theirs] == [""]
        ours = [replace(t, mail_params="") for t in ours]
    assert [_comparable(t, generated) for t in ours] == [_comparable(t, generated) for t in theirs]


def _scenario(name: str) -> Any:
    return pytest.param(next(s for s in SCENARIOS if s.id == name), id=name)


@pytest.mark.parametrize("scenario", [_scenario("corpus-empty")])
def test_the_empty_message_gets_the_same_headers(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    for run in (outcome.msmtp, outcome.relayd):
        (transaction,) = run.transactions
        assert re.fullmatch(
            rb"From: me@example\.org\r\nDate: [^\r\n]+\r\nMessage-ID: <[0-9a-f]{32}\.me@example"
            rb"\.org>\r\n",
            transaction.data,
        )


@pytest.mark.parametrize(
    "scenario", [_scenario("rcpt-550-one-of-two"), _scenario("rcpt-550-one-of-two-pipelining")]
)
def test_a_refused_recipient_does_not_stop_the_others(
    outcomes: Outcomes, scenario: Scenario
) -> None:
    outcome = outcome_of(outcomes, scenario)
    assert outcome.msmtp.transactions == []  # msmtp gives up on the whole mail
    (ours,) = outcome.relayd.transactions
    accepted = tuple(
        r
        for r, s in zip(scenario.recipients, scenario.recipient_states or (), strict=True)
        if s == "sent"
    )
    assert ours.rcpt_tos == accepted
    assert ours.data == scenario.data.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("scenario", [_scenario("rcpt-451")])
def test_relayd_asks_for_every_recipient_after_a_4xx(
    outcomes: Outcomes, scenario: Scenario
) -> None:
    outcome = outcome_of(outcomes, scenario)
    rcpts = [c for c in outcome.msmtp.commands if c.startswith("RCPT")]
    assert rcpts == [f"RCPT TO:<{R1}>"]
    rcpts = [c for c in outcome.relayd.commands if c.startswith("RCPT")]
    assert rcpts == [f"RCPT TO:<{R1}>", f"RCPT TO:<{R2}>"]
    assert outcome.msmtp.transactions == outcome.relayd.transactions == []


@pytest.mark.parametrize(
    "scenario", [_scenario("size-exceeded"), _scenario("smtputf8-needed-not-offered")]
)
def test_relayd_refuses_before_mail_what_the_server_cannot_take(
    outcomes: Outcomes, scenario: Scenario
) -> None:
    outcome = outcome_of(outcomes, scenario)
    assert any(c.startswith("MAIL FROM:") for c in outcome.msmtp.commands)
    assert not any(c.startswith("MAIL FROM:") for c in outcome.relayd.commands)
    assert outcome.relayd.commands[-1] == "QUIT"
    assert outcome.msmtp.transactions == outcome.relayd.transactions == []


@pytest.mark.parametrize("scenario", [_scenario("size-exceeded")])
def test_size_exceeded_texts(outcomes: Outcomes, scenario: Scenario) -> None:
    outcome = outcome_of(outcomes, scenario)
    assert outcome.msmtp.stderr[:2] == [
        f"{PROG}: the server did not accept the mail",
        f"{PROG}: server message: 552 Error: Too much mail data",
    ]
    size = len(scenario.data.replace(b"\n", b"\r\n"))
    assert outcome.relayd.stderr[0] == (
        f"{PROG}: the mail is larger than the server's maximum message size ({size} > 1000 bytes)"
    )


@pytest.mark.parametrize(
    "scenario", [_scenario("drop-after-dot"), _scenario("greeting-421"), _scenario("mail-451")]
)
def test_a_temporary_failure_leaves_the_message_for_the_daemon(
    outcomes: Outcomes, scenario: Scenario
) -> None:
    outcome = outcome_of(outcomes, scenario)
    (stored,) = outcome.queue
    assert stored.state == "queued"
    assert stored.data  # the body is kept for the retry
    if scenario.id == "drop-after-dot":  # the server got it before the drop: both times
        assert len(outcome.msmtp.transactions) == len(outcome.relayd.transactions) == 1


# -- --serverinfo ----------------------------------------------------------------------------------

RICH = Features(
    size=10485760,
    pipelining=True,
    etrn=True,
    dsn=True,
    auth=("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"),
)


@dataclass(frozen=True)
class Info:
    id: str
    features: Features = field(default_factory=Features)
    tls: TlsMode | None = None
    rc: tuple[str, ...] = ()
    faults: tuple[FaultAt, ...] = ()
    code: int = 0
    lmtp: bool = False


SERVERINFO = [
    Info("plain-no-capabilities", Features(eightbitmime=False, smtputf8=False)),
    Info("plain", RICH),
    Info("helo-only", faults=(("EHLO", Fault("502 5.5.2 no"), None),)),
    Info(
        "starttls",
        replace(RICH, auth_needs_tls=True),
        "starttls",
        ("tls on", "tls_trust_file {ca}"),
    ),
    Info(
        "implicit-tls",
        RICH,
        "implicit",
        ("tls on", "tls_starttls off", "tls_trust_file {ca}"),
    ),
    Info("lmtp", RICH, rc=("protocol lmtp",), lmtp=True),
    Info("lmtp-to-an-smtp-server", RICH, rc=("protocol lmtp",), code=76),
    Info("greeting-554", faults=(("GREETING", Fault("554 5.7.1 go away"), None),), code=76),
    Info("wrong-ca", tls="starttls", rc=("tls on", "tls_trust_file {other_ca}"), code=69),
]


def run_both(
    home: Path, server: UpstreamServer, rc: Sequence[str], *args: str
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """msmtp and relayd-sendmail with the same msmtprc and arguments, at the same time."""
    env = environment(home)
    path = write_rc(home, server, rc)
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = pool.submit(run_program, [msmtp_path(), "-C", str(path), *args], b"", env)
        ours = pool.submit(run_program, [SENDMAIL, "-C", str(path), *args], b"", env)
        return theirs.result(), ours.result()


_TLS_PARAMETERS = re.compile(r"\((TLS1\.[0-3])\)-(?:\([^)]+\)-)*\(([^)]+)\)")


@pytest.mark.parametrize("info", [pytest.param(i, id=i.id) for i in SERVERINFO])
def test_serverinfo_as_msmtp(tmp_path: Path, info: Info) -> None:
    msmtp_path()
    with UpstreamServer(
        timeout=SERVER_TIMEOUT, features=info.features, tls=info.tls, lmtp=info.lmtp
    ) as server:
        for stage, fault, address in info.faults:
            server.fail(stage, fault, address=address)
        theirs, ours = run_both(tmp_path / "home", server, info.rc, "--serverinfo")
    assert theirs.returncode == info.code, theirs.stderr
    assert ours.returncode == theirs.returncode, ours.stderr
    assert normalize(ours.stderr, PROG) == normalize(theirs.stderr, "msmtp")
    mine, msmtps = ours.stdout.decode().splitlines(), theirs.stdout.decode().splitlines()
    if "TLS session parameters:" in msmtps:
        # GnuTLS names the key exchange group and the signature algorithm, which Python's ssl
        # cannot report: compare the protocol and the cipher on that line, all else verbatim.
        at = msmtps.index("TLS session parameters:") + 1
        assert mine[at - 1] == msmtps[at - 1]
        theirs_match = _TLS_PARAMETERS.fullmatch(msmtps[at].strip())
        ours_match = _TLS_PARAMETERS.fullmatch(mine[at].strip())
        assert theirs_match and ours_match, (msmtps[at], mine[at])
        assert ours_match.groups() == theirs_match.groups()
        del mine[at], msmtps[at]
    assert mine == msmtps
    assert ours.stdout.endswith(b"\n") == theirs.stdout.endswith(b"\n")


# -- --rmqs ----------------------------------------------------------------------------------------

RMQS = [
    ("offered", Features(etrn=True), None, 0),
    ("refused", Features(etrn=True), Fault("458 4.0.0 unable to queue messages"), 69),
    ("not-offered", Features(), None, 69),
]


@pytest.mark.parametrize(
    ("features", "fault", "code"), [pytest.param(*r[1:], id=r[0]) for r in RMQS]
)
def test_rmqs_as_msmtp(tmp_path: Path, features: Features, fault: Fault | None, code: int) -> None:
    msmtp_path()
    with UpstreamServer(timeout=SERVER_TIMEOUT, features=features) as server:
        if fault is not None:
            server.fail("ETRN", fault)
        theirs, ours = run_both(tmp_path / "home", server, (), "--rmqs=@example.org")
        etrns = [c for c in server.commands if c.startswith("ETRN")]
    assert theirs.returncode == code, theirs.stderr
    assert ours.returncode == code, ours.stderr
    assert (ours.stdout, normalize(ours.stderr, PROG)) == (
        theirs.stdout,
        normalize(theirs.stderr, "msmtp"),
    )
    assert etrns == (["ETRN @example.org"] * 2 if features.etrn else [])
