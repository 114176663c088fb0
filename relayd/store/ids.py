"""Short printable queue ids, like Postfix's: 8 base32 digits of time and 4 of randomness."""

from __future__ import annotations

import os

# Crockford's base32: digits and capitals without I, L, O and U, so ids read back unambiguously.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_DIGITS = 8  # milliseconds modulo 2**40: ids sort by arrival within ~34 years
_RANDOM_DIGITS = 4  # 20 random bits: collisions within one millisecond are rare, and retried
QUEUE_ID_LENGTH = _TIME_DIGITS + _RANDOM_DIGITS


def new_queue_id(now: float) -> str:
    """A fresh 12-character id for a message arriving at `now` (Unix seconds)."""
    millis = int(now * 1000) % (1 << (5 * _TIME_DIGITS))
    noise = int.from_bytes(os.urandom(3), "big") >> 4
    # Digit by digit, most significant first, without a loop (the SMTP listener draws
    # hundreds of ids a second; a table of digit pairs would cost every sendmail its import).
    a = _ALPHABET
    return "".join(
        (
            a[millis >> 35],
            a[millis >> 30 & 31],
            a[millis >> 25 & 31],
            a[millis >> 20 & 31],
            a[millis >> 15 & 31],
            a[millis >> 10 & 31],
            a[millis >> 5 & 31],
            a[millis & 31],
            a[noise >> 15],
            a[noise >> 10 & 31],
            a[noise >> 5 & 31],
            a[noise & 31],
        )
    )


def is_queue_id(text: str) -> bool:
    """Whether `text` has the shape of a queue id (for argument checking in the CLI)."""
    return len(text) == QUEUE_ID_LENGTH and all(c in _ALPHABET for c in text)
