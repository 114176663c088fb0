"""`relayd oauth2 authorize`'s two flows: the device code (RFC 8628) and the loopback redirect
with PKCE (RFC 8252, RFC 7636), both through Authlib's OAuth2 client; they return the tokens."""

from __future__ import annotations

import time

from relayd.accounts.oauth2 import (
    AccessToken,
    HttpSession,
    access_token,
    client_secret,
    oauth_client,
)
from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from relayd.settings import OAuth2

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PAGE = b"<!doctype html><title>relayd</title><p>relayd: %s You can close this tab.</p>\n"


def _failed(why: str, code: ExitCode = ExitCode.NOPERM) -> RelaydError:
    return RelaydError(f"authorization failed: {why}", code)


def _with_refresh(token: AccessToken) -> AccessToken:
    if not token.refresh_token:
        raise _failed(
            "the provider sent no refresh token (Google: use a Desktop app client;"
            " Microsoft: keep the offline_access scope)"
        )
    return token


def _oauth_error(exc: Any) -> RelaydError:
    description = f" ({exc.description})" if getattr(exc, "description", None) else ""
    return _failed(f"{exc.error}{description}")


def device_flow(
    account: str,
    client: OAuth2,
    show: Callable[[str], None],
    *,
    timeout: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AccessToken:
    """Ask for a user code, `show` where to enter it, poll the token endpoint until done."""
    from authlib.oauth2 import OAuth2Error

    if not client.device_url:
        raise RelaydError(
            f"oauth2.{account}: no device_url for the device-code flow", ExitCode.CONFIG
        )
    secret = client_secret(account, client)
    session = HttpSession()
    data = {"client_id": client.client_id, "scope": " ".join(client.scopes)}
    response = session.post(client.device_url, data=data)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or response.status_code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise _failed(f"device endpoint: {error or f'HTTP {response.status_code}'}")
    device_code = answer.get("device_code")
    user_code = answer.get("user_code")
    where = answer.get("verification_uri") or answer.get("verification_url")  # Google's name
    if not isinstance(device_code, str) or not isinstance(user_code, str) or not where:
        raise _failed("the device endpoint's answer lacks device_code, user_code or a URL")
    show(f"Open {where} and enter the code {user_code}")
    interval = float(answer.get("interval") or 5)
    deadline = clock() + min(float(answer.get("expires_in") or timeout), timeout)
    oauth = oauth_client(client, secret, timeout=30.0)
    while True:
        started = time.time()
        try:
            token = oauth.fetch_token(
                client.token_url, grant_type=DEVICE_GRANT, device_code=device_code
            )
            return _with_refresh(access_token(token, started))
        except OAuth2Error as exc:
            if exc.error == "slow_down":
                interval += 5  # RFC 8628 §3.5
            elif exc.error != "authorization_pending":
                raise _oauth_error(exc) from None
        if clock() + interval > deadline:
            raise _failed("the code expired before it was entered", ExitCode.TEMPFAIL)
        sleep(interval)


def redirect_flow(
    account: str,
    client: OAuth2,
    show: Callable[[str], None],
    *,
    port: int = 0,
    timeout: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
) -> AccessToken:
    """Listen on 127.0.0.1, `show` the authorization URL (PKCE S256, a fresh state), take the
    code from the browser's redirect and exchange it with the verifier."""
    import http.server
    import urllib.parse

    from authlib.common.security import generate_token
    from authlib.oauth2 import OAuth2Error

    if not client.authorize_url:
        raise RelaydError(
            f"oauth2.{account}: no authorize_url for the redirect flow", ExitCode.CONFIG
        )
    secret = client_secret(account, client)
    arrived: list[str] = []

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.urlsplit(self.path).query
            fields = urllib.parse.parse_qs(query)
            if "code" not in fields and "error" not in fields:
                self.send_error(404)
                return
            arrived.append(self.path)
            ok = "code" in fields
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            said = b"authorized." if ok else b"authorization refused."
            self.wfile.write(PAGE % said)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the request line holds the code."""

    try:
        server = http.server.HTTPServer(("127.0.0.1", port), Callback)
    except OSError as exc:
        raise RelaydError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", ExitCode.UNAVAILABLE
        ) from None
    with server:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/"
        oauth = oauth_client(client, secret, redirect_uri=redirect_uri, timeout=30.0)
        verifier = generate_token(64)
        extra = (
            {"access_type": "offline", "prompt": "consent"} if client.provider == "google" else {}
        )
        url, state = oauth.create_authorization_url(
            client.authorize_url, code_verifier=verifier, **extra
        )
        show(url)
        deadline = clock() + timeout
        while not arrived:
            left = deadline - clock()
            if left <= 0:
                raise _failed("no answer from the browser in time", ExitCode.TEMPFAIL)
            server.timeout = min(left, 1.0)
            server.handle_request()
    fields = urllib.parse.parse_qs(urllib.parse.urlsplit(arrived[0]).query)
    if "error" in fields:
        raise _failed(fields["error"][0])
    started = time.time()
    try:
        token = oauth.fetch_token(
            client.token_url,
            authorization_response=redirect_uri.rstrip("/") + arrived[0],
            state=state,
            code_verifier=verifier,
        )
    except OAuth2Error as exc:  # also Authlib's state mismatch
        raise _oauth_error(exc) from None
    return _with_refresh(access_token(token, started))
