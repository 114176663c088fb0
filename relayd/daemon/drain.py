"""One attempt on claimed messages: deliver on one connection, then record and log each result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableSet, Sequence
from dataclasses import replace

from relayd.accounts.account import Account
from relayd.daemon import attempt_log, retry
from relayd.daemon.recorder import Delivered, Recorder
from relayd.delivery.result import DeliveryResult, Disposition, Event, Reply
from relayd.delivery.session import DebugSink, OutgoingMessage, PasswordSource, Session
from relayd.settings import Settings
from relayd.store.interface import RunnerStore
from relayd.store.queued import Attempt, AttemptRecord, Outcome, QueuedMessage, Recipient, mail_size
from relayd.store.records import RecipientState, State
from relayd.text import readable

_RECIPIENT_STATES = {
    Disposition.SENT: RecipientState.SENT,
    Disposition.FAIL: RecipientState.FAILED,
}
# Bodies are read from the store a group at a time, at most this many bytes (and at least one
# message) per read: a batch of 100 big messages must not sit in memory at once.
READ_AHEAD_BYTES = 4 << 20

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
    policy = settings.retry
    when = retry.next_attempt(
        message.created_at, now, policy, network=result.network, previous=message.last_attempt_at
    )
    if when is None:
        return Outcome(State.FAILED, reason=f"lifetime expired: {result.error}")
    return Outcome(
        State.QUEUED,
        next_attempt_at=when,
        reason=result.error,
        network_failure=result.network,
        delay_notified=retry.needs_delay_notice(
            message.created_at, now, policy, sent=message.delay_notified
        ),
    )


class _Bodies:
    """The claimed messages' stored bytes, read a bounded group ahead of the one being sent."""

    def __init__(self, store: RunnerStore, messages: Sequence[QueuedMessage]) -> None:
        self._store = store
        self._messages = messages
        self._read: dict[str, bytes] = {}
        self._next = 0  # the first message not read yet

    async def get(self, index: int) -> bytes | None:
        """Message `index`'s bytes (None: deleted meanwhile); forgets the ones before it."""
        queue_id = self._messages[index].queue_id
        if index >= self._next:
            group: list[str] = []
            size = 0
            for message in self._messages[index:]:
                if group and size + message.size > READ_AHEAD_BYTES:
                    break
                group.append(message.queue_id)
                size += message.size
            self._next = index + len(group)
            self._read = await asyncio.to_thread(self._store.read_data_many, group)
        return self._read.pop(queue_id, None)

    def peek(self, index: int) -> bytes | None:
        """Message `index`'s bytes if they are read already (no waiting), else None."""
        if not index < min(self._next, len(self._messages)):
            return None
        return self._read.get(self._messages[index].queue_id)


async def deliver_claimed(
    store: RunnerStore,
    account: Account,
    messages: Sequence[QueuedMessage],
    settings: Settings,
    *,
    owner: str,
    recorder: Recorder | None = None,
    on_wire: MutableSet[str] | None = None,
    password: PasswordSource | None = None,
    debug: DebugSink | None = None,
    prog: str = "relayd",
    clock: Callable[[], float] = time.time,
) -> list[Delivered]:
    """Deliver claimed messages of one account on one connection; record and log every attempt.

    Each result goes to the `recorder` as soon as the server's final reply is in, and is
    committed with whatever other results arrived meanwhile (a group commit); the next message
    is sent while it commits. Returns once every result is committed. A crash repeats only
    messages whose results were not committed: their lease is lost, so their next attempt is
    logged as a possible duplicate. `on_wire` (if given) holds the ids of the messages sent or
    being sent whose results are not committed yet.
    """
    recorder = recorder or Recorder(store)
    bodies = _Bodies(store, messages)
    lease = retry.lease_seconds(settings)
    expiry = min((m.lease_until for m in messages if m.lease_until is not None), default=None)
    sent: list[tuple[Delivered, asyncio.Future[bool]]] = []
    ahead: OutgoingMessage | None = None  # announced with the previous message's data
    async with Session(
        account, password=password, timeout=settings.delivery.timeout, debug=debug
    ) as session:
        for index, message in enumerate(messages):
            data = await bodies.get(index)
            if data is None:  # deleted by the user since the claim
                continue
            if message.lease_lost:
                log.warning(
                    "%s: possible duplicate: an earlier attempt ended without a result",
                    message.queue_id,
                )
            if expiry is not None and clock() >= expiry - lease / 2:
                # A slow server and a long batch: keep the rest leased, or a sweep would give
                # them to another connection while this one still means to send them.
                expiry = clock() + lease
                await asyncio.to_thread(store.extend_lease, owner, expiry)
            todo = pending(message)
            if on_wire is not None:
                on_wire.add(message.queue_id)
            outgoing = ahead or _outgoing(message, todo, data)
            # The next message's envelope can ride with this one's data (PIPELINING).
            following = index + 1 < len(messages) and bodies.peek(index + 1)
            ahead = None
            if following:
                upcoming = messages[index + 1]
                ahead = _outgoing(upcoming, pending(upcoming), following)
            started = clock()
            result = await session.send(outgoing, ahead)
            now = clock()
            updates = recipient_updates(todo, result)
            outcome = outcome_for(message, updates, result, now, settings)
            attempt = Attempt(
                started_at=started,
                duration=now - started,
                # Stored as text: a --host with bytes that are not UTF-8 is shown, not refused.
                host=readable(account.host or account.socket or ""),
                tls=account.tls,
                auth=account.auth is not None,
                exit_code=int(result.exit_code),
                reply_code=result.reply.code if result.reply else None,
                reply=result.reply.text if result.reply else result.error,
                recipients=updates,
                possible_duplicate=message.lease_lost,
            )
            committed = recorder.record(AttemptRecord(message.queue_id, attempt, outcome, owner))
            if on_wire is not None:
                committed.add_done_callback(_forget(on_wire, message.queue_id))
            addresses = tuple(r.address for r in todo)
            _log(account, message.sender, addresses, data, result, prog)
            sent.append((Delivered(message, result, outcome, addresses, data), committed))
    changed = await asyncio.gather(*(future for _, future in sent))
    return [replace(item, changed=ok) for (item, _), ok in zip(sent, changed, strict=True)]


def _outgoing(message: QueuedMessage, todo: Sequence[Recipient], data: bytes) -> OutgoingMessage:
    return OutgoingMessage(
        message.sender,
        [r.address for r in todo],
        data,
        smtputf8=message.smtputf8,
        eightbit=message.eightbit,
    )


def _forget(on_wire: MutableSet[str], queue_id: str) -> Callable[[asyncio.Future[bool]], None]:
    def forget(_: asyncio.Future[bool]) -> None:
        on_wire.discard(queue_id)

    return forget


def lmtp_refusals(result: DeliveryResult) -> list[tuple[str, Reply | None]]:
    """(msmtp's error, final reply) for each recipient an LMTP server refused after the data."""
    return [(r.error or "", r.reply) for r in result.recipients if r.event is Event.LMTP_RECIPIENT]


def _log(
    account: Account,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
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
        mailsize=mail_size(data) if ok else None,
        reply=None if lmtp_end else result.reply,
        error=error,
    )
    attempt_log.write(account, info, exit_code=result.exit_code, prog=prog)
