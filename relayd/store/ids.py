"""Short printable queue ids, like Postfix's: 8 base32 digits of time and 4 of randomness."""

from __future__ import annotations

import os

# Crockford's base32: digits and capitals without I, L, O and U, so ids read back unambiguously.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_DIGITS = 8  # milliseconds modulo 2**40: ids sort by arrival within ~34 years
_RANDOM_DIGITS = 4  # 20 random bits: collisions within one millisecond are rare, and retried
QUEUE_ID_LENGTH = _TIME_DIGITS + _RANDOM_DIGITS


# Two base32 digits for each 10-bit value: an id is six lookups (the SMTP listener draws
# hundreds a second), not twelve divisions.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]


def new_queue_id(now: float) -> str:
    """A fresh 12-character id for a message arriving at `now` (Unix seconds)."""
    millis = int(now * 1000) % (1 << (5 * _TIME_DIGITS))
    noise = int.from_bytes(os.urandom(3), "big") >> 4
    pairs = _PAIRS
    return (
        pairs[millis >> 30]
        + pairs[millis >> 20 & 1023]
        + pairs[millis >> 10 & 1023]
        + pairs[millis & 1023]
        + pairs[noise >> 10]
        + pairs[noise & 1023]
    )


def is_queue_id(text: str) -> bool:
    """Whether `text` has the shape of a queue id (for argument checking in the CLI)."""
    return len(text) == QUEUE_ID_LENGTH and all(c in _ALPHABET for c in text)
