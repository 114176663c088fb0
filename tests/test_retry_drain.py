"""The retry policy and the drain step's bookkeeping as pure functions, with injected times.

`relayd.daemon.retry` turns a message's age into the time of its next attempt (SPEC §4:
clamp(age, first, max), fail after `lifetime`); `relayd.daemon.drain` turns one attempt's
`DeliveryResult` into the recipients' new states and the message's next state. No clock, no
sleep, no server.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.daemon import drain, retry
from relayd.delivery.result import DeliveryResult, Disposition, RecipientResult, Reply
from relayd.settings import Retry, Settings
from relayd.store.queued import Outcome, QueuedMessage, Recipient, RecipientState, State
from relayd.sysexits import ExitCode

SENT, RETRY, FAIL, HOLD = Disposition.SENT, Disposition.RETRY, Disposition.FAIL, Disposition.HOLD
PENDING = RecipientState.PENDING
CREATED = 1_700_000_000.0  # any fixed instant: everything below is relative to it
MINUTE, HOUR, DAY = 60, 3600, 86400
POLICY = Retry(first=MINUTE, max=HOUR, lifetime=5 * DAY)
SETTINGS = Settings(database="sqlite:///unused.sqlite3", retry=POLICY)

OK_250 = Reply(250, ("2.0.0 Ok: queued",))
RCPT_550 = Reply(550, ("5.1.1 no such user",))
RCPT_451 = Reply(451, ("4.3.0 try later",))
AUTH_535 = Reply(535, ("5.7.8 bad credentials",))


# -- retry: backoff, expiry, next attempt ----------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0, MINUTE),  # brand new: the first retry comes after `first`
        (1, MINUTE),
        (MINUTE - 1, MINUTE),
        (MINUTE, MINUTE),
        (10 * MINUTE, 10 * MINUTE),  # in between: as long as the message is old
        (HOUR - 1, HOUR - 1),
        (HOUR, HOUR),
        (HOUR + 1, HOUR),  # old mail: never less often than every `max`
        (4 * DAY, HOUR),
        (-10 * MINUTE, MINUTE),  # the clock went backwards: treated as age 0
    ],
)
def test_backoff_is_the_age_clamped_to_first_and_max(age: float, expected: float) -> None:
    assert retry.backoff(CREATED, CREATED + age, POLICY) == expected


def test_backoff_returns_a_float_for_integer_policies() -> None:
    value = retry.backoff(0.0, 90.5, POLICY)
    assert isinstance(value, float)
    assert value == 90.5


@pytest.mark.parametrize(
    ("age", "expired"),
    [(0, False), (5 * DAY - 1, False), (5 * DAY - 0.001, False), (5 * DAY, True), (6 * DAY, True)],
)
def test_expired_at_exactly_the_lifetime(age: float, expired: bool) -> None:
    assert retry.expired(CREATED, CREATED + age, POLICY) is expired


@pytest.mark.parametrize(
    ("age", "delay"),
    [(0, MINUTE), (30, MINUTE), (2 * HOUR, HOUR), (5 * DAY - 1, HOUR), (15 * MINUTE, 15 * MINUTE)],
)
def test_next_attempt_is_now_plus_the_backoff(age: float, delay: float) -> None:
    now = CREATED + age
    assert retry.next_attempt(CREATED, now, POLICY) == now + delay


@pytest.mark.parametrize("age", [5 * DAY, 5 * DAY + 1, 30 * DAY])
def test_no_next_attempt_once_the_lifetime_is_over(age: float) -> None:
    assert retry.next_attempt(CREATED, CREATED + age, POLICY) is None


def test_a_short_lifetime_ends_retries_before_the_backoff_reaches_max() -> None:
    policy = Retry(first=MINUTE, max=HOUR, lifetime=10 * MINUTE)
    assert retry.next_attempt(CREATED, CREATED + 9 * MINUTE, policy) == CREATED + 18 * MINUTE
    assert retry.next_attempt(CREATED, CREATED + 10 * MINUTE, policy) is None


def _schedule(policy: Retry) -> list[float]:
    """The attempt times of a message that fails every time, each attempt instantaneous."""
    times = [CREATED]
    while (when := retry.next_attempt(CREATED, times[-1], policy)) is not None:
        times.append(when)
    return times


def test_an_always_failing_message_is_tried_on_a_doubling_then_hourly_schedule() -> None:
    times = _schedule(POLICY)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # first, then the age doubles every attempt until it exceeds max, then every max
    assert gaps[:7] == [60.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0]
    assert set(gaps[7:]) == {float(HOUR)}
    # it gives up on the first attempt at or after the lifetime, not before
    assert times[-2] < CREATED + 5 * DAY <= times[-1]
    assert times[-1] - (CREATED + 5 * DAY) < HOUR
    # the first attempt, 7 growing gaps to age 3840 s, then hourly: 127 attempts in 5 days
    assert times[-1] == CREATED + 3840 + 119 * HOUR
    assert len(times) == 127


@given(
    first=st.integers(min_value=1, max_value=HOUR),
    extra=st.integers(min_value=0, max_value=DAY),
    lifetime=st.integers(min_value=1, max_value=10 * DAY),
    age=st.floats(min_value=-DAY, max_value=20 * DAY, allow_nan=False),
)
def test_backoff_properties(first: int, extra: int, lifetime: int, age: float) -> None:
    policy = Retry(first=first, max=first + extra, lifetime=lifetime)
    now = CREATED + age
    delay = retry.backoff(CREATED, now, policy)
    assert policy.first <= delay <= policy.max
    when = retry.next_attempt(CREATED, now, policy)
    if age >= lifetime:
        assert when is None
    else:
        # never sooner than `first` (offline retries cannot burn the lifetime faster than wall
        # time) and never later than `max`
        assert when is not None
        assert now + policy.first <= when <= now + policy.max


@given(
    first=st.integers(min_value=1, max_value=HOUR),
    extra=st.integers(min_value=0, max_value=2 * HOUR),
    lifetime=st.integers(min_value=1, max_value=2 * DAY),
)
def test_the_schedule_is_increasing_and_ends_only_after_the_lifetime(
    first: int, extra: int, lifetime: int
) -> None:
    policy = Retry(first=first, max=first + extra, lifetime=lifetime)
    times = _schedule(policy)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(policy.first <= gap <= policy.max for gap in gaps)
    assert gaps == sorted(gaps)  # old mail is never retried more often than young mail
    assert times[-1] >= CREATED + lifetime
    assert len(times) == 1 or times[-2] < CREATED + lifetime


# -- drain: pending recipients and their updates ---------------------------------------------------


def queued(
    *recipients: str | Recipient, created_at: float = CREATED, attempts: int = 0
) -> QueuedMessage:
    """A claimed message; plain strings are pending recipients at their position."""
    rows = tuple(
        r if isinstance(r, Recipient) else Recipient(i, r) for i, r in enumerate(recipients)
    )
    return QueuedMessage(
        queue_id="M0TEST",
        state=State.SENDING,
        account="default",
        overrides=(),
        config_file=None,
        sender="me@example.org",
        size=100,
        smtputf8=False,
        eightbit=False,
        created_at=created_at,
        next_attempt_at=None,
        lease_until=created_at + 240,
        lease_owner="test",
        attempts=attempts,
        reason=None,
        uid=None,
        recipients=rows,
    )


def result(
    disposition: Disposition,
    exit_code: ExitCode,
    *recipients: RecipientResult,
    error: str | None = None,
    reply: Reply | None = None,
) -> DeliveryResult:
    return DeliveryResult(disposition, exit_code, error, reply, tuple(recipients))


def test_pending_skips_recipients_already_done() -> None:
    message = queued(
        Recipient(0, "done@x.test", RecipientState.SENT, 250, "ok"),
        Recipient(1, "todo@x.test"),
        Recipient(2, "gone@x.test", RecipientState.FAILED, 550, "no"),
        Recipient(3, "later@x.test", PENDING, 451, "later"),
    )
    assert [r.address for r in drain.pending(message)] == ["todo@x.test", "later@x.test"]
    assert [r.position for r in drain.pending(message)] == [1, 3]


def test_recipient_updates_map_each_disposition_to_a_state() -> None:
    todo = drain.pending(queued("a@x.test", "b@x.test", "c@x.test", "d@x.test"))
    outcome = result(
        FAIL,
        ExitCode.DATAERR,
        RecipientResult("a@x.test", SENT, OK_250),
        RecipientResult("b@x.test", FAIL, RCPT_550),
        RecipientResult("c@x.test", RETRY, RCPT_451),
        RecipientResult("d@x.test", HOLD, None, "authentication failed"),
    )
    assert drain.recipient_updates(todo, outcome) == (
        Recipient(0, "a@x.test", RecipientState.SENT, 250, "2.0.0 Ok: queued"),
        Recipient(1, "b@x.test", RecipientState.FAILED, 550, "5.1.1 no such user"),
        Recipient(2, "c@x.test", PENDING, 451, "4.3.0 try later"),
        Recipient(3, "d@x.test", PENDING, None, "authentication failed"),
    )


def test_recipient_updates_keep_the_positions_of_a_retry() -> None:
    message = queued(
        Recipient(0, "done@x.test", RecipientState.SENT, 250, "ok"),
        Recipient(1, "todo@x.test", PENDING, 451, "later"),
    )
    todo = drain.pending(message)
    outcome = result(SENT, ExitCode.OK, RecipientResult("todo@x.test", SENT, OK_250), reply=OK_250)
    (update,) = drain.recipient_updates(todo, outcome)
    assert update == Recipient(1, "todo@x.test", RecipientState.SENT, 250, "2.0.0 Ok: queued")


def test_recipient_updates_join_multiline_replies() -> None:
    reply = Reply(550, ("5.1.1 first line", "5.1.1 second line"))
    todo = drain.pending(queued("a@x.test"))
    outcome = result(FAIL, ExitCode.DATAERR, RecipientResult("a@x.test", FAIL, reply))
    (update,) = drain.recipient_updates(todo, outcome)
    assert update.reply_text == "5.1.1 first line\n5.1.1 second line"


def test_recipient_updates_refuse_a_result_for_other_recipients() -> None:
    todo = drain.pending(queued("a@x.test", "b@x.test"))
    outcome = result(SENT, ExitCode.OK, RecipientResult("a@x.test", SENT, OK_250))
    with pytest.raises(ValueError):
        drain.recipient_updates(todo, outcome)


# -- drain: where the message goes ----------------------------------------------------------------


def decide(message: QueuedMessage, outcome: DeliveryResult, now: float) -> Outcome:
    updates = drain.recipient_updates(drain.pending(message), outcome)
    return drain.outcome_for(message, updates, outcome, now, SETTINGS)


def test_all_recipients_sent_means_sent() -> None:
    message = queued("a@x.test", "b@x.test")
    outcome = result(
        SENT,
        ExitCode.OK,
        RecipientResult("a@x.test", SENT, OK_250),
        RecipientResult("b@x.test", SENT, OK_250),
        reply=OK_250,
    )
    assert decide(message, outcome, CREATED + 1) == Outcome(State.SENT)


def test_one_refused_recipient_of_two_fails_the_message_when_nothing_is_pending() -> None:
    message = queued("bad@x.test", "good@x.test")
    error = "recipient address bad@x.test not accepted by the server"
    outcome = result(
        FAIL,
        ExitCode.DATAERR,
        RecipientResult("bad@x.test", FAIL, RCPT_550),
        RecipientResult("good@x.test", SENT, OK_250),
        error=error,
        reply=RCPT_550,
    )
    updates = drain.recipient_updates(drain.pending(message), outcome)
    assert [u.state for u in updates] == [RecipientState.FAILED, RecipientState.SENT]
    assert drain.outcome_for(message, updates, outcome, CREATED + 1, SETTINGS) == Outcome(
        State.FAILED, reason=error
    )


def test_a_refused_recipient_waits_for_the_pending_ones() -> None:
    """5xx for one, 250 for one, 4xx for the third: retry the third, decide later."""
    message = queued("bad@x.test", "good@x.test", "later@x.test")
    error = "recipient address bad@x.test not accepted by the server"
    outcome = result(
        FAIL,
        ExitCode.DATAERR,
        RecipientResult("bad@x.test", FAIL, RCPT_550),
        RecipientResult("good@x.test", SENT, OK_250),
        RecipientResult("later@x.test", RETRY, RCPT_451),
        error=error,
        reply=RCPT_550,
    )
    now = CREATED + 10
    assert decide(message, outcome, now) == Outcome(
        State.QUEUED, next_attempt_at=now + MINUTE, reason=error
    )


def test_the_last_pending_recipient_decides_with_the_earlier_states() -> None:
    """A retry that delivers the last pending recipient: failed if an earlier one failed."""
    earlier_failure = queued(
        Recipient(0, "bad@x.test", RecipientState.FAILED, 550, "no"),
        Recipient(1, "later@x.test", PENDING, 451, "later"),
        attempts=1,
    )
    earlier_success = queued(
        Recipient(0, "good@x.test", RecipientState.SENT, 250, "ok"),
        Recipient(1, "later@x.test", PENDING, 451, "later"),
        attempts=1,
    )
    outcome = result(SENT, ExitCode.OK, RecipientResult("later@x.test", SENT, OK_250), reply=OK_250)
    assert decide(earlier_failure, outcome, CREATED + HOUR).state is State.FAILED
    assert decide(earlier_success, outcome, CREATED + HOUR) == Outcome(State.SENT)


@pytest.mark.parametrize(
    ("age", "delay"), [(0, MINUTE), (20 * MINUTE, 20 * MINUTE), (3 * DAY, HOUR)]
)
def test_temporary_failure_queues_again_with_the_next_attempt(age: float, delay: float) -> None:
    message = queued("a@x.test", "b@x.test")
    error = "recipient address a@x.test not accepted by the server"
    outcome = result(
        RETRY,
        ExitCode.UNAVAILABLE,
        RecipientResult("a@x.test", RETRY, RCPT_451),
        RecipientResult("b@x.test", RETRY, RCPT_451),
        error=error,
        reply=RCPT_451,
    )
    now = CREATED + age
    assert decide(message, outcome, now) == Outcome(
        State.QUEUED, next_attempt_at=now + delay, reason=error
    )


def test_connection_failure_keeps_every_recipient_pending() -> None:
    message = queued("a@x.test")
    error = "cannot connect to 127.0.0.1, port 1: Connection refused"
    outcome = result(
        RETRY, ExitCode.TEMPFAIL, RecipientResult("a@x.test", RETRY, None, error), error=error
    )
    (update,) = drain.recipient_updates(drain.pending(message), outcome)
    assert update == Recipient(0, "a@x.test", PENDING, None, error)
    assert decide(message, outcome, CREATED).state is State.QUEUED


def test_hold_keeps_the_reason_and_no_next_attempt() -> None:
    message = queued("a@x.test")
    error = "authentication failed (method PLAIN)"
    outcome = result(
        HOLD,
        ExitCode.NOPERM,
        RecipientResult("a@x.test", HOLD, AUTH_535),
        error=error,
        reply=AUTH_535,
    )
    (update,) = drain.recipient_updates(drain.pending(message), outcome)
    assert update.state is PENDING  # released later, the recipient is still to do
    assert decide(message, outcome, CREATED + 1) == Outcome(State.HELD, reason=error)


def test_hold_wins_even_after_the_lifetime() -> None:
    message = queued("a@x.test")
    outcome = result(
        HOLD,
        ExitCode.UNAVAILABLE,
        RecipientResult("a@x.test", HOLD),
        error="the server does not support TLS via the STARTTLS command",
    )
    assert decide(message, outcome, CREATED + 10 * DAY).state is State.HELD


@pytest.mark.parametrize("age", [5 * DAY, 5 * DAY + 1, 9 * DAY])
def test_temporary_failure_after_the_lifetime_fails_the_message(age: float) -> None:
    message = queued("a@x.test")
    error = "the server did not accept the mail"
    outcome = result(
        RETRY,
        ExitCode.UNAVAILABLE,
        RecipientResult("a@x.test", RETRY, Reply(452, ("4.3.1 full",))),
        error=error,
    )
    assert decide(message, outcome, CREATED + age) == Outcome(
        State.FAILED, reason=f"lifetime expired: {error}"
    )


def test_just_before_the_lifetime_a_temporary_failure_is_retried() -> None:
    message = queued("a@x.test")
    outcome = result(
        RETRY, ExitCode.UNAVAILABLE, RecipientResult("a@x.test", RETRY, RCPT_451), error="x"
    )
    now = CREATED + 5 * DAY - 1
    assert decide(message, outcome, now) == Outcome(
        State.QUEUED, next_attempt_at=now + HOUR, reason="x"
    )


def test_a_permanent_failure_is_final_regardless_of_age() -> None:
    message = queued("a@x.test")
    error = "envelope from address me@example.org not accepted by the server"
    outcome = result(
        FAIL,
        ExitCode.DATAERR,
        RecipientResult("a@x.test", FAIL, Reply(550, ("5.7.1 no",))),
        error=error,
    )
    assert decide(message, outcome, CREATED) == Outcome(State.FAILED, reason=error)


def test_the_retry_settings_come_from_the_settings() -> None:
    settings = Settings(database="sqlite:///x", retry=Retry(first=5, max=10, lifetime=100))
    message = queued("a@x.test")
    outcome = result(RETRY, ExitCode.TEMPFAIL, RecipientResult("a@x.test", RETRY), error="e")
    updates = drain.recipient_updates(drain.pending(message), outcome)
    assert drain.outcome_for(message, updates, outcome, CREATED + 50, settings) == Outcome(
        State.QUEUED, next_attempt_at=CREATED + 60, reason="e"
    )
    assert drain.outcome_for(message, updates, outcome, CREATED + 100, settings).state is (
        State.FAILED
    )
