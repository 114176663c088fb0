"""relayd.accounts.oauth2.Tokens against the fake authorization server: when it refreshes (the
local clock, never the server's), once for concurrent callers, rotation, revocation, outages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest

from relayd.accounts import oauth2
from relayd.accounts.account import Account
from relayd.errors import RelaydError
from relayd.settings import OAuth2
from relayd.sysexits import ExitCode
from tests.file_keyring import FileKeyring
from tests.oauth2_server import CLIENT_ID, CLIENT_SECRET, AuthServer

NAME = "mail"


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("RELAYD_TEST_KEYRING", str(path))
    before = keyring.get_keyring()
    keyring.set_keyring(keyring.core.load_keyring(FileKeyring.__module__ + ".FileKeyring"))
    try:
        yield path
    finally:
        keyring.set_keyring(before)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def client(server: AuthServer, tmp_path: Path) -> OAuth2:
    secret = tmp_path / "secret"
    secret.write_text(CLIENT_SECRET + "\n")
    return OAuth2(
        client_id=CLIENT_ID,
        token_url=server.url("/token"),
        device_url=server.url("/device"),
        scopes=("mail.send",),
        client_secret_eval=f"cat {secret}",
    )


def account() -> Account:
    return Account(id=NAME, conffile=None, auth="XOAUTH2", user="me@example.org")


def tokens(server: AuthServer, tmp_path: Path, keyring_file: Path, clock: Clock) -> oauth2.Tokens:
    refresh = server.issue_refresh_token()
    keyring_file.write_text(json.dumps({f"{oauth2.SERVICE} {NAME}": refresh}))
    clients = {NAME: client(server, tmp_path)}
    return oauth2.Tokens(lambda: clients, lambda a: None, clock=clock)


def test_the_token_is_refreshed_a_leeway_before_it_expires_by_the_local_clock(
    tmp_path: Path, keyring_file: Path
) -> None:
    clock = Clock()
    with AuthServer(lifetime=600) as server:
        source = tokens(server, tmp_path, keyring_file, clock)
        first = asyncio.run(source.password(account()))
        assert server.token_ok("", first or "") and server.refreshes == 1
        clock.now += 600 - oauth2.LEEWAY - 1
        assert asyncio.run(source.password(account())) == first
        clock.now += 2
        second = asyncio.run(source.password(account()))
        assert second != first and server.refreshes == 2


@pytest.mark.parametrize("skew", [7200.0, -7200.0])
def test_a_server_clock_that_is_off_changes_nothing(
    tmp_path: Path, keyring_file: Path, skew: float
) -> None:
    clock = Clock()  # far from the server's clock too: only expires_in counts
    with AuthServer(lifetime=600, skew=skew) as server:
        source = tokens(server, tmp_path, keyring_file, clock)
        first = asyncio.run(source.password(account()))
        clock.now += 300
        assert asyncio.run(source.password(account())) == first
        assert server.refreshes == 1


def test_concurrent_callers_share_one_refresh_and_one_renewal(
    tmp_path: Path, keyring_file: Path
) -> None:
    with AuthServer(refresh_delay=0.3) as server:
        source = tokens(server, tmp_path, keyring_file, Clock())

        async def both() -> tuple[list[str | None], list[str | None]]:
            got = await asyncio.gather(*(source.password(account()) for _ in range(2)))
            refused = got[0] or ""
            renewed = await asyncio.gather(*(source.renew(account(), refused) for _ in range(2)))
            return list(got), list(renewed)

        got, renewed = asyncio.run(both())
        assert got[0] == got[1] and renewed[0] == renewed[1] != got[0]
        assert server.refreshes == 2


def test_a_rotated_refresh_token_is_stored_back(tmp_path: Path, keyring_file: Path) -> None:
    with AuthServer(rotate=True) as server:
        source = tokens(server, tmp_path, keyring_file, Clock())
        before = json.loads(keyring_file.read_text())
        asyncio.run(source.password(account()))
        after = json.loads(keyring_file.read_text())
        key = f"{oauth2.SERVICE} {NAME}"
        assert after[key] != before[key] and after[key] in server.state.refresh_tokens


def test_a_revoked_token_is_asked_for_once(tmp_path: Path, keyring_file: Path) -> None:
    with AuthServer() as server:
        source = tokens(server, tmp_path, keyring_file, Clock())
        server.revoke_all()
        for _ in range(3):
            with pytest.raises(oauth2.TokenRevoked) as caught:
                asyncio.run(source.password(account()))
            assert caught.value.exit_code == ExitCode.NOPERM
            assert caught.value.message.endswith(f"run `relayd oauth2 authorize {NAME}`")
        assert server.refreshes == 1


def test_no_stored_token_names_the_command(tmp_path: Path, keyring_file: Path) -> None:
    with AuthServer() as server:
        clients = {NAME: client(server, tmp_path)}
        source = oauth2.Tokens(lambda: clients, lambda a: None)
        with pytest.raises(oauth2.TokenRevoked, match="no refresh token in the keyring"):
            asyncio.run(source.password(account()))
        assert server.refreshes == 0


def test_an_unreachable_endpoint_is_temporary(tmp_path: Path, keyring_file: Path) -> None:
    with AuthServer() as server:
        pass
    source = tokens(server, tmp_path, keyring_file, Clock())
    with pytest.raises(oauth2.TokenUnavailable) as caught:
        asyncio.run(source.password(account()))
    assert caught.value.exit_code == ExitCode.TEMPFAIL


def test_other_accounts_keep_msmtps_password_order(tmp_path: Path, keyring_file: Path) -> None:
    with AuthServer() as server:
        source = tokens(server, tmp_path, keyring_file, Clock())
    plain = Account(id="other", conffile=None, auth="PLAIN", user="u")
    with_eval = Account(id=NAME, conffile=None, auth="XOAUTH2", user="u", passwordeval="x")
    source = oauth2.Tokens(lambda: {NAME: client(server, tmp_path)}, lambda a: "from-fallback")
    assert asyncio.run(source.password(plain)) == "from-fallback"
    assert asyncio.run(source.password(with_eval)) == "from-fallback"
    assert asyncio.run(source.renew(plain, "x")) is None
    assert (
        repr(oauth2.access_token({"access_token": "tok", "expires_in": 5}, 0.0)).count("tok") == 0
    )


def test_storing_without_a_usable_keyring_is_one_clear_error(
    keyring_file: Path,
) -> None:
    keyring.set_keyring(keyring.core.load_keyring("keyring.backends.fail.Keyring"))
    with pytest.raises(RelaydError) as caught:
        oauth2.store_secret(NAME, "rt-secret")
    assert caught.value.exit_code == ExitCode.UNAVAILABLE
    assert "no usable keyring" in caught.value.message and "rt-secret" not in caught.value.message
