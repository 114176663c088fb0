"""SMTP AUTH as msmtp 1.8.23 does it: the method choice and the SASL exchanges, over one loop."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from relayd.delivery.auth_methods import IMPLEMENTED
from relayd.delivery.classify import Failure, classify
from relayd.delivery.result import Event, Reply

# msmtp 1.8.23 (GNU SASL build) with TLS active; DIGEST-MD5 and NTLM would follow CRAM-MD5 and
# LOGIN there. Without TLS only SCRAM is chosen. GSSAPI, EXTERNAL and OAuth are never automatic.
_CHOICE_WITH_TLS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "LOGIN")
_CHOICE_WITHOUT_TLS = ("SCRAM-SHA-256", "SCRAM-SHA-1")

#: Sends one line of the exchange and returns the server's reply; `secret` masks it in -d output.
Exchange = Callable[[str, bool], Awaitable[Reply]]


def not_compiled_in(configured: str | None) -> Failure | None:
    """msmtp checks an explicitly configured method before connecting."""
    if configured and configured not in IMPLEMENTED:
        return classify(Event.AUTH_NOT_COMPILED_IN, method=configured)
    return None


def choose(configured: str, offered: frozenset[str], tls: bool) -> str | Failure:
    """The method to use: the configured one if the server offers it, else msmtp's choice."""
    if configured:
        if configured not in offered:
            return classify(Event.AUTH_METHOD_NOT_OFFERED, method=configured)
        return configured
    for method in _CHOICE_WITH_TLS if tls else _CHOICE_WITHOUT_TLS:
        if method in offered:
            return method
    event = Event.AUTH_NO_USABLE_METHOD if tls else Event.AUTH_NO_SECURE_METHOD
    return classify(event)


def needs_password(method: str) -> bool:
    """Every implemented method but EXTERNAL needs a password (a token for the OAuth ones)."""
    return method != "EXTERNAL"


class Mechanism:
    """One SASL client: an optional initial response, then one answer per 334 challenge."""

    name = ""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def initial(self) -> bytes | None:
        """Sent with the AUTH command (None: wait for the first challenge)."""
        return None

    def answer(self, challenge: bytes, step: int) -> bytes:
        raise NotImplementedError

    def finished(self) -> bool:
        """Whether a 235 is acceptable now (SCRAM: only after the server proved itself)."""
        return True


class Plain(Mechanism):
    name = "PLAIN"

    def initial(self) -> bytes:
        return f"\0{self.user}\0{self.password}".encode()

    def answer(self, challenge: bytes, step: int) -> bytes:
        return self.initial()


class Login(Mechanism):
    name = "LOGIN"

    def answer(self, challenge: bytes, step: int) -> bytes:
        return (self.user if step == 0 else self.password).encode()


class CramMd5(Mechanism):
    name = "CRAM-MD5"

    def answer(self, challenge: bytes, step: int) -> bytes:
        digest = hmac.new(self.password.encode(), challenge, "md5").hexdigest()
        return f"{self.user} {digest}".encode()


class Rejected(Exception):
    """The server's challenge proves it does not know the user (a SCRAM signature mismatch)."""


class Scram(Mechanism):
    """SCRAM-SHA-1/256 without channel binding, as GNU SASL runs it for msmtp: the client-first
    message answers an empty challenge, and the server-final one is answered with nothing."""

    def __init__(self, name: str, user: str, password: str) -> None:
        super().__init__(user, password)
        self.name = name
        # scramp (with asn1crypto, ~5 MiB) only when an account uses SCRAM: the daemon runs
        # for good, and most accounts authenticate with PLAIN over TLS.
        import scramp

        self._client: Any = scramp.ScramClient([name], user, password)
        self._verified = False

    def answer(self, challenge: bytes, step: int) -> bytes:
        from scramp import ScramException  # loaded by __init__

        try:
            if step == 0:
                return str(self._client.get_client_first()).encode()
            if step == 1:
                self._client.set_server_first(challenge.decode())
                return str(self._client.get_client_final()).encode()
            self._client.set_server_final(challenge.decode())  # raises unless the server knew us
        except ScramException as exc:
            raise Rejected(str(exc)) from exc
        self._verified = True
        return b""

    def finished(self) -> bool:
        return self._verified


class XOAuth2(Mechanism):
    name = "XOAUTH2"
    error_challenge = False  # the server sent its JSON error: the token was refused

    def answer(self, challenge: bytes, step: int) -> bytes:
        if step == 0:
            return f"user={self.user}\1auth=Bearer {self.password}\1\1".encode()
        self.error_challenge = True
        return b""  # the error challenge (JSON) is answered empty; the server then says 535


class OAuthBearer(Mechanism):
    name = "OAUTHBEARER"
    error_challenge = False  # as XOAuth2's

    def __init__(self, user: str, password: str, host: str, port: int) -> None:
        super().__init__(user, password)
        self.host, self.port = host, port

    def initial(self) -> bytes:
        gs2 = f"n,a={self.user},"
        return (
            f"{gs2}\1host={self.host}\1port={self.port}\1auth=Bearer {self.password}\1\1".encode()
        )

    def answer(self, challenge: bytes, step: int) -> bytes:
        self.error_challenge = True
        return b""  # msmtp answers the error challenge with an empty line (RFC 7628 says %x01)


class External(Mechanism):
    name = "EXTERNAL"

    def answer(self, challenge: bytes, step: int) -> bytes:
        return self.user.encode()


def token_refused(mech: Mechanism, failure: Failure) -> bool:
    """Whether a bearer token was refused as a token (it may have expired or been revoked): the
    server sent the JSON error challenge (334) or answered 535; worth one fresh token."""
    if not isinstance(mech, XOAuth2 | OAuthBearer) or failure.event is not Event.AUTH_REJECTED:
        return False
    return mech.error_challenge or (failure.reply is not None and failure.reply.code == 535)


def mechanism(method: str, user: str, password: str, host: str, port: int) -> Mechanism:
    if method in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        return Scram(method, user, password)
    if method == "OAUTHBEARER":
        return OAuthBearer(user, password, host, port)
    classes: dict[str, type[Mechanism]] = {
        "PLAIN": Plain,
        "LOGIN": Login,
        "CRAM-MD5": CramMd5,
        "XOAUTH2": XOAuth2,
        "EXTERNAL": External,
    }
    return classes[method](user, password)


async def authenticate(mech: Mechanism, exchange: Exchange) -> Failure | None:
    """Run the exchange: `AUTH M [initial]`, then an answer per 334, until 235 or a failure."""
    initial = mech.initial()
    command = f"AUTH {mech.name}"
    if initial is not None:
        command += " " + (base64.b64encode(initial).decode() or "=")
    reply = await exchange(command, initial is not None)
    step = 0
    while reply.code == 334:
        try:
            challenge = base64.b64decode(reply.lines[0], validate=True)
            answer = mech.answer(challenge, step)
        except (binascii.Error, UnicodeDecodeError):
            return classify(Event.AUTH_BAD_CHALLENGE, method=mech.name)
        except Rejected:
            return classify(Event.AUTH_REJECTED, method=mech.name)
        reply = await exchange(base64.b64encode(answer).decode(), True)
        step += 1
    if reply.code != 235 or not mech.finished():
        return classify(Event.AUTH_REJECTED, reply, method=mech.name)
    return None
