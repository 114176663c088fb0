"""relayd-sendmail's modes that talk to the server now: -odi, --serverinfo, --rmqs."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence

from relayd import paths, settings
from relayd.accounts import secrets
from relayd.accounts.account import Account
from relayd.daemon import attempt_log, drain, retry
from relayd.daemon.limits import Limiter
from relayd.delivery.classify import Failure
from relayd.delivery.serverinfo import ServerInfo, TLSInfo, format_serverinfo
from relayd.delivery.session import ServerFacts, Session
from relayd.store import budget, fastpath, location
from relayd.store.queued import QueuedMessage
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode


def _stderr(lines: list[str]) -> None:
    for line in lines:
        sys.stderr.buffer.write(line.encode("utf-8", "surrogateescape") + b"\n")
    sys.stderr.flush()


def _interactive_password(account: Account) -> str | None:
    """msmtp's order, with the terminal prompt allowed (the daemon never prompts)."""
    return secrets.lookup_password(account, interactive=True).password


def deliver_now(
    account: Account, queue_id: str, *, prog: str, debug: Callable[[str], None] | None
) -> int:
    """-odi: deliver the message just stored, in this process; the exit code says how it went.

    A temporary failure leaves it queued for the daemon (exit 0, with a note); a permanent one
    marks it failed and exits with msmtp's code; a problem only the user can fix holds it.
    """
    from relayd.accounts.oauth2 import Tokens

    config = settings.load()
    tokens = Tokens(lambda: config.oauth2, _interactive_password)
    now = time.time()
    owner = f"sendmail-{socket.gethostname()}-{os.getpid()}"
    with SqlStore.open(location.database_url(), timeout=fastpath.lock_timeout()) as store:
        limiter = Limiter(store, lambda: config, time.time)

        async def claim(limit: int) -> Sequence[QueuedMessage]:
            lease = retry.lease_seconds(config)
            return store.claim_due(None, now, lease, owner, limit=limit, queue_ids=[queue_id])

        async def deliver() -> drain.Drained | None:
            # [limits.ACCOUNT]: the shared budget and a running pause apply here too (the
            # name is read only then). The message's own result stays msmtp's: a rate reply
            # to it is reported and retried as msmtp's users expect, the daemon pauses.
            stored = store.get(queue_id) if config.limits else None
            claimed = await limiter.claim(stored.account if stored else "", 1, owner, claim)
            if not claimed:
                return None
            return await drain.deliver_claimed(
                store,
                account,
                claimed,
                config,
                owner=claimed[0].lease_owner or "",
                password=tokens.password,
                renew=tokens.renew,
                debug=debug,
                prog=prog,
            )

        drained = asyncio.run(deliver())
        if drained is None:  # a daemon got there first, or a rate limit puts it off
            waiting = store.get(queue_id)
            if waiting is not None and waiting.reason and budget.held_back(store, [queue_id], now):
                _stderr([f"{prog}: message {queue_id} stays queued: {waiting.reason}"])
                fastpath.wake(paths.wake_socket())
            return ExitCode.OK
    if not drained.delivered:  # deleted meanwhile, or the connection failed and it waits
        return ExitCode.OK
    (delivered,) = drained.delivered
    result, state = delivered.result, delivered.outcome.state
    if state is State.SENT:
        return ExitCode.OK
    refused = drain.lmtp_refusals(result)
    if refused:
        _stderr(attempt_log.lmtp_stderr_lines(prog, account, refused))
    else:
        _stderr(attempt_log.stderr_lines(prog, account, result.error, result.reply))
    if state is State.QUEUED:
        _stderr([f"{prog}: message {queue_id} stays queued; relayd will retry it"])
        fastpath.wake(paths.wake_socket())
        return ExitCode.OK
    if state is State.HELD:
        _stderr(
            [
                f"{prog}: message {queue_id} is held; fix the problem, then: "
                f"relayd queue release {queue_id}"
            ]
        )
    return int(result.exit_code)


def _canonical_name(address: str | None) -> str | None:
    if address is None:
        return None
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return None


def server_info(account: Account, facts: ServerFacts) -> ServerInfo:
    """What the session learnt, in the form --serverinfo prints."""
    tls = None
    if account.tls:
        tls = TLSInfo(
            version=facts.tls_version,
            cipher=facts.tls_cipher,
            peer_cert_der=facts.peer_certificate,
        )
    return ServerInfo(
        host=account.host or account.socket or "",
        port=account.port,
        protocol=account.protocol,
        canonical_name=_canonical_name(facts.address),
        address=facts.address,
        greeting=facts.greeting.lines if facts.greeting else (),
        capabilities=facts.capabilities,
        tls=tls,
        starttls=account.tls_starttls,
    )


async def _serverinfo(
    account: Account, debug: Callable[[str], None] | None
) -> tuple[ServerFacts, Failure | None]:
    session = Session(account, timeout=settings.load().delivery.timeout, debug=debug)
    failure = await session.open(login=False)
    await session.close()
    return session.facts, failure


def serverinfo(account: Account, *, prog: str, debug: Callable[[str], None] | None) -> int:
    """--serverinfo: msmtp's description of the server."""
    facts, failure = asyncio.run(_serverinfo(account, debug))
    if failure is not None:
        _stderr(
            attempt_log.stderr_lines(prog, account, failure.error, failure.reply, sendmail=False)
        )
        return int(failure.exit_code)
    sys.stdout.write(format_serverinfo(server_info(account, facts)))
    sys.stdout.flush()
    return ExitCode.OK


async def _rmqs(
    account: Account, argument: str, debug: Callable[[str], None] | None
) -> Failure | None:
    session = Session(
        account,
        password=_interactive_password,
        timeout=settings.load().delivery.timeout,
        debug=debug,
    )
    try:
        outcome = await session.etrn(argument)
    finally:
        await session.close()
    return outcome if isinstance(outcome, Failure) else None


def rmqs(account: Account, argument: str, *, prog: str, debug: Callable[[str], None] | None) -> int:
    """--rmqs: ask the server to start its queue for `argument` (ETRN)."""
    failure = asyncio.run(_rmqs(account, argument, debug))
    if failure is None:
        return ExitCode.OK
    _stderr(attempt_log.stderr_lines(prog, account, failure.error, failure.reply, sendmail=False))
    return int(failure.exit_code)
