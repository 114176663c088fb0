"""SCRAM-SHA-256 for `pgwire`'s login (RFC 5802/7677, no channel binding), by hand.

Why not scramp (a declared dependency): importing it costs ~250 M instructions, three times a
whole Python start, on a path whose budget is 60 ms; the client side is PBKDF2 and three HMACs.
The server's signature is checked, so a server that does not know the password is refused.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os

from relayd.store.pgtarget import Error, Unsupported

MECHANISM = "SCRAM-SHA-256"


class ScramError(Error):
    """The server's side of the exchange is malformed or proves nothing."""


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def _attributes(message: bytes) -> dict[bytes, bytes]:
    """`a=value,b=value` as a dict of bytes."""
    found = {}
    for part in message.split(b","):
        key, equals, value = part.partition(b"=")
        if equals:
            found[key] = value
    return found


class Scram:
    """One client exchange: send `first()`, then `final(server-first)`; then `verify` the
    server-final message."""

    def __init__(self, password: str, user: str = "") -> None:
        if not password.isascii():
            # SASLprep (RFC 4013) would need stringprep tables; psycopg's libpq applies it.
            raise Unsupported("a password with non-ASCII characters")
        self._password = password.encode()
        self._nonce = _b64(os.urandom(18))
        # PostgreSQL takes the user from the startup message: libpq leaves the SCRAM name
        # empty, and so does `pgwire` (other servers want one: RFC 5802's escapes).
        name = user.replace("=", "=3D").replace(",", "=2C").encode()
        self._bare = b"n=" + name + b",r=" + self._nonce
        self._server_signature = b""
        self.verified = False  # the server's signature checked

    def first(self) -> bytes:
        return b"n,," + self._bare

    def final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        nonce, salt, rounds = attrs.get(b"r", b""), attrs.get(b"s", b""), attrs.get(b"i", b"")
        if not nonce.startswith(self._nonce) or nonce == self._nonce or not rounds.isdigit():
            raise ScramError("invalid SCRAM server-first-message")
        try:
            salted = hashlib.pbkdf2_hmac(
                "sha256", self._password, binascii.a2b_base64(salt), int(rounds)
            )
        except (binascii.Error, ValueError):
            raise ScramError("invalid SCRAM salt") from None
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = b"c=biws,r=" + nonce  # biws: base64 of the GS2 header "n,,"
        auth = self._bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth, "sha256")
        return without_proof + b",p=" + _b64(proof)

    def verify(self, server_final: bytes) -> None:
        attrs = _attributes(server_final)
        if b"e" in attrs:
            raise ScramError(f"SCRAM: the server refused: {attrs[b'e'].decode(errors='replace')}")
        expected = _b64(self._server_signature)
        if not self._server_signature or not hmac.compare_digest(attrs.get(b"v", b""), expected):
            raise ScramError(
                "SCRAM: the server's signature is wrong (it does not know the password)"
            )
        self.verified = True
