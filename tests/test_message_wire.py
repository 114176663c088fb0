"""relayd stores what Debian's msmtp 1.8.23 sends: envelope and bytes compared on loopback."""

from __future__ import annotations

import os
import queue
import random
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from relayd.errors import ConfigError, DataError
from relayd.submission.headers import HeaderScan, _HeaderReader
from relayd.submission.message import (
    build_message,
    canonical_hostname,
    expand_aliases,
    format_date,
    parse_recipient_arguments,
    scan_headers,
    smtp_reverse_path,
)
from tests.upstream import Fault, UpstreamServer

ACCOUNT_FROM = "me@example.org"
RUN_TIMEOUT = 30  # seconds for one msmtp process (its own SMTP timeout is lower)
WORKERS = 4


# -- running msmtp ------------------------------------------------------------------------------


def _msmtp_path() -> str | None:
    path = shutil.which("msmtp")
    if path is None:
        return None
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    ).stdout
    return path if version.startswith("msmtp version 1.8.23\n") else None


@pytest.fixture(scope="module")
def msmtp() -> str:
    path = _msmtp_path()
    if path is None:
        reason = "Debian's msmtp 1.8.23 is not installed (apt-get install msmtp)"
        if os.environ.get("RELAYD_REQUIRE_MSMTP") == "1":
            pytest.fail(f"{reason}, and RELAYD_REQUIRE_MSMTP=1")
        pytest.skip(f"{reason}; set RELAYD_REQUIRE_MSMTP=1 to make this a failure")
    return path


@dataclass(frozen=True)
class Sent:
    """One message as it left the client: envelope and DATA bytes before dot-stuffing."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """What happened: a Sent message, or the error (msmtp's exit code and message)."""

    sent: Sent | None = None
    exit_code: int = 0
    error: str = ""


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    args: tuple[str, ...]
    config: str = ""  # extra msmtprc lines
    files: dict[str, bytes] = field(default_factory=dict)  # written next to the msmtprc
    tz: str = "UTC"


def run_msmtp(binary: str, server: UpstreamServer, case: Case) -> Outcome:
    """Run msmtp on `case` against `server` in a fresh HOME; stdin is the raw message."""
    with tempfile.TemporaryDirectory() as home:
        for name, content in case.files.items():
            Path(home, name).write_bytes(content)
        config = Path(home, ".msmtprc")
        config.write_text(
            "account default\nhost 127.0.0.1\n"
            f"port {server.port}\nfrom {ACCOUNT_FROM}\ntls off\nauth off\ntimeout 10\n"
            + case.config.replace("$HOME", home)
        )
        config.chmod(0o600)
        env = {"HOME": home, "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": case.tz}
        server.take()
        done = subprocess.run(
            [binary, *case.args],
            input=case.raw,
            capture_output=True,
            env=env,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        arrived = server.take()
        error = done.stderr.decode("utf-8", "replace").replace(home, "$HOME").strip()
    if done.returncode != 0:
        return Outcome(exit_code=done.returncode, error=error)
    assert len(arrived) == 1, (arrived, error)
    message = arrived[0]
    return Outcome(Sent(message.mail_from, message.rcpt_tos, message.data))


# -- what relayd would store ----------------------------------------------------------------------


def _scan(raw: bytes, read_recipients: bool, from_quirk: bool) -> HeaderScan:
    if not from_quirk:
        return scan_headers(raw, read_recipients=read_recipients)
    reader = _HeaderReader(
        message=True, read_recipients=read_recipients, from_extras_are_recipients=True
    )
    header_end = reader.read(raw)
    found = reader.from_address
    return HeaderScan(
        header_end=header_end,
        has_date=reader.has_date,
        has_message_id=reader.has_message_id,
        from_address=None if found is None else found.decode("utf-8", "surrogateescape"),
        recipients=tuple(reader.addresses()),
    )


def relayd_outcome(case: Case, *, home: str = "", from_quirk: bool = False) -> Outcome:
    """The submission path for the options the corpus uses, in msmtp's order of checks."""
    options: dict[str, Any] = {
        "full_name": None,
        "set_from_header": "auto",
        "set_date_header": "auto",
        "set_msgid_header": "auto",
        "remove_bcc_headers": True,
        "undisclosed_recipients": False,
    }
    read_recipients = read_envelope_from = False
    envelope_from: str | None = ACCOUNT_FROM
    arguments: list[str] = []
    args = iter(case.args)
    for arg in args:
        if arg == "-t":
            read_recipients = True
        elif arg == "-f":
            value = next(args)
            envelope_from = "" if value == "<>" else value
        elif arg == "-F":
            options["full_name"] = next(args)
        elif arg == "--read-envelope-from":
            read_envelope_from = True
        elif arg.startswith("--") and "=" in arg:
            name, value = arg[2:].replace("-", "_").split("=", 1)
            if name in ("undisclosed_recipients", "remove_bcc_headers"):
                options[name] = value == "on"
            else:
                options[name] = value  # set_from_header, set_date_header, set_msgid_header
        elif arg == "--":
            arguments += list(args)
        else:
            arguments.append(arg)
    scan = _scan(case.raw, read_recipients, from_quirk)
    recipients = parse_recipient_arguments(arguments) + list(scan.recipients)
    if not recipients:
        return Outcome(exit_code=64, error="msmtp: no recipients found")
    if read_envelope_from:
        envelope_from = scan.from_address
    if envelope_from is None:
        return Outcome(exit_code=78, error="envelope-from address is missing")
    aliases = re.search(r"^aliases (.*)$", case.config, re.MULTILINE)
    if aliases:
        recipients = expand_aliases(recipients, aliases.group(1).replace("$HOME", home))
    data = build_message(
        case.raw,
        scan,
        envelope_from=envelope_from,
        now=time.time(),
        hostname=canonical_hostname,
        **options,
    )
    return Outcome(Sent(smtp_reverse_path(envelope_from), tuple(recipients), bytes(data)))


# Generated values differ run to run; their format is checked on their own below.
_GENERATED_DATE = re.compile(
    rb"^Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r$",
    re.MULTILINE,
)
_GENERATED_ID = re.compile(rb"^Message-ID: <[0-9a-f]{32}\.", re.MULTILINE)


def comparable(outcome: Outcome) -> Outcome:
    if outcome.sent is None:
        # msmtp words "from missing" with the account and file; the kind of error is what counts
        return Outcome(exit_code=outcome.exit_code, error=outcome.error.rsplit(": ", 1)[-1])
    data = _GENERATED_DATE.sub(b"Date: <generated>\r", outcome.sent.data)
    data = _GENERATED_ID.sub(b"Message-ID: <generated>.", data)
    return Outcome(Sent(outcome.sent.mail_from, outcome.sent.recipients, data))


# -- the corpus -----------------------------------------------------------------------------------

KNOWN = b"Date: Mon, 23 Nov 2026 10:00:00 +0100\nMessage-ID: <corpus@example.org>\n"

MESSAGES: dict[str, bytes] = {
    "lf": b"From: Alice <alice@example.org>\nTo: Bob <bob@example.net>\n"
    + KNOWN
    + b"Subject: plain LF\n\nHello.\n\nBye.\n",
    "crlf": b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
    + KNOWN.replace(b"\n", b"\r\n")
    + b"Subject: CRLF\r\n\r\nHello.\r\n\r\nBye.\r\n",
    "mixed": b"To: a@example.net\r\nCc: c@example.net\nSubject: mixed\r\n\nline1\r\nline2\n"
    b"line3\r\r\nline4\n\r\n",
    "8bit": b"To: =?utf-8?q?J=C3=B6rg?= <joerg@example.net>\nSubject: Gr\xc3\xbc\xc3\x9fe\n"
    b"Content-Type: text/plain; charset=utf-8\n\nSch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe \xff\xfe\x80\n",
    "long-lines": b"To: a@example.net\nX-Long: "
    + b"h" * 1200
    + b"\nSubject: long\n\n"
    + b"x" * 2500
    + b"\n"
    + b"y" * 3000,
    "no-headers": b"just a body line without headers\nand a second one\n",
    "headers-only": b"To: a@example.net\nSubject: only headers",
    "headers-and-blank": b"To: a@example.net\nSubject: nothing below\n\n",
    "empty": b"",
    "from-lines": b"From someone@example.org Mon Nov 23 10:00:00 2026\nTo: a@example.net\n"
    b"Subject: From lines\n\nFrom here\n>From there\nFrom: not a header\n",
    "dots": b"To: a@example.net\nSubject: dots\n\n.\n..x\n...\n.\r\n. \nend.\n.",
    "bcc": b"From: s@example.org\nTo: a@example.net\n"
    b"Bcc: secret@example.net,\n\tsecret2@example.net\nResent-Bcc: rb@example.net\n"
    b"bcc: s3@example.net\nSubject: bcc\n\nBcc: body@example.net\n",
    "resent": b"Received: by relay\nResent-From: r@example.org\nResent-To: rt@example.net\n"
    b"Resent-Cc: rc@example.net\nResent-Bcc: rbcc@example.net\nX-Other: y\n"
    b"Resent-To: old@example.net\nTo: a@example.net\nFrom: s@example.org\n\nbody\n",
    "resent-without-to": b"Resent-Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
    b"Resent-From: r@example.org\nTo: a@example.net\n\nbody\n",
    "folded": b'To: Alice <a@example.net>,\n Bob <b@example.net>,\n\t"Doe, C" <c@example.net>\n'
    b"Subject: a long\n folded subject\nFrom: Sender\n <s@example.org>\n\nbody\n",
    "groups-comments": b'To: team: a@example.net, (c) b@example.net;, "q" <c@example.net>\n'
    b"Cc: d@example.net (D), Undisclosed:;\n\nbody\n",
    "bare-cr": b"X-CR: a\rb\nSubject: bare\r CR\n\nbody\rwith bare CR\r\nand\r\r\nend\r",
    "no-final-newline": b"To: a@example.net\nSubject: s\n\nno newline at the end",
    "all-generated": b"Subject: nothing given\n\nbody\n",
    "empty-from": b"From:\nTo: a@example.net\nSubject: s\n\nbody\n",
    "lowercase": b'from: "Doe, John" <john@example.org>\nto: a@example.net\ndate: x\n'
    b"message-id: <y@example.org>\n\nbody\n",
}

ARGSETS: dict[str, tuple[str, ...]] = {
    "rcpt": ("rcpt@example.net",),
    "t": ("-t",),
    "t+rcpt": ("-t", "rcpt@example.net"),
    "f+F": ("-f", "sender@example.org", "-F", "Jo Q. Public", "rcpt@example.net"),
    "read-envelope-from": ("--read-envelope-from", "-t", "rcpt@example.net"),
    "from-on": ("--set-from-header=on", "rcpt@example.net"),
    "undisclosed": ("--undisclosed-recipients=on", "-t", "rcpt@example.net"),
    "keep-bcc": ("--remove-bcc-headers=off", "-t"),
}

SPECIAL = [
    Case("null-sender", MESSAGES["lf"], ("-f", "<>", "rcpt@example.net")),
    Case("null-sender-generated", MESSAGES["all-generated"], ("-f", "<>", "rcpt@example.net")),
    Case("mailer-daemon", MESSAGES["all-generated"], ("-f", "MAILER-DAEMON", "r@example.net")),
    Case("local-sender", MESSAGES["all-generated"], ("-f", "local", "rcpt@example.net")),
    Case("empty-full-name", MESSAGES["all-generated"], ("-F", "", "rcpt@example.net")),
    Case(
        "no-date-no-msgid",
        MESSAGES["all-generated"],
        ("--set-date-header=off", "--set-msgid-header=off", "rcpt@example.net"),
    ),
    Case(
        "argument-forms",
        MESSAGES["lf"],
        ("John <j@example.net>, k@example.net", "(c) l@example.net", "m@example.net;", "local"),
    ),
    Case("quoted-local-part", MESSAGES["lf"], ("--", '"a b"@example.net', "x@example.net")),
    Case("duplicates", b"To: a@x\nCc: a@x\nBcc: A@x\n\n", ("-t", "a@x")),
    Case("no-recipients", MESSAGES["all-generated"], ("-t",)),
    Case("bcc-only-without-t", b"Bcc: b@example.net\n\nbody\n", ()),
    Case("no-from-to-read", MESSAGES["all-generated"], ("--read-envelope-from", "r@x")),
    Case("open-from-at-eof", b"Subject: s\nFrom:", ("--read-envelope-from", "r@x")),
    Case(
        "aliases",
        b"To: root\n\nbody\n",
        ("-t", "postmaster", "a@example.net"),  # no alias right after another (msmtp skips it)
        config="aliases $HOME/aliases\n",
        files={"aliases": b"# aliases\nroot: r@example.net\npostmaster: pm@example.net\n"},
    ),
    Case(
        "aliases-default-nested",
        b"Subject: s\n\nbody\n",
        ("who", "x@example.net"),
        config="aliases $HOME/aliases\n",
        files={"aliases": b"default: admin\nadmin: boss\nboss: b@example.net\n"},
    ),
]

CASES = [
    Case(f"{message}-{argset}", raw, args)
    for message, raw in MESSAGES.items()
    for argset, args in ARGSETS.items()
] + SPECIAL


# A seeded sample of odd header blocks, the kind that found bugs while this was written.
_NAMES = [
    b"To", b"cc", b"Bcc", b"From", b"from", b"Resent-To", b"Resent-Cc", b"resent-bcc",
    b"Resent-From", b"Resent-Date", b"Date", b"Message-ID", b"Subject", b"Received", b"R",
    b"D", b"M", b"F", b"T", b"Res", b"Resent-", b"Message-I", b"X-Thing",
]  # fmt: skip
_TOKENS = [
    b"a@x", b"b@y.z", b"local", b"<", b">", b"(", b")", b'"', b"\\", b",", b";", b":", b" ",
    b"\t", b"\r", b"\x01", b"\xc3\xa9", b"John", b"<c@d>", b"(note)", b'"Q, R"', b"g:", b"e@f;",
]  # fmt: skip


def _odd_message(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 6)):
        value = b"".join(rng.choice(_TOKENS) for _ in range(rng.randint(0, 7)))
        kind = rng.random()
        if kind < 0.7:
            lines.append(rng.choice(_NAMES) + rng.choice([b": ", b":", b" :", b""]) + value)
        elif kind < 0.85:
            lines.append(rng.choice([b" ", b"\t"]) + value)
        else:
            lines.append(value)
    end = rng.choice([b"\n", b"\r\n", b"\r\r\n"])
    raw = end.join(lines)
    if rng.random() < 0.6:
        raw += end + end + rng.choice([b"body\n", b".\n..x\r\nBcc: q\n", b"x\ry", b""])
    return raw


def _odd_args(rng: random.Random) -> tuple[str, ...]:
    args = [
        option
        for option, chance in (
            ("-t", 0.8),
            ("--read-envelope-from", 0.3),
            ("--set-from-header=on", 0.2),
            ("--undisclosed-recipients=on", 0.2),
            ("--remove-bcc-headers=off", 0.2),
        )
        if rng.random() < chance
    ]
    return (*args, "z@z") if rng.random() < 0.4 else tuple(args)


_RNG = random.Random(20261124)
ODD_CASES = [Case(f"odd-{n}", _odd_message(_RNG), _odd_args(_RNG)) for n in range(150)]


@pytest.fixture(scope="module")
def msmtp_outcomes(msmtp: str) -> Iterator[dict[str, Outcome]]:
    """Every corpus case run through msmtp once, a few at a time, each on its own server."""
    servers: queue.Queue[UpstreamServer] = queue.Queue()
    started = [UpstreamServer(timeout=RUN_TIMEOUT) for _ in range(WORKERS)]
    for server in started:
        server.start()
        servers.put(server)

    def run(case: Case) -> Outcome:
        server = servers.get(timeout=RUN_TIMEOUT)
        try:
            return run_msmtp(msmtp, server, case)
        finally:
            servers.put(server)

    try:
        everything = CASES + ODD_CASES
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = list(pool.map(run, everything))
        yield {case.id: outcome for case, outcome in zip(everything, outcomes, strict=True)}
    finally:
        for server in started:
            server.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_envelope_and_bytes_as_msmtp(case: Case, msmtp_outcomes: dict[str, Outcome]) -> None:
    theirs = msmtp_outcomes[case.id]
    with tempfile.TemporaryDirectory() as home:
        for name, content in case.files.items():
            Path(home, name).write_bytes(content)
        ours = relayd_outcome(case, home=home)
    assert comparable(ours) == comparable(theirs)


def test_odd_header_blocks_read_like_msmtp(msmtp_outcomes: dict[str, Outcome]) -> None:
    """With msmtp's From quirk switched back on, a random sample matches exactly."""
    differing = [
        case.id
        for case in ODD_CASES
        if comparable(relayd_outcome(case, from_quirk=True)) != comparable(msmtp_outcomes[case.id])
    ]
    assert differing == []


# -- generated headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham"])
def test_date_header_format_matches(msmtp: str, tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with UpstreamServer(timeout=RUN_TIMEOUT) as server:
        outcome = run_msmtp(msmtp, server, Case("date", b"", ("r@x",), tz=tz))
    assert outcome.sent is not None
    line = outcome.sent.data.split(b"\r\n")[1].decode()
    assert line.startswith("Date: ")
    when = parsedate_to_datetime(line[6:]).timestamp()
    assert abs(when - time.time()) < 60
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        assert format_date(when) == line[6:]
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("args", "tail"),
    [
        (("r@x",), f".{ACCOUNT_FROM}>"),
        (("-f", "local", "r@x"), ".local@{host}>"),
        (("-f", "<>", "r@x"), ".@{host}>"),
    ],
)
def test_message_id_format_matches(msmtp: str, args: tuple[str, ...], tail: str) -> None:
    case = Case("msgid", b"From: a@x\nDate: x\n\nbody\n", args)
    with UpstreamServer(timeout=RUN_TIMEOUT) as server:
        theirs = run_msmtp(msmtp, server, case)
    ours = relayd_outcome(case)
    expected = re.compile(
        r"Message-ID: <[0-9a-f]{32}" + re.escape(tail.format(host=canonical_hostname()))
    )
    for outcome in (theirs, ours):
        assert outcome.sent is not None
        assert expected.fullmatch(outcome.sent.data.split(b"\r\n")[0].decode())


# -- where relayd differs on purpose --------------------------------------------------------------


def _send(msmtp: str, case: Case) -> Outcome:
    with UpstreamServer(timeout=RUN_TIMEOUT) as server:
        return run_msmtp(msmtp, server, case)


def test_difference_from_fields_second_address(msmtp: str) -> None:
    case = Case("from-two", b"From: a@x, b@x\nTo: c@x\n\nbody\n", ("-t",))
    theirs, ours = _send(msmtp, case), relayd_outcome(case)
    assert theirs.sent is not None and ours.sent is not None
    assert theirs.sent.recipients == ("b@x", "c@x")  # msmtp mails the second author
    assert ours.sent.recipients == ("c@x",)
    assert comparable(relayd_outcome(case, from_quirk=True)) == comparable(theirs)


def test_difference_cr_at_a_1023_byte_boundary(msmtp: str) -> None:
    body = b"a" * 1022 + b"\rXYZ\n"
    case = Case("cr-boundary", b"Subject: s\n\n" + body, ("r@x",))
    theirs, ours = _send(msmtp, case), relayd_outcome(case)
    assert theirs.sent is not None and ours.sent is not None
    assert theirs.sent.data.endswith(b"a" * 1022 + b"XYZ\r\n")  # msmtp drops the CR
    assert ours.sent.data.endswith(b"a" * 1022 + b"\rXYZ\r\n")


def test_difference_unterminated_line_of_1023_bytes(msmtp: str) -> None:
    case = Case("hang", b"Subject: s\n\n" + b"a" * 1023, ("r@x",), config="timeout 1\n")
    theirs, ours = _send(msmtp, case), relayd_outcome(case)
    assert theirs.exit_code == 74  # no CRLF before the final dot: the server waits, msmtp times out
    assert ours.sent is not None and ours.sent.data.endswith(b"a" * 1023 + b"\r\n")


def test_difference_nul_bytes(msmtp: str) -> None:
    case = Case("nul", b"Subject: s\n\nbinary\0data\n", ("r@x",))
    theirs = _send(msmtp, case)
    assert theirs.sent is not None and b"binary\0data\r\n" in theirs.sent.data
    with pytest.raises(DataError):
        relayd_outcome(case)


def test_difference_alias_order(msmtp: str) -> None:
    case = Case(
        "alias-order",
        b"Subject: s\n\nbody\n",
        ("root", "root2", "root"),
        config="aliases $HOME/aliases\n",
        files={"aliases": b"root: a@x, b@y\nroot2: c@x\n"},
    )
    theirs = _send(msmtp, case)
    with tempfile.TemporaryDirectory() as home:
        Path(home, "aliases").write_bytes(case.files["aliases"])
        ours = relayd_outcome(case, home=home)
    assert theirs.sent is not None and ours.sent is not None
    assert theirs.sent.recipients == ("b@y", "a@x", "root2", "b@y", "a@x")
    assert ours.sent.recipients == ("a@x", "b@y", "c@x", "a@x", "b@y")


@pytest.mark.parametrize(
    ("text", "recipients"),
    [
        (b"default: admin\n", ("who",)),
        (b"root a@x\n", ("root",)),
        (b"r@x: a@x\n", ("root",)),
        (b"root: a@x\nroot: b@x\n", ("root",)),
        (b"root: " + b"a" * 505 + b"\n", ("root",)),
        (None, ("root",)),
    ],
)
def test_alias_errors_word_for_word(
    msmtp: str, text: bytes | None, recipients: Sequence[str]
) -> None:
    files = {} if text is None else {"aliases": text}
    case = Case("alias-error", b"S: x\n\n", tuple(recipients), "aliases $HOME/aliases\n", files)
    theirs = _send(msmtp, case)
    assert theirs.exit_code == 78
    with tempfile.TemporaryDirectory() as home:
        for name, content in files.items():
            Path(home, name).write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            relayd_outcome(case, home=home)
        ours = str(caught.value).replace(home, "$HOME")
    assert theirs.error == f"msmtp: {ours}"


# -- the recording server itself ------------------------------------------------------------------


def test_upstream_records_and_fails_on_request() -> None:
    """tests/upstream.py: data dot-unstuffed and byte-exact, paths verbatim, scripted faults."""
    data = b".leading dot\r\n..two\r\nbare\rCR and bare\nLF\r\n" + b"x" * 5000 + b"\r\n"
    with UpstreamServer(timeout=RUN_TIMEOUT) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=RUN_TIMEOUT) as client:
            client.ehlo("test")
            assert client.mail("<>")[0] == 250
            assert client.rcpt("<@example.net>")[0] == 250  # recorded, never judged
            assert client.data(data)[0] == 250  # smtplib dot-stuffs bytes, nothing else
        server.fail("RCPT", Fault(reply="550 5.1.1 no such user"), address="bad@example.net")
        server.fail("END", Fault(reply="451 4.3.0 try later", delay=0.05))
        with smtplib.SMTP("127.0.0.1", server.port, timeout=RUN_TIMEOUT) as client:
            client.ehlo("test")
            client.mail("a@example.org")
            assert client.rcpt("bad@example.net")[0] == 550
            assert client.rcpt("ok@example.net")[0] == 250
            assert client.data(b"hi\r\n")[0] == 451
        server.clear_faults()
        server.fail("MAIL", Fault(drop=True))
        with smtplib.SMTP("127.0.0.1", server.port, timeout=RUN_TIMEOUT) as client:
            client.ehlo("test")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.mail("a@example.org")
        first, second = server.wait_for(2)
    assert (first.mail_from, first.rcpt_tos, first.data) == ("", ("@example.net",), data)
    assert first.reply.startswith("250")
    assert (second.rcpt_tos, second.data, second.reply) == (
        ("ok@example.net",),
        b"hi\r\n",
        "451 4.3.0 try later",
    )
