"""One attempt on claimed messages: deliver on one connection, then record and log each result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from relayd.accounts.account import Account
from relayd.daemon import attempt_log, retry
from relayd.daemon.bodies import Bodies, Streamed
from relayd.daemon.recorder import Delivered, Recorder
from relayd.daemon.wirelog import WireLog
from relayd.delivery.result import DeliveryResult, Disposition, Event, Reply
from relayd.delivery.session import (
    DebugSink,
    OutgoingMessage,
    PasswordSource,
    Session,
    TokenRenewal,
)
from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store.interface import RunnerStore
from relayd.store.queued import (
    Attempt,
    AttemptRecord,
    Lease,
    Outcome,
    QueuedMessage,
    Recipient,
    mail_size,
)
from relayd.store.records import RecipientState, State
from relayd.text import readable

_RECIPIENT_STATES = {
    Disposition.SENT: RecipientState.SENT,
    Disposition.FAIL: RecipientState.FAILED,
}
log = logging.getLogger("relayd.daemon.drain")


def pending(message: QueuedMessage) -> tuple[Recipient, ...]:
    """The recipients still to deliver (a retry never resends to those already done)."""
    return tuple(r for r in message.recipients if r.state is RecipientState.PENDING)


def recipient_updates(todo: Sequence[Recipient], result: DeliveryResult) -> tuple[Recipient, ...]:
    """The recipients' new states and last replies; a temporary failure leaves them pending."""
    updates = []
    for recipient, outcome in zip(todo, result.recipients, strict=True):
        reply = outcome.reply
        updates.append(
            Recipient(
                recipient.position,
                recipient.address,
                _RECIPIENT_STATES.get(outcome.disposition, RecipientState.PENDING),
                reply.code if reply else None,
                reply.text if reply else outcome.error,
            )
        )
    return tuple(updates)


def outcome_for(
    message: QueuedMessage,
    updates: Sequence[Recipient],
    result: DeliveryResult,
    now: float,
    settings: Settings,
) -> Outcome:
    """Where the message goes: sent, failed, held, or queued again (SPEC §4)."""
    if result.disposition is Disposition.HOLD:
        return Outcome(State.HELD, reason=result.error)
    states = {r.position: r.state for r in message.recipients}
    states.update({r.position: r.state for r in updates})
    if RecipientState.PENDING not in states.values():
        done = RecipientState.FAILED in states.values()
        return Outcome(State.FAILED if done else State.SENT, reason=result.error if done else None)
    # A connection lost after the final dot: the server may have the message already.
    duplicate = result.possibly_delivered
    policy = settings.retry
    when = retry.next_attempt(
        message.created_at, now, policy, network=result.network, previous=message.last_attempt_at
    )
    if when is None:
        return Outcome(State.FAILED, reason=f"lifetime expired: {result.error}")
    return Outcome(
        State.QUEUED,
        possible_duplicate=duplicate,
        next_attempt_at=when,
        reason=result.error,
        network_failure=result.network,
        delay_notified=retry.needs_delay_notice(
            message.created_at, now, policy, sent=message.delay_notified
        ),
    )


class Throttle(Protocol):
    """An account's pause by its provider's rate limit (`relayd.daemon.limits`)."""

    def halted(self) -> bool:
        """Whether the account is paused now: send nothing more."""
        ...

    async def pause(self, result: DeliveryResult) -> tuple[float, str]:
        """`result` was a rate-limit reply: pause the account; until when, and why."""
        ...


@dataclass
class Drained:
    """What one connection did with its claimed messages.

    `delivered`: each attempt as committed (and messages settled with it: the rest of a batch
    held for a problem only the user can fix). `returned`: messages given back untouched,
    because the connection broke before their data went out. `dead`: the attempt whose
    connection failed before carrying any message (refused, timed out, no greeting…): the
    destination is down, and `dead.outcome` says when to try it again. `paused`: the server
    answered with a rate limit; the account is paused until then (SPEC §8).
    """

    delivered: list[Delivered] = field(default_factory=list)
    returned: tuple[str, ...] = ()
    dead: Delivered | None = None
    paused: float | None = None


async def deliver_claimed(
    store: RunnerStore,
    account: Account,
    messages: Sequence[QueuedMessage],
    settings: Settings,
    *,
    owner: str,
    wire: WireLog | None = None,
    recorder: Recorder | None = None,
    password: PasswordSource | None = None,
    renew: TokenRenewal | None = None,
    debug: DebugSink | None = None,
    prog: str = "relayd",
    clock: Callable[[], float] = time.time,
    throttle: Throttle | None = None,
) -> Drained:
    """Deliver claimed messages of one account on one connection; record and log every attempt.

    Each result goes to the `recorder` as soon as the server's final reply is in, and is
    committed with whatever other results arrived meanwhile (a group commit); the next message
    is sent while it commits. Returns once every result is committed. The lease is renewed
    all along (SPEC §4: it never expires under an open transaction). Before a message's data
    goes out, `wire` (the claim's journal, made before the claim) notes it, so a kill repeats
    with a "possible duplicate" flag exactly the messages that were on the wire. When the
    connection breaks, the messages whose data never went out go back to the queue untouched.
    A rate-limit reply pauses the account through `throttle`: the message that got it waits
    for the pause's end, and so do the rest, untouched.
    """
    recorder = recorder or Recorder(store)
    own_wire = wire is None  # else the caller made it before the claim, and closes it
    wire = wire or WireLog(owner)
    bodies = Bodies(store, messages)
    renewing = asyncio.create_task(_renew(store, owner, retry.lease_seconds(settings), clock))
    drained = Drained()
    sent: list[tuple[Delivered | None, asyncio.Future[bool]]] = []
    unsent: list[QueuedMessage] = []
    committed = False
    # Stored as text: a --host with bytes that are not UTF-8 is shown, not refused.
    host = readable(account.host or account.socket or "")
    try:
        async with Session(
            account,
            password=password,
            renew=renew,
            timeout=settings.delivery.timeout,
            debug=debug,
        ) as session:
            refused = session.failure  # the connection failed before any message
            ahead: OutgoingMessage | None = None  # announced with the previous message's data
            tried: Delivered | None = None  # the last message tried on this connection
            for index, message in enumerate(messages):
                if throttle is not None and throttle.halted():
                    unsent.extend(messages[index:])
                    break
                if tried is not None and not session.alive:
                    held = refused is not None and drained.dead is None
                    if held and drained.paused is None:  # held: hold them all
                        sent.extend(_held_too(recorder, messages[index:], tried, owner))
                    else:
                        unsent.extend(messages[index:])
                    break
                todo = pending(message)
                if not todo:  # nothing left to send (a result recorded earlier): settle it
                    sent.append((None, recorder.record(_settled(message, owner))))
                    continue
                data = await bodies.get(index, ahead=session.alive)  # refused: this one only
                if data is None:  # deleted by the user since the claim
                    continue
                if message.lease_lost:
                    log.warning(
                        "%s: possible duplicate: an earlier attempt ended without a result",
                        message.queue_id,
                    )
                if session.alive:
                    wire.sending(message.queue_id)
                outgoing = ahead or _outgoing(message, todo, data)
                ahead = _ahead(messages, index, bodies)
                started = clock()
                result = await session.send(outgoing, ahead)
                now = clock()
                updates = recipient_updates(todo, result)
                outcome = outcome_for(message, updates, result, now, settings)
                if throttle is not None and result.rate_limited:
                    drained.paused, why = await throttle.pause(result)
                    if outcome.state is State.QUEUED:
                        outcome = replace(outcome, next_attempt_at=drained.paused, reason=why)
                attempt = Attempt(
                    started_at=started,
                    duration=now - started,
                    host=host,
                    tls=account.tls,
                    auth=account.auth is not None,
                    exit_code=int(result.exit_code),
                    reply_code=result.reply.code if result.reply else None,
                    reply=result.reply.text if result.reply else result.error,
                    recipients=updates,
                    possible_duplicate=message.lease_lost,
                )
                future = recorder.record(AttemptRecord(message.queue_id, attempt, outcome, owner))
                addresses = tuple(r.address for r in todo)
                _log(account, message.sender, addresses, data, result, prog)
                head = data.head if isinstance(data, Streamed) else data
                tried = item = Delivered(message, result, outcome, addresses, head)
                sent.append((item, future))
                dead = refused is not None and result.disposition is not Disposition.HOLD
                if dead and drained.paused is None:
                    drained.dead = item
        recorder.flush()  # this connection waits for its results now
        if unsent:
            when = drained.paused
            if drained.dead is not None:
                when = drained.dead.outcome.next_attempt_at or clock() + settings.retry.first
            drained.returned = await asyncio.to_thread(
                store.release_leases,
                [Lease(m.queue_id, owner) for m in unsent],
                clock(),
                next_attempt_at=when,
                network_failure=drained.dead.result.network if drained.dead else None,
            )
        changed = await asyncio.gather(*(future for _, future in sent))
        committed = True
    finally:
        renewing.cancel()
        if own_wire:
            # Results not committed (the store failed throughout a stop): keep the journal
            # for the next start, which returns those leases flagged.
            wire.close(keep=not committed)
    for (entry, _), ok in zip(sent, changed, strict=True):
        if entry is not None:
            drained.delivered.append(entry if ok else replace(entry, changed=False))
    return drained


async def _renew(store: RunnerStore, owner: str, lease: float, clock: Callable[[], float]) -> None:
    """Keep `owner`'s claim leased while its connection works (and its results wait for the
    store): renewed every quarter lease, so two failed renewals in a row still leave time."""
    while True:
        await asyncio.sleep(lease / 4)
        try:
            await asyncio.to_thread(store.extend_lease, owner, clock() + lease)
        except RelaydError as exc:
            log.warning("%s: cannot renew the lease: %s", owner, exc.message)


def _ahead(messages: Sequence[QueuedMessage], index: int, bodies: Bodies) -> OutgoingMessage | None:
    """The next message, if its envelope can ride with this one's data (PIPELINING)."""
    if index + 1 >= len(messages):
        return None
    upcoming = messages[index + 1]
    data = bodies.peek(index + 1)
    todo = pending(upcoming)
    return _outgoing(upcoming, todo, data) if data is not None and todo else None


def _settled(message: QueuedMessage, owner: str) -> AttemptRecord:
    """A message whose recipients are all done: sent or failed, without another attempt."""
    failed = any(r.state is RecipientState.FAILED for r in message.recipients)
    outcome = Outcome(State.FAILED, reason=message.reason) if failed else Outcome(State.SENT)
    return AttemptRecord(message.queue_id, None, outcome, owner)


def _held_too(
    recorder: Recorder, rest: Sequence[QueuedMessage], first: Delivered, owner: str
) -> list[tuple[Delivered | None, asyncio.Future[bool]]]:
    """The connection failed with a problem only the user can fix (the first message was
    held for it): hold the rest of the batch with the same reason, without attempts."""
    held: list[tuple[Delivered | None, asyncio.Future[bool]]] = []
    for message in rest:
        record = AttemptRecord(message.queue_id, None, first.outcome, owner)
        item = Delivered(message, first.result, first.outcome, (), b"")
        held.append((item, recorder.record(record)))
    return held


def _outgoing(
    message: QueuedMessage, todo: Sequence[Recipient], data: bytes | Streamed
) -> OutgoingMessage:
    body = data if isinstance(data, Streamed) else None
    return OutgoingMessage(
        message.sender,
        [r.address for r in todo],
        data.head if isinstance(data, Streamed) else data,
        smtputf8=message.smtputf8,
        eightbit=message.eightbit,
        body=body,
    )


def lmtp_refusals(result: DeliveryResult) -> list[tuple[str, Reply | None]]:
    """(msmtp's error, final reply) for each recipient an LMTP server refused after the data."""
    return [(r.error or "", r.reply) for r in result.recipients if r.event is Event.LMTP_RECIPIENT]


def _log(
    account: Account,
    sender: str,
    recipients: Sequence[str],
    data: bytes | Streamed,
    result: DeliveryResult,
    prog: str,
) -> None:
    """One msmtp-format line to the account's logfile/syslog, if it has one."""
    if not (account.logfile or account.syslog):
        return
    ok = result.disposition is Disposition.SENT
    refused = lmtp_refusals(result)
    # msmtp logs no server reply for an LMTP delivery's end, and one summary error.
    lmtp_end = account.protocol == "lmtp" and (ok or bool(refused))
    summary = attempt_log.LMTP_LOG_ERROR if refused else result.error
    error = None if ok else summary
    info = attempt_log.log_info(
        account,
        envelope_from=sender,
        recipients=recipients,
        exit_code=result.exit_code,
        mailsize=_mail_size(data) if ok else None,
        reply=None if lmtp_end else result.reply,
        error=error,
    )
    attempt_log.write(account, info, exit_code=result.exit_code, prog=prog)


def _mail_size(data: bytes | Streamed) -> int:
    return data.counted.value if isinstance(data, Streamed) else mail_size(data)
