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


def next_attempt(
    created_at: float,
    now: float,
    policy: Retry,
    *,
    network: bool = False,
    previous: float | None = None,
) -> float | None:
    """When to try again after a temporary failure at `now`; None once the lifetime is over.

    A `network` failure (DNS, connect: no server was reached) ends a message's life only if
    its `previous` attempt was already past the lifetime too. So a machine that was asleep or
    offline past the lifetime never fails its mail at the first attempt after it: the mail
    gets another backoff of wall time (with the network watch, a retry as soon as the network
    is back), and being offline never ends a message sooner than the lifetime.
    """
    if expired(created_at, now, policy) and (
        not network or (previous is not None and expired(created_at, previous, policy))
    ):
        return None
    return now + backoff(created_at, now, policy)


def needs_delay_notice(created_at: float, now: float, policy: Retry, *, sent: bool) -> bool:
    """Is a temporary failure at `now` the one that sends the message's delay notice?"""
    return policy.warn_after is not None and not sent and now - created_at >= policy.warn_after


def lease_seconds(settings: Settings) -> float:
    """How long a claimed message stays leased to its runner before it may be claimed again."""
    return float(LEASE_FACTOR * settings.delivery.timeout)
