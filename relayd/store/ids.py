"""Short printable queue ids, like Postfix's: 8 base32 digits of time and 4 of randomness."""

from __future__ import annotations

import os

# Crockford's base32: digits and capitals without I, L, O and U, so ids read back unambiguously.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_DIGITS = 8  # milliseconds modulo 2**40: ids sort by arrival within ~34 years
_RANDOM_DIGITS = 4  # 20 random bits: collisions within one millisecond are rare, and retried
QUEUE_ID_LENGTH = _TIME_DIGITS + _RANDOM_DIGITS


def _base32(value: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_queue_id(now: float) -> str:
    """A fresh 12-character id for a message arriving at `now` (Unix seconds)."""
    millis = int(now * 1000) % (1 << (5 * _TIME_DIGITS))
    noise = int.from_bytes(os.urandom(3), "big") >> 4
    return _base32(millis, _TIME_DIGITS) + _base32(noise, _RANDOM_DIGITS)


def is_queue_id(text: str) -> bool:
    """Whether `text` has the shape of a queue id (for argument checking in the CLI)."""
    return len(text) == QUEUE_ID_LENGTH and all(c in _ALPHABET for c in text)
