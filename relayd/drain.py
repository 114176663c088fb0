"""One attempt on claimed messages: deliver on one connection, then record and log each result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relayd import attempt_log, retry
from relayd.accounts.account import Account
from relayd.delivery.result import DeliveryResult, Disposition, Reply
from relayd.delivery.session import DebugSink, OutgoingMessage, PasswordSource, Session
from relayd.settings import Settings
from relayd.store.queued import Attempt, Outcome, QueuedMessage, Recipient
from relayd.store.records import RecipientState, State
from relayd.store.sql import SqlStore

_RECIPIENT_STATES = {
    Disposition.SENT: RecipientState.SENT,
    Disposition.FAIL: RecipientState.FAILED,
}


@dataclass(frozen=True)
class Delivered:
    """A message's attempt: the result, the state it moved to, and what was sent to whom."""

    message: QueuedMessage
    result: DeliveryResult
    outcome: Outcome
    recipients: tuple[str, ...]


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
    when = retry.next_attempt(message.created_at, now, settings.retry)
    if when is None:
        return Outcome(State.FAILED, reason=f"lifetime expired: {result.error}")
    return Outcome(State.QUEUED, next_attempt_at=when, reason=result.error)


async def deliver_claimed(
    store: SqlStore,
    account: Account,
    messages: Sequence[QueuedMessage],
    settings: Settings,
    *,
    owner: str,
    password: PasswordSource | None = None,
    debug: DebugSink | None = None,
    prog: str = "relayd",
    clock: Callable[[], float] = time.time,
) -> list[Delivered]:
    """Deliver claimed messages of one account on one connection; record and log every attempt.

    Each message's recipients and state are committed right after its final reply, before the
    next message is sent, so a crash repeats at most the message in flight.
    """
    done: list[Delivered] = []
    async with Session(
        account, password=password, timeout=settings.delivery.timeout, debug=debug
    ) as session:
        for message in messages:
            todo = pending(message)
            # Store calls block on fsync: keep them off the event loop (other accounts go on).
            data = await asyncio.to_thread(store.read_data, message.queue_id) or b""
            started = clock()
            result = await session.send(
                OutgoingMessage(
                    message.sender,
                    [r.address for r in todo],
                    data,
                    smtputf8=message.smtputf8,
                    eightbit=message.eightbit,
                )
            )
            now = clock()
            updates = recipient_updates(todo, result)
            outcome = outcome_for(message, updates, result, now, settings)
            attempt = Attempt(
                started_at=started,
                duration=now - started,
                host=account.host or account.socket or "",
                tls=account.tls,
                auth=account.auth is not None,
                exit_code=int(result.exit_code),
                reply_code=result.reply.code if result.reply else None,
                reply=result.reply.text if result.reply else result.error,
                recipients=updates,
            )
            await asyncio.to_thread(
                store.record_attempt, message.queue_id, attempt, outcome, owner=owner
            )
            addresses = tuple(r.address for r in todo)
            _log(account, message.sender, addresses, data, result, prog)
            done.append(Delivered(message, result, outcome, addresses))
    return done


def lmtp_refusals(account: Account, result: DeliveryResult) -> list[tuple[str, Reply | None]]:
    """(msmtp's error, final reply) for each recipient an LMTP server refused after the data."""
    if account.protocol != "lmtp":
        return []
    return [
        (r.error, r.reply)
        for r in result.recipients
        if r.disposition is not Disposition.SENT
        and r.error == f"the server refuses to send the mail to {r.address}"
    ]


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
    refused = lmtp_refusals(account, result)
    # msmtp logs no server reply for an LMTP delivery's end, and one summary error.
    lmtp_end = account.protocol == "lmtp" and (ok or bool(refused))
    summary = attempt_log.LMTP_LOG_ERROR if refused else result.error
    error = None if ok else summary
    info = attempt_log.log_info(
        account,
        envelope_from=sender,
        recipients=recipients,
        exit_code=result.exit_code,
        mailsize=attempt_log.mail_size(data) if ok else None,
        reply=None if lmtp_end else result.reply,
        error=error,
    )
    attempt_log.write(account, info, exit_code=result.exit_code, prog=prog)
