"""The retry policy as pure functions of the message's age and the clock (SPEC §4)."""

from __future__ import annotations

from relayd.settings import Retry, Settings

LEASE_FACTOR = 4  # a lease lasts a few delivery timeouts (SPEC §4), never hours


def backoff(created_at: float, now: float, policy: Retry) -> float:
    """Seconds until the next attempt: the message's age, clamped to [first, max] (Postfix's
    rule), so young mail is retried soon and old mail no more often than every `max`."""
    age = max(0.0, now - created_at)
    return float(min(max(age, policy.first), policy.max))


def expired(created_at: float, now: float, policy: Retry) -> bool:
    """Has the message outlived its lifetime (then a temporary failure becomes final)?"""
    return now - created_at >= policy.lifetime


def next_attempt(created_at: float, now: float, policy: Retry) -> float | None:
    """When to try again after a temporary failure at `now`; None once the lifetime is over."""
    if expired(created_at, now, policy):
        return None
    return now + backoff(created_at, now, policy)


def lease_seconds(settings: Settings) -> float:
    """How long a claimed message stays leased to its runner before it may be claimed again."""
    return float(LEASE_FACTOR * settings.delivery.timeout)
