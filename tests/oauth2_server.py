"""A fake OAuth2 authorization server on 127.0.0.1 for tests: authorize, token and device
endpoints (authorization code with PKCE S256, refresh_token, device_code), revocation, a skewed
clock, a slow refresh; `token_ok` is the bearer check an UpstreamServer uses."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

CLIENT_ID = "relayd-test-client"
CLIENT_SECRET = "test-client-secret-7f3a"


@dataclass
class _State:
    lifetime: int = 3600  # expires_in of each access token
    skew: float = 0.0  # seconds the server's clock is ahead (its expires_at is on that clock)
    refresh_delay: float = 0.0  # seconds a refresh takes (two connections meet in it)
    rotate: bool = False  # each refresh also issues a new refresh token
    interval: int = 0  # the device flow's polling interval
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry (real time)
    refresh_tokens: set[str] = field(default_factory=set)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (challenge, uri)
    devices: dict[str, bool] = field(default_factory=dict)  # device_code -> approved
    user_codes: dict[str, str] = field(default_factory=dict)  # user_code -> device_code
    refreshes: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)  # every token request


class AuthServer:
    """Use as a context manager; `url(path)` names an endpoint; all state under one lock."""

    def __init__(self, **state: Any) -> None:
        self.state = _State(**state)
        self.lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    # -- what tests do -------------------------------------------------------------------------

    def issue_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.state.refresh_tokens.add(token)
        return token

    def revoke_all(self) -> None:
        with self.lock:
            self.state.refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """The provider ends every access token now (the client's clock does not know)."""
        with self.lock:
            self.state.access = dict.fromkeys(self.state.access, 0.0)

    def approve(self, user_code: str) -> None:
        with self.lock:
            self.state.devices[self.state.user_codes[user_code]] = True

    def token_ok(self, user: str, token: str) -> bool:
        with self.lock:
            return self.state.access.get(token, 0.0) > time.time()

    @property
    def refreshes(self) -> int:
        with self.lock:
            return self.state.refreshes

    @property
    def access_tokens(self) -> list[str]:
        with self.lock:
            return list(self.state.access)

    # -- the endpoints -------------------------------------------------------------------------

    def _issue(self, *, refresh: str | None) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(16)
        lifetime = self.state.lifetime
        self.state.access[access] = time.time() + lifetime
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "expires_at": int(time.time() + self.state.skew + lifetime),
        }
        if refresh is not None:
            answer["refresh_token"] = refresh
        return answer

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            with self.lock:
                self.state.refreshes += 1
                delay = self.state.refresh_delay
            time.sleep(delay)
            with self.lock:
                old = form.get("refresh_token", "")
                if old not in self.state.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "revoked"}
                new = None
                if self.state.rotate:
                    self.state.refresh_tokens.discard(old)
                    new = "rt-" + secrets.token_urlsafe(16)
                    self.state.refresh_tokens.add(new)
                return 200, self._issue(refresh=new)
        if grant == "authorization_code":
            with self.lock:
                challenge, uri = self.state.codes.pop(form.get("code", ""), ("", ""))
            verifier = form.get("code_verifier", "").encode()
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if not challenge or computed.decode() != challenge or form.get("redirect_uri") != uri:
                return 400, {"error": "invalid_grant", "error_description": "bad code or PKCE"}
            with self.lock:
                return 200, self._issue(refresh=self._new_refresh_locked())
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            with self.lock:
                approved = self.state.devices.get(form.get("device_code", ""))
                if approved is None:
                    return 400, {"error": "expired_token"}
                if not approved:
                    return 400, {"error": "authorization_pending"}
                return 200, self._issue(refresh=self._new_refresh_locked())
        return 400, {"error": "unsupported_grant_type"}

    def _new_refresh_locked(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        self.state.refresh_tokens.add(token)
        return token

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != CLIENT_ID:
            return 400, {"error": "invalid_client"}
        device_code, user_code = secrets.token_urlsafe(16), secrets.token_hex(4).upper()
        with self.lock:
            self.state.devices[device_code] = False
            self.state.user_codes[user_code] = device_code
            interval = self.state.interval
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.url("/activate"),
            "expires_in": 60,
            "interval": interval,
        }

    def _authorize(self, query: dict[str, str]) -> str:
        """The redirect the user's browser follows after consenting: code and state."""
        assert query.get("response_type") == "code" and query.get("client_id") == CLIENT_ID
        assert query.get("code_challenge_method") == "S256"
        code = secrets.token_urlsafe(12)
        with self.lock:
            self.state.codes[code] = (query["code_challenge"], query["redirect_uri"])
        back = {"code": code, "state": query["state"]}
        return f"{query['redirect_uri']}?{urllib.parse.urlencode(back)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                with server.lock:
                    server.state.requests.append(form)
                path = urllib.parse.urlsplit(self.path).path
                if path == "/token":
                    self._reply(*server._token(form))
                elif path == "/device":
                    self._reply(*server._device(form))
                else:
                    self._reply(404, {"error": "not found"})

            def do_GET(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                if split.path != "/authorize":
                    self._reply(404, {"error": "not found"})
                    return
                target = server._authorize(dict(urllib.parse.parse_qsl(split.query)))
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler


def relayd_toml(server: AuthServer, account: str, secret_command: str) -> str:
    """An [oauth2.ACCOUNT] table for `server`, the client secret printed by `secret_command`."""
    return (
        f"[oauth2.{account}]\n"
        f'token_url = "{server.url("/token")}"\n'
        f'authorize_url = "{server.url("/authorize")}"\n'
        f'device_url = "{server.url("/device")}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f"client_secret_eval = {json.dumps(secret_command)}\n"
        'scopes = ["mail.send", "offline_access"]\n'
    )
