"""`relayd daemon` end to end on final outcomes: refused recipients, held mail, DSNs, notices.

The daemon runs in a subprocess against the fault-injecting upstream fixture on 127.0.0.1 (see
tests/test_daemon.py). A refused recipient fails alone; a rejected password holds the message
and runs the `[notify] command`; `[bounce]` sends an RFC 3464 report to the envelope sender (or
into a Maildir), never for `<>`; `[retry] warn_after` sends one delay notice. What the server
received is parsed with the stdlib email package; the queue is read with plain sqlite3.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.sendmail_helpers import queue_db, run_sendmail, stored_messages, write_msmtprc
from tests.test_daemon import (
    MESSAGE,
    Daemon,
    _settings_file,
    column,
    eventually,
    message,
    rc_for,
    run_relayd,
    start_daemon,
    state_is,
    submit,
    upstream,
)
from tests.upstream import Fault, Features, Transaction, UpstreamServer

__all__ = ["start_daemon", "upstream"]  # pytest fixtures, used by name

SENDER = "me@example.org"  # the `from` of rc_for's account
GOOD, BAD = "you@example.org", "bad@example.org"
REFUSED = "550 5.1.1 no such user"
LATER = "451 4.3.0 try again later"
AUTH_USERS = {"user": "s3cret-pw"}

# The notify command: records its arguments, relayd's variables and what stdin is, then waits
# while the gate file exists (bounded), so a test can see delivery go on while it runs.
NOTIFIER = """\
import json, os, stat, sys, time
log, gate, done = sys.argv[1:4]
stdin, null = os.fstat(0), os.stat("/dev/null")
entry = {
    "argv": sys.argv[4:],
    "env": {k: v for k, v in os.environ.items() if k.startswith("RELAYD_")},
    "stdin_is_null": stat.S_ISCHR(stdin.st_mode) and stdin.st_rdev == null.st_rdev,
}
with open(log, "a") as handle:
    handle.write(json.dumps(entry) + "\\n")
deadline = time.monotonic() + 10
while os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
with open(done, "a") as handle:
    handle.write("done\\n")
"""


# -- helpers ---------------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(text)


def submit_to(recipients: tuple[str, ...], *args: str) -> str:
    """relayd-sendmail ARGS RECIPIENTS (the default message); the new message's queue id."""
    before = {m.queue_id for m in stored_messages()}
    result = run_sendmail([*args, *recipients], MESSAGE)
    assert result.returncode == 0, result.stderr
    # A quick daemon may already have queued a bounce of its own: not this submission.
    (new,) = [
        m.queue_id
        for m in stored_messages()
        if m.queue_id not in before and tuple(a for a, _ in m.recipients) == recipients
    ]
    return new


def others(*queue_ids: str) -> list[str]:
    """Queue ids of stored messages other than `queue_ids` (a DSN relayd queued itself)."""
    return [m.queue_id for m in stored_messages() if m.queue_id not in queue_ids]


def holds_for(probe: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert `probe` stays true for `seconds` (something that must not happen does not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), what
        time.sleep(0.05)
    assert probe(), what


def _query(sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(queue_db())
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def attempts(queue_id: str) -> int:
    """The message's attempt count."""
    return int(str(column(queue_id, "attempts")))


def attempted_since(queue_id: str, count: int) -> Callable[[], bool]:
    """True once the message has had more than `count` attempts."""
    return lambda: attempts(queue_id) > count


def recipient_rows(queue_id: str) -> list[tuple[Any, ...]]:
    """(address, state, reply_code, reply_text) of each recipient, in envelope order."""
    return _query(
        "SELECT r.address, r.state, r.reply_code, r.reply_text FROM recipients r"
        " JOIN messages m ON m.id = r.message_id WHERE m.queue_id = ? ORDER BY r.position",
        queue_id,
    )


def attempt_replies(queue_id: str) -> list[list[dict[str, Any]]]:
    """The recipient_replies JSON of each attempts row of the message, oldest first."""
    rows = _query(
        "SELECT a.recipient_replies FROM attempts a JOIN messages m ON m.id = a.message_id"
        " WHERE m.queue_id = ? ORDER BY a.started_at, a.id",
        queue_id,
    )
    return [json.loads(raw) for (raw,) in rows]


def bounces(server: UpstreamServer) -> list[Transaction]:
    """Transactions with the null reverse path: the DSNs relayd sent."""
    return [t for t in server.transactions if t.mail_from == ""]


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def squeezed(value: object) -> str:
    """A header value with its whitespace removed, lower case (`rfc822; a@b` == `RFC822;a@b`)."""
    return re.sub(r"\s+", "", str(value)).lower()


class Notifier:
    """A `[notify] command` that logs each run to a JSON-lines file in `directory`."""

    def __init__(self, directory: Path) -> None:
        script = directory / "notify.py"
        script.write_text(NOTIFIER)
        self.log = directory / "notify.log"
        self.gate = directory / "notify.gate"
        self.done = directory / "notify.done"
        words = (sys.executable, str(script), str(self.log), str(self.gate), str(self.done))
        self.command = " ".join(f"'{word}'" for word in words)  # the paths hold no quote

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def settings(self) -> str:
        return f"[notify]\ncommand = {toml_string(self.command)}\n"


def assert_called(call: dict[str, Any], queue_id: str, state: str, account: str) -> None:
    """One notify run: three arguments, the same in the environment, stdin /dev/null."""
    why = str(column(queue_id, "reason"))
    assert call["argv"] == [queue_id, state, why]
    env = call["env"]
    assert (env["RELAYD_QUEUE_ID"], env["RELAYD_STATE"], env["RELAYD_REASON"]) == (
        queue_id,
        state,
        why,
    )
    assert (env["RELAYD_ACCOUNT"], env["RELAYD_SENDER"]) == (account, message(queue_id).sender)
    assert call["stdin_is_null"]


def report_parts(dsn: EmailMessage) -> tuple[EmailMessage, list[EmailMessage], EmailMessage]:
    """Check a DSN's envelope headers and structure; (per-message fields, per-recipient field
    blocks, the text/rfc822-headers part)."""
    (author,) = dsn["From"].addresses
    assert author.username.upper() == "MAILER-DAEMON" and author.domain, dsn["From"]
    assert str(dsn["Auto-Submitted"]).strip().lower() == "auto-replied"
    assert dsn.get_content_type() == "multipart/report"
    assert str(dsn.get_param("report-type")).lower() == "delivery-status"
    parts = list(dsn.iter_parts())
    kinds = [p.get_content_type() for p in parts]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert isinstance(parts[0], EmailMessage) and isinstance(parts[2], EmailMessage)
    payload = parts[1].get_payload()
    assert isinstance(payload, list) and len(payload) >= 2, payload
    blocks = [block for block in payload if isinstance(block, EmailMessage)]
    assert len(blocks) == len(payload), payload
    per_message, *per_recipient = blocks
    assert per_message["Reporting-MTA"], "RFC 3464 §2.2: Reporting-MTA is required"
    return per_message, per_recipient, parts[2]


def assert_original_headers(part: EmailMessage) -> None:
    """The third part holds the original message's headers, without its body."""
    text = part.get_content()
    assert "Subject: hi" in text and f"From: {SENDER}" in text, text
    assert "hello" not in text, text


def assert_failed_report(dsn: EmailMessage, recipient: str) -> None:
    """A DSN that reports `recipient` (only it) failed with the fixture's 550 5.1.1."""
    _, per_recipient, headers = report_parts(dsn)
    (block,) = per_recipient  # only the failed recipient, not the one already sent
    assert squeezed(block["Final-Recipient"]) == f"rfc822;{recipient}"
    assert str(block["Action"]).strip().lower() == "failed"
    assert str(block["Status"]).strip() == "5.1.1"
    assert squeezed(block["Diagnostic-Code"]).startswith(squeezed(f"smtp; {REFUSED}"))
    assert_original_headers(headers)


# -- a refused recipient ---------------------------------------------------------------------------


def test_550_to_one_of_two_recipients_delivers_the_other_without_a_dsn(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=BAD)
    start_daemon()
    queue_id = submit_to((GOOD, BAD))
    eventually(state_is(queue_id, "failed"), 10, "state failed")
    (got,) = upstream.transactions
    assert (got.mail_from, got.rcpt_tos) == (SENDER, (GOOD,))
    assert got.data.endswith(b"hello\r\n")
    assert column(queue_id, "reason") == f"recipient address {BAD} not accepted by the server"
    assert recipient_rows(queue_id) == [
        (GOOD, "sent", 250, "2.0.0 Ok: queued"),
        (BAD, "failed", 550, "5.1.1 no such user"),
    ]
    (replies,) = attempt_replies(queue_id)
    assert [(r["address"], r["state"], r["code"]) for r in replies] == [
        (GOOD, "sent", 250),
        (BAD, "failed", 550),
    ]
    holds_for(
        lambda: len(upstream.transactions) == 1 and others(queue_id) == [],
        1.5,
        "no DSN without [bounce]",
    )


# -- a rejected password holds the mail; notify; release ---------------------------------------


def _auth_msmtprc(port: int, password: str) -> None:
    write_msmtprc(
        f"account default\nhost 127.0.0.1\nport {port}\nfrom {SENDER}\n"
        f"auth on\nuser user\npassword {password}\n\n"
        f"account other\nhost 127.0.0.1\nport {port}\nfrom other@example.org\n"
    )


def test_auth_rejected_holds_notifies_and_release_delivers(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    notifier = Notifier(tmp_path)
    _settings_file(notifier.settings())
    features = Features(auth=("SCRAM-SHA-256",))  # without TLS, `auth on` uses only SCRAM
    with UpstreamServer(timeout=20, features=features, users=AUTH_USERS) as server:
        _auth_msmtprc(server.port, "wrong-password")
        notifier.gate.touch()  # the notify command blocks until the gate goes
        start_daemon()
        held = submit()
        eventually(state_is(held, "held"), 10, "state held")
        assert "authentication failed" in str(column(held, "reason"))
        (call,) = eventually(notifier.calls, 10, "the notify command")
        assert_called(call, held, "held", "default")
        assert [a.success for a in server.auth_attempts] == [False]

        other = submit("-a", "other")  # another account delivers while the notifier blocks
        eventually(state_is(other, "sent"), 5, "the other account's mail sent")
        assert not notifier.done.exists(), "delivery waited for the notify command"
        notifier.gate.unlink()
        eventually(notifier.done.exists, 10, "the notify command to end")

        _auth_msmtprc(server.port, AUTH_USERS["user"])
        released = run_relayd("queue", "release", held)
        assert released.returncode == 0, released.stderr
        eventually(state_is(held, "sent"), 10, "the released message sent")
        senders = [t.mail_from for t in server.transactions]
        assert sorted(senders) == sorted(["other@example.org", SENDER])
        assert [a.success for a in server.auth_attempts] == [False, True]
    assert len(notifier.calls()) == 1  # held once; sending after the release notifies nobody


# -- DSNs to the sender ----------------------------------------------------------------------------


def test_a_failed_recipient_is_reported_to_the_sender(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    _settings_file('[bounce]\nmode = "sender"\n')
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=BAD)
    start_daemon()
    queue_id = submit_to((GOOD, BAD))
    eventually(state_is(queue_id, "failed"), 10, "state failed")
    (report,) = eventually(lambda: bounces(upstream), 10, "a DSN with MAIL FROM:<>")
    assert report.rcpt_tos == (SENDER,)
    (original,) = [t for t in upstream.transactions if t.mail_from != ""]
    assert original.rcpt_tos == (GOOD,)
    assert_failed_report(parse(report.data), BAD)
    (dsn_id,) = others(queue_id)
    eventually(state_is(dsn_id, "sent"), 10, "the DSN's queue entry sent")
    stored = message(dsn_id)
    assert (stored.sender, stored.account, stored.recipients) == ("", "default", [(SENDER, "sent")])
    holds_for(lambda: len(bounces(upstream)) == 1, 1.0, "exactly one DSN")


@pytest.mark.parametrize("null_path", ["<>", ""])
def test_no_dsn_for_mail_from_the_null_sender(
    null_path: str, upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    _settings_file('[bounce]\nmode = "sender"\n')
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=BAD)
    start_daemon()
    queue_id = submit_to((BAD,), "-f", null_path)
    assert message(queue_id).sender == ""
    eventually(state_is(queue_id, "failed"), 10, "state failed")
    assert "MAIL FROM:<>" in upstream.commands
    holds_for(
        lambda: others(queue_id) == [] and upstream.transactions == [],
        1.5,
        "no DSN for a message from <>",
    )


def test_no_dsn_about_a_dsn_that_fails(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    loser = "loser@example.org"  # refuses everything, the DSN about its own message too
    _settings_file('[bounce]\nmode = "sender"\n')
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=BAD)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=loser)
    start_daemon()
    queue_id = submit_to((BAD,), "-f", loser)
    assert message(queue_id).sender == loser
    eventually(state_is(queue_id, "failed"), 10, "state failed")
    (dsn_id,) = eventually(lambda: others(queue_id), 10, "a DSN queued")
    eventually(state_is(dsn_id, "failed"), 10, "the DSN failed")
    assert (message(dsn_id).sender, message(dsn_id).recipients) == ("", [(loser, "failed")])
    holds_for(
        lambda: others(queue_id) == [dsn_id] and upstream.transactions == [],
        1.5,
        "no DSN about a DSN",
    )


def test_bounce_to_a_maildir(
    tmp_path: Path, upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    maildir = tmp_path / "bounces"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    _settings_file(f"[bounce]\nmode = {toml_string(f'maildir:{maildir}')}\n")
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=REFUSED), address=BAD)
    start_daemon()
    queue_id = submit_to((GOOD, BAD))
    eventually(state_is(queue_id, "failed"), 10, "state failed")
    (delivered,) = eventually(lambda: list((maildir / "new").iterdir()), 10, "a DSN in new/")
    assert_failed_report(parse(delivered.read_bytes()), BAD)
    holds_for(
        lambda: bounces(upstream) == [] and len(list((maildir / "new").iterdir())) == 1,
        1.0,
        "the DSN goes only to the Maildir",
    )
    assert list((maildir / "tmp").iterdir()) == []
    (original,) = upstream.transactions
    assert original.rcpt_tos == (GOOD,)


# -- the delay notice ------------------------------------------------------------------------------


def test_one_delay_notice_after_warn_after(
    tmp_path: Path, upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    notifier = Notifier(tmp_path)
    _settings_file(
        '[retry]\nfirst = 1\nwarn_after = "2s"\n[bounce]\nmode = "sender"\n' + notifier.settings()
    )
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply=LATER), address=GOOD)  # the notice to SENDER gets through
    start_daemon()
    queue_id = submit()
    created = float(column(queue_id, "created_at"))  # type: ignore[arg-type]
    (notice,) = eventually(lambda: bounces(upstream), 15, "a delay notice")
    arrived = time.time()
    assert arrived - created >= 2.0
    assert notice.rcpt_tos == (SENDER,)
    _, per_recipient, headers = report_parts(parse(notice.data))
    (block,) = per_recipient
    assert squeezed(block["Final-Recipient"]) == f"rfc822;{GOOD}"
    assert str(block["Action"]).strip().lower() == "delayed"
    assert re.fullmatch(r"4\.\d{1,3}\.\d{1,3}", str(block["Status"]).strip()), block["Status"]
    assert_original_headers(headers)
    (call,) = eventually(notifier.calls, 10, "the notify command")
    assert_called(call, queue_id, "delayed", "default")

    for _ in range(2):  # two more temporary failures: no second notice
        tried = attempts(queue_id)
        flushed = run_relayd("queue", "flush", queue_id)
        assert flushed.returncode == 0, flushed.stderr
        eventually(attempted_since(queue_id, tried), 10, "one more attempt")
    holds_for(
        lambda: len(bounces(upstream)) == 1 and len(notifier.calls()) == 1,
        1.0,
        "one delay notice per message",
    )
    assert message(queue_id).recipients == [(GOOD, "pending")]  # still being retried
    (dsn_id,) = others(queue_id)
    assert message(dsn_id).sender == ""
