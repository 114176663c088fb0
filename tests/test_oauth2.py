"""OAuth2 end to end: `relayd oauth2 authorize` against a fake authorization server on loopback,
then delivery to an upstream that checks the bearer token with that server.

Every test runs real processes (relayd, relayd-sendmail, the daemon) with the file keyring of
tests/file_keyring.py; the token endpoint, the upstream and the keyring are real and local.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd import settings
from tests.oauth2_server import CLIENT_SECRET, AuthServer, relayd_toml
from tests.sendmail_helpers import queue_db, run_sendmail, sendmail_env, write_msmtprc
from tests.source_tree import PACKAGE
from tests.test_daemon import (
    MESSAGE,
    RELAYD,
    Daemon,
    eventually,
    message,
    reason,
    run_relayd,
    start_daemon,
    submit,
    upstream,
)
from tests.upstream import Features, UpstreamServer

__all__ = ["start_daemon", "upstream"]  # pytest fixtures, used by name

ACCOUNT = "mail"
USER = "me@example.org"
SERVICE = "relayd-oauth2"


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file keyring every relayd process of the test uses (tests/file_keyring.py)."""
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.file_keyring.FileKeyring")
    monkeypatch.setenv("RELAYD_TEST_KEYRING", str(path))
    monkeypatch.setenv("PYTHONPATH", str(PACKAGE.parent))
    return path


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    with AuthServer(interval=1) as server:
        yield server


def stored(keyring_file: Path) -> dict[str, str]:
    return dict(json.loads(keyring_file.read_text())) if keyring_file.exists() else {}


def configure(
    server: AuthServer,
    smtp: UpstreamServer,
    tmp_path: Path,
    *,
    method: str = "xoauth2",
    extra: str = "",
) -> Path:
    """msmtprc with an OAuth2 account, relayd.toml with its [oauth2.mail] table and a notify
    command writing to the returned file."""
    write_msmtprc(
        f"account {ACCOUNT}\nhost 127.0.0.1\nport {smtp.port}\nfrom {USER}\n"
        f"auth {method}\nuser {USER}\nlogfile {tmp_path / 'relayd.log'}\n"
    )
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    notes = tmp_path / "notes"
    config = Path(os.environ["XDG_CONFIG_HOME"], "relayd", "relayd.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        relayd_toml(server, ACCOUNT, f"cat {secret}")
        + f"[notify]\ncommand = 'echo >> {notes}'\n{extra}"
    )
    return notes


def authorized(server: AuthServer, keyring_file: Path) -> str:
    """A refresh token the server knows, stored where `relayd oauth2 authorize` puts it."""
    token = server.issue_refresh_token()
    keyring_file.write_text(json.dumps({f"{SERVICE} {ACCOUNT}": token}))
    return token


def bearer_upstream(server: AuthServer, method: str = "XOAUTH2") -> UpstreamServer:
    return UpstreamServer(
        timeout=20, features=Features(auth=(method,), auth_required=True), bearer=server.token_ok
    )


def assert_no_secret_anywhere(server: AuthServer, tmp_path: Path, *outputs: bytes) -> None:
    """No access or refresh token in the queue database, the logs or the commands' output."""
    secrets = [*server.access_tokens, *server.state.refresh_tokens]
    assert secrets
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "keyring.json"]
    db = queue_db()
    files += [p for p in db.parent.glob(db.name + "*")]
    for token in secrets:
        for path in files:
            assert token.encode() not in path.read_bytes(), f"a token in {path}"
        for output in outputs:
            assert token.encode() not in output


# -- relayd.toml -------------------------------------------------------------------------------


def test_presets_fill_in_the_providers_endpoints() -> None:
    text = (
        '[oauth2.gmail]\nprovider = "google"\nclient_id = "c"\nclient_secret_eval = "pass x"\n'
        '[oauth2.work]\nprovider = "microsoft"\ntenant = "contoso.example"\nclient_id = "d"\n'
    )
    found, mistakes = settings.check(text, "relayd.toml", default_database="sqlite:///q")
    assert mistakes == []
    gmail, work = found.oauth2["gmail"], found.oauth2["work"]
    assert gmail.token_url == "https://oauth2.googleapis.com/token"
    assert gmail.scopes == ("https://mail.google.com/",)
    assert work.token_url == ("https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token")
    assert work.scopes == ("https://outlook.office.com/SMTP.Send", "offline_access")
    assert work.client_secret_eval is None  # a public client


def test_a_plain_secret_and_incomplete_tables_are_refused_with_the_key() -> None:
    text = (
        '[oauth2.a]\nprovider = "google"\nclient_id = "c"\nclient_secret = "hunter2"\n'
        '[oauth2.b]\ntoken_url = "http://example.org/token"\nclient_id = "c"\n'
        '[oauth2.c]\nprovider = "yahoo"\ncolour = 1\n'
    )
    _, mistakes = settings.check(text, "relayd.toml", default_database="sqlite:///q")
    keys = [m.key for m in mistakes]
    assert keys == [
        "oauth2.a.client_secret",
        "oauth2.b.token_url",
        "oauth2.c.provider",
        "oauth2.c.colour",
    ]
    assert "hunter2" not in " ".join(m.message for m in mistakes)
    assert "client_secret_eval" in mistakes[0].message
    config = Path(os.environ["XDG_CONFIG_HOME"], "relayd", "relayd.toml")
    config.parent.mkdir(parents=True)
    config.write_text(text)
    write_msmtprc()
    checked = run_relayd("config", "check")
    assert checked.returncode == 78
    assert b"oauth2.a.client_secret" in checked.stdout and b"hunter2" not in checked.stdout


def test_config_check_names_a_table_without_its_account(tmp_path: Path) -> None:
    with AuthServer() as server, bearer_upstream(server) as smtp:
        configure(server, smtp, tmp_path)
    config = Path(os.environ["XDG_CONFIG_HOME"], "relayd", "relayd.toml")
    assert run_relayd("config", "check").returncode == 0
    config.write_text(config.read_text().replace(f"[oauth2.{ACCOUNT}]", "[oauth2.mial]"))
    checked = run_relayd("config", "check")
    assert checked.returncode == 78
    assert checked.stdout.decode().splitlines() == [
        f"{config}: line 1: oauth2.mial: no msmtprc account mial"
    ]


# -- relayd oauth2 authorize ---------------------------------------------------------------------


@contextlib.contextmanager
def authorizing(
    server: AuthServer, tmp_path: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`relayd oauth2 authorize mail ARGS` running against `server`; killed at the end."""
    with bearer_upstream(server) as smtp:
        configure(server, smtp, tmp_path)
    env = sendmail_env()
    proc = subprocess.Popen(
        [RELAYD, "oauth2", "authorize", ACCOUNT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=env["HOME"],
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_authorize_by_loopback_redirect_with_pkce_stores_the_refresh_token(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with authorizing(auth_server, tmp_path, "--no-browser", "--timeout", "20") as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith(auth_server.url("/authorize?"))
        assert "code_challenge_method=S256" in url and "redirect_uri=http%3A%2F%2F127.0.0.1" in url
        # The browser: consent, then the provider's redirect back to relayd on loopback.
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b"authorized" in page.read()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    token = stored(keyring_file)[f"{SERVICE} {ACCOUNT}"]
    assert token in auth_server.state.refresh_tokens
    (exchange,) = [r for r in auth_server.state.requests if r.get("grant_type")]
    assert exchange["grant_type"] == "authorization_code" and exchange["code_verifier"]
    assert b"authorized" in err and token.encode() not in out + err


@pytest.mark.parametrize(
    ("answer", "error"),
    [("error=access_denied", "access_denied"), ("code=abc&state=forged", "mismatching_state")],
)
def test_a_refused_or_forged_redirect_stores_nothing(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path, answer: str, error: str
) -> None:
    with authorizing(auth_server, tmp_path, "--no-browser", "--timeout", "20") as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        back = f"{query['redirect_uri'][0]}?{answer}"
        with contextlib.suppress(urllib.error.HTTPError):  # the page says it was refused
            urllib.request.urlopen(back, timeout=10).close()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 77
    shown, failed = err.decode().splitlines()
    assert shown == "Open this address in a browser and allow relayd to send mail:"
    assert failed.startswith(f"relayd: authorization failed: {error}")
    assert stored(keyring_file) == {}
    assert not [r for r in auth_server.state.requests if r.get("grant_type")]


def test_authorize_by_device_code(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with authorizing(auth_server, tmp_path, "--device", "--timeout", "30") as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        found = re.fullmatch(r"Open (\S+) and enter the code (\w+)\n", line)
        assert found and found.group(1) == auth_server.url("/activate"), line
        auth_server.approve(found.group(2))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert stored(keyring_file)[f"{SERVICE} {ACCOUNT}"] in auth_server.state.refresh_tokens


def test_authorize_without_a_table_is_one_line_and_78(keyring_file: Path) -> None:
    write_msmtprc()
    result = run_relayd("oauth2", "authorize", "nothere")
    assert result.returncode == 78
    assert result.stderr.decode().splitlines() == ["relayd: relayd.toml: no [oauth2.nothere] table"]


# -- delivery ------------------------------------------------------------------------------------


def test_two_connections_refresh_once_and_the_token_stays_in_memory(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    auth_server.state.refresh_delay = 0.5  # both connections wait in the same refresh
    with bearer_upstream(auth_server) as smtp:
        configure(auth_server, smtp, tmp_path, extra="[delivery]\nmessages_per_connection = 1\n")
        authorized(auth_server, keyring_file)
        ids = [submit("-odq", "-a", ACCOUNT) for _ in range(4)]
        flushed = run_relayd("queue", "flush", "--wait")
        assert flushed.returncode == 0, reason(ids[0])
        assert len(smtp.transactions) == 4
        assert [a.success for a in smtp.auth_attempts] == [True] * len(smtp.auth_attempts)
        assert len(smtp.auth_attempts) >= 2  # several connections, one token
    assert auth_server.refreshes == 1
    assert all(message(i).state == "sent" for i in ids)
    shown = run_relayd("queue", "show", ids[0])
    assert_no_secret_anywhere(auth_server, tmp_path, flushed.stdout, flushed.stderr, shown.stdout)


def test_a_revoked_refresh_token_holds_the_mail_with_the_command_and_notifies(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with bearer_upstream(auth_server) as smtp:
        notes = configure(auth_server, smtp, tmp_path)
        authorized(auth_server, keyring_file)
        auth_server.revoke_all()
        ids = [submit("-odq", "-a", ACCOUNT) for _ in range(2)]
        flushed = run_relayd("queue", "flush", "--wait")
        assert flushed.returncode != 0
        for queue_id in ids:
            assert message(queue_id).state == "held"
            assert f"run `relayd oauth2 authorize {ACCOUNT}`" in reason(queue_id)
            assert "invalid_grant" in reason(queue_id)
        assert auth_server.refreshes == 1  # asked once, not once per message or connection
        assert smtp.auth_attempts == []  # no AUTH with a token that cannot exist

        def lines() -> list[str]:
            return notes.read_text().splitlines() if notes.exists() else []

        held = eventually(lines, 5, "the notify command")
        assert len(held) == 2 and all("held" in n and "oauth2 authorize" in n for n in held)

        # The user authorizes again and releases: the mail goes.
        authorized(auth_server, keyring_file)
        assert run_relayd("queue", "release", *ids).returncode == 0
        assert run_relayd("queue", "flush", "--wait").returncode == 0
        assert [message(i).state for i in ids] == ["sent", "sent"]


def test_an_unreachable_token_endpoint_keeps_the_mail_queued(
    keyring_file: Path, tmp_path: Path
) -> None:
    with AuthServer() as gone:
        pass  # its port is closed now
    with bearer_upstream(gone) as smtp:
        configure(gone, smtp, tmp_path)
        keyring_file.write_text(json.dumps({f"{SERVICE} {ACCOUNT}": "rt-whatever"}))
        queue_id = submit("-odq", "-a", ACCOUNT)
        flushed = run_relayd("queue", "flush", "--wait")
        assert flushed.returncode == 75, flushed.stderr
    assert message(queue_id).state == "queued"
    assert "token endpoint unreachable" in reason(queue_id)


@pytest.mark.parametrize("method", ["xoauth2", "oauthbearer"])
def test_a_token_the_server_calls_expired_is_refreshed_once_and_auth_retried(
    auth_server: AuthServer,
    keyring_file: Path,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    method: str,
) -> None:
    with bearer_upstream(auth_server, method.upper()) as smtp:
        configure(auth_server, smtp, tmp_path, method=method)
        authorized(auth_server, keyring_file)
        daemon = start_daemon()
        first = submit("-a", ACCOUNT)
        eventually(lambda: message(first).state == "sent", 15, "the first message")
        assert auth_server.refreshes == 1
        # The provider ends the token early: the client's clock still trusts it. The server
        # answers the JSON error challenge (334) and 535; relayd refreshes once and retries.
        auth_server.expire_access_tokens()
        second = submit("-a", ACCOUNT)
        eventually(lambda: message(second).state == "sent", 15, "the second message")
        assert auth_server.refreshes == 2
        assert [a.success for a in smtp.auth_attempts] == [True, False, True]
        code, err = daemon.stop()
    assert code == 0, err
    assert_no_secret_anywhere(auth_server, tmp_path, err.encode())


def test_a_token_refused_twice_holds_after_one_retry(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with UpstreamServer(
        timeout=20, features=Features(auth=("XOAUTH2",)), bearer=lambda user, token: False
    ) as smtp:
        configure(auth_server, smtp, tmp_path)
        authorized(auth_server, keyring_file)
        queue_id = submit("-odq", "-a", ACCOUNT)
        flushed = run_relayd("queue", "flush", "--wait")
        assert flushed.returncode == 77, flushed.stderr  # msmtp's EX_NOPERM for AUTH refused
        assert len(smtp.auth_attempts) == 2 and auth_server.refreshes == 2
    assert message(queue_id).state == "held"
    assert "authentication failed (method XOAUTH2)" in reason(queue_id)


def test_sendmail_odi_delivers_with_a_token_at_once(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with bearer_upstream(auth_server) as smtp:
        configure(auth_server, smtp, tmp_path)
        authorized(auth_server, keyring_file)
        result = run_sendmail(["-odi", "-a", ACCOUNT, "you@example.org"], MESSAGE)
        assert result.returncode == 0, result.stderr
        assert len(smtp.transactions) == 1 and smtp.auth_attempts[0].success
    assert auth_server.refreshes == 1
    assert_no_secret_anywhere(auth_server, tmp_path, result.stdout, result.stderr)


def test_set_secret_then_the_keyring_gives_the_client_secret(
    auth_server: AuthServer, keyring_file: Path, tmp_path: Path
) -> None:
    with bearer_upstream(auth_server) as smtp:
        configure(auth_server, smtp, tmp_path)
        config = Path(os.environ["XDG_CONFIG_HOME"], "relayd", "relayd.toml")
        text = re.sub(
            r"client_secret_eval = .*", "client_secret_keyring = true", config.read_text()
        )
        config.write_text(text)
        env = sendmail_env()
        stored_secret = subprocess.run(
            [RELAYD, "oauth2", "set-secret", ACCOUNT],
            input=CLIENT_SECRET.encode() + b"\n",
            capture_output=True,
            env=env,
            cwd=env["HOME"],
            timeout=30,
        )
        assert stored_secret.returncode == 0, stored_secret.stderr
        assert CLIENT_SECRET.encode() not in stored_secret.stdout + stored_secret.stderr
        assert stored(keyring_file) == {f"{SERVICE} {ACCOUNT}:client": CLIENT_SECRET}
        token = auth_server.issue_refresh_token()
        keyring_file.write_text(json.dumps({**stored(keyring_file), f"{SERVICE} {ACCOUNT}": token}))
        submit("-odq", "-a", ACCOUNT)
        assert run_relayd("queue", "flush", "--wait").returncode == 0
        assert len(smtp.transactions) == 1
