"""The SMTP listener's AUTH after STARTTLS (SPEC §5, not an open relay): smtplib and Debian's
swaks against a real daemon with `[listen] users` (scrypt hashes, a python keyring user) and a
trustme certificate."""

from __future__ import annotations

import base64
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from relayd.cli import app
from relayd.submission import smtp_auth
from relayd.sysexits import ExitCode
from tests.sendmail_helpers import stored_messages
from tests.test_daemon import Daemon, run_relayd
from tests.test_listener import MESSAGE, listener, start_daemon, upstream

__all__ = ["listener", "start_daemon", "upstream"]  # fixtures

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
KEYRING_PASSWORD = "from the keyring"
Start = Callable[..., tuple[Daemon, int]]


class Secured:
    """A CA the client trusts, the server's certificate files, and `[listen]` lines for them."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "::1", "localhost")
        self.cert, self.key = directory / "cert.pem", directory / "key.pem"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        self.hash = smtp_auth.hash_password(PASSWORD)

    def lines(self, users: str | None = None) -> list[str]:
        users = users or f'{{ alice = "{self.hash}", bob = "keyring" }}'
        return [f"users = {users}", f'tls_cert = "{self.cert}"', f'tls_key = "{self.key}"']

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Secured]:
    """Certificates, and a file keyring (tests/file_keyring.py) holding bob's password."""
    keyring_file = tmp_path / "keyring.json"
    keyring_file.write_text(json.dumps({f"{smtp_auth.SERVICE} bob": KEYRING_PASSWORD}))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.file_keyring.FileKeyring")
    monkeypatch.setenv("RELAYD_TEST_KEYRING", str(keyring_file))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield Secured(tmp_path)


def auth(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> int:
    """One AUTH (smtplib's login tries every mechanism in turn); its code, else it raises."""
    client.user, client.password = user, password
    method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    return client.auth(mechanism, method)[0]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_auth_only_after_starttls_then_mail_is_queued(
    listener: Start, secured: Secured, host: str
) -> None:
    daemon, port = listener(*secured.lines(), host=host)
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("me@example.org") == (530, b"5.7.0 Authentication required")
        plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {plain}")[0] == 538
        client.starttls(context=secured.client_context())
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        assert client.mail("me@example.org")[0] == 530
        client.login("alice", PASSWORD)
        client.sendmail("me@example.org", ["you@example.org"], MESSAGE)
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.starttls(context=secured.client_context())
        client.ehlo("client.example")
        assert auth(client, "LOGIN", "bob", KEYRING_PASSWORD) == 235  # the python keyring user
        client.sendmail("me@example.org", ["them@example.org"], MESSAGE)
    assert len(stored_messages()) == 2
    code, err = daemon.stop()
    assert code == 0, err
    assert PASSWORD not in err and KEYRING_PASSWORD not in err


def test_a_wrong_password_is_535_after_a_delay_and_logged_without_it(
    listener: Start, secured: Secured
) -> None:
    daemon, port = listener(*secured.lines())
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=secured.client_context())
        client.ehlo()
        for mechanism, user, password in (
            ("PLAIN", "alice", "wrong guess"),
            ("LOGIN", "bob", "keyring guess"),
        ):
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                auth(client, mechanism, user, password)
            assert refused.value.smtp_code == 535
            assert b"5.7.8 Authentication credentials invalid" in refused.value.smtp_error
            assert time.monotonic() - started >= smtp_auth.FAILURE_DELAY * 0.9
        with pytest.raises(smtplib.SMTPAuthenticationError):
            auth(client, "PLAIN", "mallory", PASSWORD)
        assert client.mail("me@example.org")[0] == 530
    assert stored_messages() == []
    code, err = daemon.stop()
    assert code == 0, err
    failures = [line for line in err.splitlines() if "SMTP AUTH" in line and "failed" in line]
    assert len(failures) == 3, err
    assert "failed for user alice" in failures[0] and "failed for user mallory" in failures[2]
    assert "guess" not in err and PASSWORD not in err


def test_a_plaintext_password_stops_the_start_and_config_check(
    listener: Start, secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _ = listener(*secured.lines('{ alice = "hunter22" }'), ready=False)
    code, err = daemon.wait()
    config = tmp_path / "relayd.toml"
    assert code == ExitCode.CONFIG
    [line] = err.splitlines()
    assert line.startswith(f"relayd: {config}: listen.users.alice: not a hash"), line
    assert "relayd config hash-password" in line and "hunter22" not in line
    monkeypatch.setenv("RELAYD_CONFIG", str(config))
    checked = run_relayd("config", "check")
    assert checked.returncode == ExitCode.CONFIG, checked
    out = checked.stdout.decode()
    assert f"{config}: line 3: listen.users.alice: not a hash" in out, out
    assert b"hunter22" not in checked.stdout + checked.stderr


def test_config_check_shows_no_hash_and_reports_unusable_tls_files(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "relayd.toml"
    lines = secured.lines(f'{{ alice = "{secured.hash}", bob = "scrypt$n=3" }}')
    config.write_text("[listen]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("RELAYD_CONFIG", str(config))
    result = CliRunner().invoke(app, ["config", "check"])
    assert "listen.users.bob: a malformed scrypt hash" in result.stdout
    assert secured.hash not in result.output
    secured.key.write_text("not a key\n")
    config.write_text("[listen]\n" + "\n".join(secured.lines()) + "\n")
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == ExitCode.CONFIG
    assert f"{config}: line 3: listen.tls_cert {secured.cert} with listen.tls_key" in result.stdout
    assert secured.hash not in result.output


def test_an_unreadable_tls_file_is_one_line_at_start(listener: Start, secured: Secured) -> None:
    secured.cert.unlink()
    daemon, _ = listener(*secured.lines(), ready=False)
    code, err = daemon.wait()
    assert code == ExitCode.IOERR
    # after the submit socket's notes: the listener starts after it
    last = err.splitlines()[-1]
    assert last == f"relayd: cannot read listen.tls_cert: {secured.cert}: no such file or directory"


def test_hash_password_prints_a_hash_that_verifies() -> None:
    result = CliRunner().invoke(app, ["config", "hash-password", "me@example.org"], input="pw\n")
    assert result.exit_code == 0, result.output
    key, _, value = result.stdout.strip().partition(" = ")
    assert key == '"me@example.org"'
    hashed = json.loads(value)
    assert hashed.startswith("scrypt$n=16384,r=8,p=1$")
    assert smtp_auth.verify(b"pw", hashed) and not smtp_auth.verify(b"pw2", hashed)
    assert smtp_auth.check((("me@example.org", hashed),), b"me@example.org", b"pw")
    alone = CliRunner().invoke(app, ["config", "hash-password"], input="pw\n").stdout.strip()
    assert alone != hashed and smtp_auth.verify(b"pw", alone)  # a fresh salt each time
    empty = CliRunner().invoke(app, ["config", "hash-password"], input="\n")
    assert empty.exit_code == ExitCode.DATAERR


@pytest.mark.skipif(
    shutil.which("swaks") is None, reason="swaks not installed (apt-get install swaks)"
)
def test_swaks_starttls_auth_plain_pipelining(listener: Start, secured: Secured) -> None:
    _, port = listener(*secured.lines())
    command = ["swaks", "--server", f"127.0.0.1:{port}", "--tls", "--auth", "PLAIN"]
    command += ["--auth-user", "alice", "--auth-password", PASSWORD, "--pipeline"]
    command += ["--from", "me@example.org", "--to", "you@example.org", "--timeout", "20"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0 Authentication successful" in done.stdout
    assert "250 2.0.0 Ok: queued as" in done.stdout
    assert len(stored_messages()) == 1
