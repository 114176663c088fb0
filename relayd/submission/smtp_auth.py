"""The SMTP listener's AUTH passwords: scrypt hashes in `[listen] users`, or python keyring."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os

from relayd.accounts.keyrings import keyring_lookup
from relayd.settings_values import KEYRING, scrypt_parts
from relayd.text import sanitize

log = logging.getLogger("relayd.smtp")

SERVICE = "relayd-listen"  # python keyring's service for a "keyring" user; username: the user
KEYRING_TIMEOUT = 10.0
FAILURE_DELAY = 1.0  # seconds before the 535 of a failed AUTH: guessing stays slow
_N, _R, _P = 1 << 14, 8, 1
# checked for an unknown user, so that its answer takes as long as a known user's
_UNKNOWN = f"scrypt$n={_N},r={_R},p={_P}${'A' * 22}==${'A' * 43}="


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$n=16384,r=8,p=1$SALT$HASH` (base64) for `password`, with a fresh salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt$n={_N},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify(password: bytes, stored: str) -> bool:
    """Whether `password` (UTF-8) matches the scrypt hash `stored`, compared in constant time."""
    parts = scrypt_parts(stored)
    if parts is None:
        return False
    n, r, p, salt, digest = parts
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    got = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=maxmem)
    return hmac.compare_digest(got, digest)


def keyring_secret(user: str) -> str | None:
    """The password python keyring holds for `user` (service relayd-listen); why not, logged."""
    notes: list[str] = []
    secret = keyring_lookup(SERVICE, user, timeout=KEYRING_TIMEOUT, notes=notes)
    for note in notes:
        log.warning("AUTH user %s: %s", sanitize(user), note)
    if secret is None and not notes:
        log.warning("AUTH user %s: not in python keyring (service %s)", sanitize(user), SERVICE)
    return secret


def check(users: tuple[tuple[str, str], ...] | None, login: bytes, password: bytes) -> bool:
    """Whether `login` and `password` are one of `users` (blocking: scrypt, keyring)."""
    user = login.decode("utf-8", "surrogateescape")
    stored = dict(users or ()).get(user)
    if stored is None:
        verify(password, _UNKNOWN)
        return False
    if stored == KEYRING:
        secret = keyring_secret(user)
        return secret is not None and hmac.compare_digest(secret.encode("utf-8"), password)
    return verify(password, stored)
