"""RFC 2920 look-ahead: the next message's envelope goes out with the previous message's data,
against the recording aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from relayd.delivery.result import Disposition
from relayd.delivery.session import OutgoingMessage, Session
from tests.test_delivery_session import BODY, account, message, run
from tests.upstream import Fault, Features, UpstreamServer

SENT, FAIL = Disposition.SENT, Disposition.FAIL


async def chain(
    session: Session, messages: list[OutgoingMessage], *, announce_last: bool = False
) -> list[Disposition]:
    """Send `messages` in order, each announcing the next; optionally announce one more."""
    results = []
    for index, current in enumerate(messages):
        following = messages[index + 1] if index + 1 < len(messages) else None
        if following is None and announce_last:
            following = message("never@example.net", sender="never@example.org")
        results.append((await session.send(current, following)).disposition)
    return results


def test_the_next_envelope_rides_with_the_data() -> None:
    debug: list[str] = []
    with UpstreamServer(features=Features(pipelining=True)) as server:

        async def scenario() -> list[Disposition]:
            async with Session(account(server), timeout=5, debug=debug.append) as session:
                return await chain(session, [message(sender=f"s{n}@example.org") for n in range(3)])

        assert run(scenario()) == [SENT, SENT, SENT]
        assert [t.mail_from for t in server.transactions] == [
            "s0@example.org",
            "s1@example.org",
            "s2@example.org",
        ]
        assert all(t.data == BODY for t in server.transactions)
    dot = debug.index("--> .")
    # The second envelope was written before the first message's final reply was read.
    assert debug[dot + 1 : dot + 4] == [
        "--> MAIL FROM:<s1@example.org>",
        "--> RCPT TO:<you@example.net>",
        "--> DATA",
    ]
    assert debug[dot + 4].startswith("<-- 250")


def test_a_refused_message_does_not_disturb_the_announced_one() -> None:
    with UpstreamServer(features=Features(pipelining=True)) as server:
        server.fail("END", Fault(reply="554 5.6.0 rejected"))

        async def first_fails() -> list[Disposition]:
            async with Session(account(server), timeout=5) as session:
                first = await session.send(message(sender="a@example.org"), None)
                server.clear_faults()
                following = message(sender="c@example.org")
                second = await session.send(message(sender="b@example.org"), following)
                return [
                    first.disposition,
                    second.disposition,
                    (await session.send(following)).disposition,
                ]

        assert run(first_fails()) == [FAIL, SENT, SENT]
        server.fail("RCPT", Fault(reply="550 5.1.1 no such user"), address="bad@example.net")

        async def announced_refused() -> list[Disposition]:
            async with Session(account(server), timeout=5) as session:
                return await chain(
                    session,
                    [message(sender="d@example.org"), message("bad@example.net"), message()],
                )

        assert run(announced_refused()) == [SENT, FAIL, SENT]
        accepted = [t.mail_from for t in server.transactions if t.reply.startswith("250")]
        assert accepted == ["b@example.org", "c@example.org", "d@example.org", "me@example.org"]


def test_an_announced_message_never_sent_is_not_delivered_nor_quit_into_data() -> None:
    with UpstreamServer(features=Features(pipelining=True)) as server:

        async def scenario() -> list[Disposition]:
            async with Session(account(server), timeout=5) as session:
                return await chain(session, [message()], announce_last=True)

        assert run(scenario()) == [SENT]
        assert [t.mail_from for t in server.transactions] == ["me@example.org"]
        assert "QUIT" not in server.commands


def test_without_pipelining_the_following_message_takes_the_ordinary_way() -> None:
    debug: list[str] = []
    with UpstreamServer(features=Features(pipelining=False)) as server:

        async def scenario() -> list[Disposition]:
            async with Session(account(server), timeout=5, debug=debug.append) as session:
                return await chain(session, [message(sender=f"s{n}@example.org") for n in range(2)])

        assert run(scenario()) == [SENT, SENT]
        assert server.commands[-1] == "QUIT"
    dot = debug.index("--> .")
    assert debug[dot + 1].startswith("<-- 250")


def test_sending_another_message_than_the_announced_one_is_refused() -> None:
    with UpstreamServer(features=Features(pipelining=True)) as server:

        async def scenario() -> None:
            async with Session(account(server), timeout=5) as session:
                await session.send(message(), message(sender="next@example.org"))
                with pytest.raises(ValueError, match="announced"):
                    await session.send(message(sender="other@example.org"))

        run(scenario())
        assert asyncio.iscoroutinefunction(Session.send)


def test_an_announced_envelope_is_made_once_and_keeps_its_own_recipients() -> None:
    """The envelope written ahead (DSN parameters, several recipients) is the one the message
    goes out with: each MAIL and RCPT line on the wire once, each message with its own."""
    debug: list[str] = []
    features = Features(pipelining=True, dsn=True)
    with UpstreamServer(features=features) as server:
        acc = account(server, dsn_notify="FAILURE", dsn_return="HDRS")
        batch = [
            message(*(f"r{n}-{k}@example.net" for k in range(n + 1)), sender=f"s{n}@example.org")
            for n in range(4)
        ]

        async def scenario() -> list[Disposition]:
            async with Session(acc, timeout=5, debug=debug.append) as session:
                return await chain(session, batch)

        assert run(scenario()) == [SENT] * 4
        assert [(t.mail_from, t.rcpt_tos) for t in server.transactions] == [
            (m.sender, tuple(m.recipients)) for m in batch
        ]
        assert all(
            t.rcpt_params == ("NOTIFY=FAILURE",) * len(t.rcpt_tos) for t in server.transactions
        )
    mails = [line for line in debug if line.startswith("--> MAIL FROM:")]
    assert mails == [f"--> MAIL FROM:<{m.sender}> RET=HDRS" for m in batch]
    rcpts = [line for line in debug if line.startswith("--> RCPT TO:")]
    assert rcpts == [f"--> RCPT TO:<{r}> NOTIFY=FAILURE" for m in batch for r in m.recipients]
