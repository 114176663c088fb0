"""OAuth2 access tokens for XOAUTH2/OAUTHBEARER accounts: refreshed from the keyring, in memory.

An account with `auth xoauth2` or `auth oauthbearer`, no `password`/`passwordeval` and a
relayd.toml `[oauth2.ACCOUNT]` table gets its AUTH token here. `relayd oauth2 authorize ACCOUNT`
(`oauth2_flows`) stores the refresh token in python keyring (the Secret Service on a desktop),
service `relayd-oauth2`, user ACCOUNT. At delivery `Tokens` refreshes the access token with
Authlib's OAuth2 client before it expires (by the local clock at receipt, so a server clock that
is off does not matter), once for all the connections of an account, and keeps it in memory
only: never in the queue, the logs or an exception text. A refused refresh token
(`invalid_grant`) raises `TokenRevoked`, which holds the account's mail with a reason that names
the command to run; an unreachable token endpoint raises `TokenUnavailable` (retried later).
Authlib is imported only when a token is fetched: not on relayd-sendmail's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from relayd.accounts import keyrings, msmtprc
from relayd.errors import ConfigError, RelaydError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # typing costs milliseconds at import
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from relayd.accounts.account import Account
    from relayd.settings import OAuth2

SERVICE = "relayd-oauth2"  # python keyring service of the refresh tokens and client secrets
BEARER_METHODS = frozenset({"XOAUTH2", "OAUTHBEARER"})
LEEWAY = 60.0  # seconds before its expiry that an access token is refreshed
DEFAULT_LIFETIME = 3600.0  # when the token endpoint names none (RFC 6749 makes it optional)
HTTP_TIMEOUT = 30.0


class TokenRevoked(RelaydError):
    """The refresh token is gone or refused for good: only `relayd oauth2 authorize` helps."""

    default_code = ExitCode.NOPERM

    def __init__(self, account: str, why: str) -> None:
        super().__init__(f"OAuth2: {why}: run `relayd oauth2 authorize {account}`")
        self.account = account


class TokenUnavailable(RelaydError):
    """The token endpoint cannot be reached or failed for now: try again later."""

    default_code = ExitCode.TEMPFAIL


def authorize_hint(account: str) -> str:
    """The command that gives `account` a new refresh token."""
    return f"relayd oauth2 authorize {account}"


def managed(account: Account, clients: Mapping[str, OAuth2]) -> OAuth2 | None:
    """The OAuth2 client that supplies `account`'s token, or None (msmtp's password order)."""
    if account.auth not in BEARER_METHODS or account.password is not None:
        return None
    if account.passwordeval or account.id is None:
        return None
    return clients.get(account.id)


# --- secrets in the keyring ---------------------------------------------------------------------


def client_key(account: str) -> str:
    """The keyring user name of `account`'s client secret (service `relayd-oauth2`)."""
    return f"{account}:client"


def client_secret(account: str, client: OAuth2, *, timeout: float = 5.0) -> str | None:
    """The client secret from `client_secret_eval` or the keyring; None for a public client."""
    if client.client_secret_eval:
        found = msmtprc.run_eval(client.client_secret_eval)
        if found is None:
            raise ConfigError(
                f"oauth2.{account}.client_secret_eval: cannot read output of"
                f" '{client.client_secret_eval}'"
            )
        return found
    if client.client_secret_keyring:
        notes: list[str] = []
        found = keyrings.keyring_lookup(SERVICE, client_key(account), timeout=timeout, notes=notes)
        if found is None:
            why = f" ({'; '.join(notes)})" if notes else ""
            raise ConfigError(
                f"oauth2.{account}: no client secret in the keyring (service {SERVICE},"
                f" user {client_key(account)}){why}"
            )
        return found
    return None


def load_refresh_token(account: str, *, timeout: float = 5.0) -> str:
    """The refresh token `relayd oauth2 authorize` stored; TokenRevoked when there is none
    (the keyring's own trouble, such as a locked or absent backend, is in its text)."""
    notes: list[str] = []
    found = keyrings.keyring_lookup(SERVICE, account, timeout=timeout, notes=notes)
    if found is None:
        why = f" ({'; '.join(notes)})" if notes else ""
        raise TokenRevoked(account, f"no refresh token in the keyring for account {account}{why}")
    return found


def store_secret(user: str, secret: str) -> str:
    """Store `secret` under service `relayd-oauth2` in the first usable python keyring
    backend; returns the backend's name. RelaydError (EX_UNAVAILABLE) when there is none."""
    import keyring
    from keyring.backends.chainer import ChainerBackend
    from keyring.errors import KeyringError

    chosen = keyring.get_keyring()
    backends = list(chosen.backends) if isinstance(chosen, ChainerBackend) else [chosen]
    usable = [b for b in backends if keyrings.usable_backend(b)]
    if not usable:
        raise RelaydError(
            "no usable keyring to store the token in (start a Secret Service such as"
            " gnome-keyring, or install a python keyring backend)",
            ExitCode.UNAVAILABLE,
        )
    try:
        usable[0].set_password(SERVICE, user, secret)
    except (KeyringError, NotImplementedError) as exc:
        raise RelaydError(
            f"cannot store the token in the keyring: {type(exc).__name__}", ExitCode.UNAVAILABLE
        ) from None
    return f"{type(usable[0]).__module__}.{type(usable[0]).__qualname__}"


# --- HTTP for Authlib's client ------------------------------------------------------------------


class HttpResponse:
    """What Authlib's OAuth2Client reads of a response: status, JSON, raise_for_status."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise TokenUnavailable(f"OAuth2 token endpoint answered HTTP {self.status_code}")


class HttpSession:
    """The `session` Authlib's OAuth2Client posts through, on urllib (no requests/httpx)."""

    def __init__(self, timeout: float = HTTP_TIMEOUT) -> None:
        self.timeout = timeout

    def post(
        self,
        url: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        **unused: object,
    ) -> HttpResponse:
        import urllib.error
        import urllib.parse
        import urllib.request

        body = urllib.parse.urlencode(dict(data or {}))
        sent = dict(headers or {"Accept": "application/json"})
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:  # Authlib's ClientAuth: client_secret_basic/post or none
            url, sent, body = auth.prepare("POST", url, sent, body)
        request = urllib.request.Request(url, data=body.encode(), headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return HttpResponse(response.status, response.read())
        except urllib.error.HTTPError as exc:  # 4xx carry the OAuth2 error as JSON
            with exc:
                return HttpResponse(exc.code, exc.read())
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TokenUnavailable(f"OAuth2 token endpoint unreachable: {reason}") from None


def oauth_client(
    client: OAuth2, secret: str | None, *, redirect_uri: str | None = None, timeout: float
) -> Any:
    """Authlib's OAuth2Client for `client`, with PKCE (S256) for the redirect flow."""
    from authlib.oauth2.client import OAuth2Client

    return OAuth2Client(
        HttpSession(timeout),
        client_id=client.client_id,
        client_secret=secret,
        # Google and Microsoft both take the secret in the body; a public client sends none.
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=" ".join(client.scopes) or None,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint=client.token_url,
    )


@dataclass(frozen=True)
class AccessToken:
    """An access token and when it expires, by the local clock; the repr hides the token."""

    value: str
    expires_at: float
    refresh_token: str | None = None  # a new one, when the provider rotates them

    def __repr__(self) -> str:
        return f"AccessToken(expires_at={self.expires_at:.0f}, value=<hidden>)"


def access_token(response: Mapping[str, Any], received_at: float) -> AccessToken:
    """The token of a token endpoint's answer; its expiry from `expires_in` and the local time
    it arrived (a server's absolute `expires_at` is on the server's clock: used only alone)."""
    value = response.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenUnavailable("OAuth2 token endpoint sent no access_token")
    try:
        lifetime: float | None = float(response["expires_in"])
    except (KeyError, TypeError, ValueError):
        lifetime = None
    if lifetime is not None and lifetime >= 0:
        expires_at = received_at + lifetime
    elif isinstance(response.get("expires_at"), int | float):
        expires_at = float(response["expires_at"])
    else:
        expires_at = received_at + DEFAULT_LIFETIME
    refresh = response.get("refresh_token")
    return AccessToken(value, expires_at, refresh if isinstance(refresh, str) else None)


def refresh(
    account: str,
    client: OAuth2,
    refresh_token: str,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = HTTP_TIMEOUT,
) -> AccessToken:
    """A new access token for `refresh_token` (blocking: run it in a thread)."""
    from authlib.oauth2 import OAuth2Error

    secret = client_secret(account, client)
    oauth = oauth_client(client, secret, timeout=timeout)
    started = clock()
    try:
        token = oauth.refresh_token(client.token_url, refresh_token=refresh_token)
    except OAuth2Error as exc:
        if exc.error == "invalid_grant":
            raise TokenRevoked(account, "the refresh token was refused (invalid_grant)") from None
        if exc.error in ("temporarily_unavailable", "server_error", "slow_down"):
            raise TokenUnavailable(f"OAuth2 token endpoint: {exc.error}") from None
        raise ConfigError(f"OAuth2 token endpoint refused oauth2.{account}: {exc.error}") from None
    except ValueError:  # Authlib: the answer was not a JSON object
        raise TokenUnavailable("OAuth2 token endpoint sent no JSON token") from None
    return access_token(token, started)


# --- the daemon's tokens ------------------------------------------------------------------------


class Tokens:
    """Access tokens of the OAuth2 accounts, in memory, one refresh at a time per account.

    `password(account)` is the delivery's password source: an OAuth2 account's token (refreshed
    when it expires within `leeway` seconds), any other account's password from `fallback`.
    `renew(account, refused)`: the server refused `refused` (334/535): a new token, refreshed
    only if no other connection has already replaced that one. `clients` gives the current
    [oauth2.*] tables (SIGHUP may change them).
    """

    def __init__(
        self,
        clients: Callable[[], Mapping[str, OAuth2]],
        fallback: Callable[[Account], str | None],
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = LEEWAY,
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        self._clients = clients
        self._fallback = fallback
        self._clock = clock
        self._leeway = leeway
        self._timeout = timeout
        self._cache: dict[str, AccessToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._revoked: dict[str, str] = {}  # account -> the refresh token found refused
        self.refreshes = 0  # token endpoint calls made (tests and logs; never a token)

    async def password(self, account: Account) -> str | None:
        client = managed(account, self._clients())
        if client is None:
            return await asyncio.to_thread(self._fallback, account)
        assert account.id is not None  # managed() says so
        return await self._token(account.id, client, None)

    async def renew(self, account: Account, refused: str) -> str | None:
        client = managed(account, self._clients())
        if client is None:
            return None
        assert account.id is not None
        return await self._token(account.id, client, refused)

    def forget(self, account: str) -> None:
        """Drop `account`'s cached token (a new authorization was stored)."""
        self._cache.pop(account, None)
        self._revoked.pop(account, None)

    async def _token(self, name: str, client: OAuth2, refused: str | None) -> str:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._cache.get(name)
            fresh = cached is not None and cached.expires_at - self._leeway > self._clock()
            if cached is not None and fresh and cached.value != refused:
                return cached.value
            self._cache.pop(name, None)
            token = await asyncio.to_thread(self._refresh, name, client)
            self._cache[name] = token
            return token.value

    def _refresh(self, name: str, client: OAuth2) -> AccessToken:
        stored = load_refresh_token(name)
        if self._revoked.get(name) == stored:  # refused before: do not ask the provider again
            raise TokenRevoked(name, "the refresh token was refused (invalid_grant)")
        self.refreshes += 1
        try:
            token = refresh(name, client, stored, clock=self._clock, timeout=self._timeout)
        except TokenRevoked:
            self._revoked[name] = stored
            raise
        if token.refresh_token and token.refresh_token != stored:
            # The provider rotated it (the old one may stop working); if it cannot be stored,
            # the next refresh tries the old one.
            with contextlib.suppress(RelaydError):
                store_secret(name, token.refresh_token)
        return token
