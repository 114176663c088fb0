"""Offline rules of the retry policy, with injected times: network-down failures and lifetime,
the one delay notice, and how the drain step turns them into the message's next state."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.daemon import drain, retry
from relayd.delivery import classify
from relayd.delivery.result import DeliveryResult, Disposition, Event, RecipientResult
from relayd.settings import Settings
from relayd.store.queued import Outcome, State
from relayd.sysexits import ExitCode
from tests.test_retry_drain import CREATED, DAY, HOUR, MINUTE, POLICY, queued

LIFETIME = POLICY.lifetime


def offline(address: str = "a@x.test") -> DeliveryResult:
    """What the session reports when the server cannot be reached at all."""
    failure = classify.classify(Event.CONNECT, target="mx.example, port 25", reason="refused")
    return classify.for_all(failure, [address])


def test_only_failures_before_any_server_answered_are_network_failures() -> None:
    assert offline().network
    host = classify.classify(Event.HOST_NOT_FOUND, host="mx.example", reason="no route")
    assert classify.for_all(host, ["a@x.test"]).network
    read = classify.io_failure(None, writing=False)  # a server answered, then went away
    assert not classify.for_all(read, ["a@x.test"]).network
    assert not classify.for_all(classify.classify(Event.GREETING), ["a@x.test"]).network


@pytest.mark.parametrize("network", [False, True])
def test_before_the_lifetime_nothing_fails_whatever_the_failure(network: bool) -> None:
    now = CREATED + LIFETIME - 1
    assert retry.next_attempt(CREATED, now, POLICY, network=network, previous=now - HOUR) == (
        now + HOUR
    )


def test_past_the_lifetime_a_server_failure_ends_the_message() -> None:
    now = CREATED + LIFETIME + 1
    assert retry.next_attempt(CREATED, now, POLICY, network=False, previous=now - HOUR) is None


def test_a_machine_asleep_past_the_lifetime_gets_another_backoff_when_offline() -> None:
    """The laptop slept for a week: the first attempt after it finds no network."""
    now = CREATED + 7 * DAY
    previous = CREATED + 10 * MINUTE  # the last attempt before the sleep
    assert retry.next_attempt(CREATED, now, POLICY, network=True, previous=previous) == now + HOUR
    assert retry.next_attempt(CREATED, now, POLICY, network=True, previous=None) == now + HOUR


def test_still_offline_an_hour_later_past_the_lifetime_the_message_fails() -> None:
    previous = CREATED + LIFETIME + 5
    now = previous + HOUR
    assert retry.next_attempt(CREATED, now, POLICY, network=True, previous=previous) is None


@given(
    age=st.floats(min_value=0, max_value=30 * DAY),
    gap=st.floats(min_value=0, max_value=10 * DAY),
    network=st.booleans(),
)
def test_no_message_fails_before_its_lifetime(age: float, gap: float, network: bool) -> None:
    now = CREATED + age
    when = retry.next_attempt(CREATED, now, POLICY, network=network, previous=now - gap)
    if age < LIFETIME:
        assert when is not None and POLICY.first <= when - now <= POLICY.max


def test_the_delay_notice_goes_once_after_warn_after() -> None:
    policy = dataclasses.replace(POLICY, warn_after=4 * HOUR)
    early, late = CREATED + HOUR, CREATED + 4 * HOUR
    assert not retry.needs_delay_notice(CREATED, early, policy, sent=False)
    assert retry.needs_delay_notice(CREATED, late, policy, sent=False)
    assert not retry.needs_delay_notice(CREATED, late, policy, sent=True)
    assert not retry.needs_delay_notice(CREATED, late + DAY, POLICY, sent=False)  # off


def _settings(warn_after: int | None = None) -> Settings:
    return Settings(
        database="sqlite:///unused.sqlite3",
        retry=dataclasses.replace(POLICY, warn_after=warn_after),
    )


def test_outcome_remembers_a_network_failure_and_asks_for_the_delay_notice() -> None:
    message = queued("a@x.test")
    result = offline()
    updates = drain.recipient_updates(drain.pending(message), result)
    now = CREATED + 5 * HOUR
    outcome = drain.outcome_for(message, updates, result, now, _settings(warn_after=4 * HOUR))
    assert outcome == Outcome(
        State.QUEUED,
        next_attempt_at=now + HOUR,
        reason=result.error,
        network_failure=True,
        delay_notified=True,
    )
    notified = dataclasses.replace(message, delay_notified=True)
    again = drain.outcome_for(notified, updates, result, now, _settings(warn_after=4 * HOUR))
    assert not again.delay_notified


def test_outcome_after_a_sleep_past_the_lifetime_keeps_the_mail() -> None:
    message = dataclasses.replace(queued("a@x.test"), last_attempt_at=CREATED + MINUTE)
    result = offline()
    updates = drain.recipient_updates(drain.pending(message), result)
    now = CREATED + 6 * DAY
    assert drain.outcome_for(message, updates, result, now, _settings()).state is State.QUEUED
    expired = dataclasses.replace(message, last_attempt_at=CREATED + LIFETIME + 1)
    final = drain.outcome_for(expired, updates, result, now, _settings())
    assert final.state is State.FAILED and final.reason == f"lifetime expired: {result.error}"


def test_a_451_past_the_lifetime_fails_even_right_after_a_sleep() -> None:
    message = dataclasses.replace(queued("a@x.test"), last_attempt_at=CREATED + MINUTE)
    reply = classify.classify(Event.RCPT, None, address="a@x.test")
    result = DeliveryResult(
        Disposition.RETRY,
        ExitCode.UNAVAILABLE,
        reply.error,
        None,
        (RecipientResult("a@x.test", Disposition.RETRY, None, reply.error),),
    )
    updates = drain.recipient_updates(drain.pending(message), result)
    outcome = drain.outcome_for(message, updates, result, CREATED + 6 * DAY, _settings())
    assert outcome.state is State.FAILED
