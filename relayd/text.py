"""Text shown to people or written to logs: the one place control characters are made harmless."""

from __future__ import annotations

# msmtp's sanitize_string: C0 controls and DEL become "?".
LOG_CONTROL = {c: "?" for c in (*range(0x20), 0x7F)}


def sanitize(text: str) -> str:
    """msmtp's sanitize_string: every control character becomes `?`."""
    return text.translate(LOG_CONTROL)
