"""The delivery session against real aiosmtpd servers on loopback: stages, faults, ESMTP, LMTP."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest

from relayd.accounts.account import Account
from relayd.delivery.ehlo import Capabilities, parse
from relayd.delivery.result import DeliveryResult, Disposition, Reply
from relayd.delivery.session import OutgoingMessage, Session, deliver
from tests.upstream import Fault, Features, UpstreamServer

T = TypeVar("T")
SENT, RETRY, FAIL, HOLD = Disposition.SENT, Disposition.RETRY, Disposition.FAIL, Disposition.HOLD
BODY = b"Subject: test\r\n\r\nbody\r\n"


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def account(server: UpstreamServer | None = None, **settings: Any) -> Account:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": server.port if server else 25}
    return Account("test", None, **(base | {"tls_trust_file": "system"} | settings))


def message(
    *recipients: str, data: bytes = BODY, sender: str = "me@example.org"
) -> OutgoingMessage:
    return OutgoingMessage(sender, recipients or ("you@example.net",), data)


def send(acc: Account, *messages: OutgoingMessage, timeout: float = 5) -> list[DeliveryResult]:
    return run(deliver(acc, messages or (message(),), timeout=timeout))


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(timeout=10) as upstream:
        yield upstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- success and the bytes on the wire ------------------------------------------------------------

CORPUS = {
    "dots": b".\r\n..\r\n.x\r\nmid.dle\r\n. \r\n",
    "long": b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n",
    "8bit": "Subject: é\r\n\r\nçà ü\r\n".encode(),
    "bare-cr": b"Subject: cr\r\n\r\na\rb\r\n",
    "empty": b"",
    "no-final-newline": b"Subject: x\r\n\r\nlast line",
    "nul": b"Subject: n\r\n\r\na\x00b\r\n",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_data_arrives_byte_exact(server: UpstreamServer, name: str) -> None:
    data = CORPUS[name]
    (result,) = send(account(server), message(data=data))
    assert (result.disposition, result.exit_code, result.error) == (SENT, 0, None)
    assert result.reply == Reply(250, ("2.0.0 Ok: queued",))
    (got,) = server.transactions
    expected = data if not data or data.endswith(b"\r\n") else data + b"\r\n"
    assert got.data == expected


def test_many_messages_on_one_connection_with_rset_after_a_failure(server: UpstreamServer) -> None:
    server.fail("MAIL", Fault(reply="451 4.3.0 try later"), address="first@example.org")
    first, second = send(
        account(server), message(sender="first@example.org"), message(sender="second@example.org")
    )
    assert (first.disposition, first.exit_code, first.reply) == (
        RETRY,
        69,
        Reply(451, ("4.3.0 try later",)),
    )
    assert first.error == "envelope from address first@example.org not accepted by the server"
    assert second.disposition is SENT
    assert server.commands == [
        "CONNECT",
        "EHLO localhost",
        "MAIL FROM:<first@example.org>",
        "RSET",
        "MAIL FROM:<second@example.org>",
        "RCPT TO:<you@example.net>",
        "DATA",
        "QUIT",
    ]


@pytest.mark.parametrize("pipelining", [False, True])
def test_one_refused_recipient_of_two_the_other_is_delivered(pipelining: bool) -> None:
    with UpstreamServer(features=Features(pipelining=pipelining)) as server:
        server.fail("RCPT", Fault(reply="550 5.1.1 no such user"), address="bad@example.net")
        (result,) = send(account(server), message("bad@example.net", "good@example.net"))
        assert (result.disposition, result.exit_code) == (FAIL, 65)
        assert result.error == "recipient address bad@example.net not accepted by the server"
        bad, good = result.recipients
        assert (bad.disposition, bad.reply) == (FAIL, Reply(550, ("5.1.1 no such user",)))
        assert (good.disposition, good.reply) == (SENT, Reply(250, ("2.0.0 Ok: queued",)))
        assert [t.rcpt_tos for t in server.transactions] == [("good@example.net",)]


def test_all_recipients_refused_sends_no_data(server: UpstreamServer) -> None:
    server.fail("RCPT", Fault(reply="550 5.1.1 no"))
    (result,) = send(account(server), message("a@example.net", "b@example.net"))
    assert (result.disposition, result.exit_code) == (FAIL, 65)
    assert "DATA" not in server.commands
    assert server.commands[-2:] == ["RSET", "QUIT"]


def test_pipelining_sends_the_envelope_in_one_burst_and_survives_a_refused_sender() -> None:
    with UpstreamServer(features=Features(pipelining=True)) as server:
        server.fail("MAIL", Fault(reply="553 5.7.1 sender refused"), address="x@example.org")
        debug: list[str] = []
        results = run(
            deliver(
                account(server),
                [message(sender="x@example.org"), message("a@example.net", "b@example.net")],
                timeout=5,
                debug=debug.append,
            )
        )
    assert [(r.disposition, r.exit_code) for r in results] == [(FAIL, 65), (SENT, 0)]
    first_burst = debug.index("--> MAIL FROM:<me@example.org>")
    assert debug[first_burst : first_burst + 4] == [
        "--> MAIL FROM:<me@example.org>",
        "--> RCPT TO:<a@example.net>",
        "--> RCPT TO:<b@example.net>",
        "--> DATA",
    ]


def test_pipelined_354_without_recipients_is_ended_empty() -> None:
    """Some servers answer DATA with 354 although every RCPT was refused: end it, RSET, go on."""
    with UpstreamServer(features=Features(pipelining=True)) as server:
        server.fail("RCPT", Fault(reply="550 5.1.1 no"))
        server.fail("DATA", Fault(reply="354 go ahead"))
        lines: list[str] = []
        (result,) = run(deliver(account(server), [message()], debug=lines.append, timeout=5))
    assert (result.disposition, result.exit_code) == (FAIL, 65)
    after = lines[lines.index("<-- 354 go ahead") + 1 :]
    assert after[0] == "--> ."
    assert after[2:] == ["--> RSET", "<-- 250 OK", "--> QUIT", "<-- 221 Bye"]


def test_debug_shows_the_dialogue_like_msmtp(server: UpstreamServer) -> None:
    lines: list[str] = []
    run(deliver(account(server), [message(data=b".x\r\n")], debug=lines.append, timeout=5))
    assert lines[:2] == ["<-- 220 upstream.test Python SMTP 1.4.6", "--> EHLO localhost"]
    assert lines[-5:] == ["--> ..x", "--> .", "<-- 250 2.0.0 Ok: queued", "--> QUIT", "<-- 221 Bye"]


# -- failures at each stage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reply", "code", "disposition", "error"),
    [
        (
            "MAIL",
            "451 4.3.0 later",
            69,
            RETRY,
            "envelope from address me@example.org not accepted by the server",
        ),
        (
            "MAIL",
            "550 5.7.1 no",
            65,
            FAIL,
            "envelope from address me@example.org not accepted by the server",
        ),
        (
            "RCPT",
            "452 4.2.2 full",
            69,
            RETRY,
            "recipient address you@example.net not accepted by the server",
        ),
        (
            "RCPT",
            "550 5.1.1 unknown",
            65,
            FAIL,
            "recipient address you@example.net not accepted by the server",
        ),
        ("DATA", "451 4.3.0 later", 69, RETRY, "the server does not accept mail data"),
        ("DATA", "554 5.5.1 no", 65, FAIL, "the server does not accept mail data"),
        ("END", "452 4.3.1 full", 69, RETRY, "the server did not accept the mail"),
        ("END", "554 5.7.1 spam", 69, FAIL, "the server did not accept the mail"),
    ],
)
def test_refusal_at_each_stage(
    server: UpstreamServer, stage: Any, reply: str, code: int, disposition: Disposition, error: str
) -> None:
    server.fail(stage, Fault(reply=reply))
    (result,) = send(account(server))
    assert (result.disposition, result.exit_code, result.error) == (disposition, code, error)
    assert result.reply is not None and result.reply.wire_lines() == [reply]
    assert [r.disposition for r in result.recipients] == [disposition]


@pytest.mark.parametrize("reply", ["421 4.3.2 shutting down", "554 5.7.1 go away"])
def test_greeting_refused(server: UpstreamServer, reply: str) -> None:
    server.fail("GREETING", Fault(reply=reply))
    (result,) = send(account(server), message("a@example.net", "b@example.net"))
    assert (result.disposition, result.exit_code) == (RETRY, 76)
    assert result.error == "cannot get initial OK message from server"
    assert result.reply is not None and result.reply.wire_lines() == [reply]
    assert len(result.recipients) == 2


def test_ehlo_refused_falls_back_to_helo(server: UpstreamServer) -> None:
    server.fail("EHLO", Fault(reply="502 5.5.2 what"))
    (result,) = send(account(server))
    assert result.disposition is SENT
    assert server.commands[1:3] == ["EHLO localhost", "HELO localhost"]


def test_ehlo_and_helo_refused(server: UpstreamServer) -> None:
    server.fail("EHLO", Fault(reply="502 5.5.2 what"))
    server.fail("HELO", Fault(reply="502 5.5.2 no"))
    (result,) = send(account(server))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        76,
        "SMTP server does not accept EHLO or HELO commands",
    )


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(drop=True), "the server sent an empty reply"),
        (Fault(reply="hello there"), "the server sent an invalid reply"),
    ],
)
def test_greeting_dropped_or_garbage(server: UpstreamServer, fault: Fault, error: str) -> None:
    server.fail("GREETING", fault)
    (result,) = send(account(server))
    assert (result.disposition, result.exit_code, result.error) == (RETRY, 76, error)


def test_reply_longer_than_fifty_lines() -> None:
    with UpstreamServer(features=Features(extra=tuple(f"X-LINE-{i}" for i in range(60)))) as s:
        (result,) = send(account(s))
    assert (result.exit_code, result.disposition) == (76, RETRY)
    assert result.error and result.error.startswith("Rejecting server reply that is longer")


def test_slow_reply_times_out(server: UpstreamServer) -> None:
    server.fail("MAIL", Fault(delay=2.0))
    (result,) = send(account(server), timeout=0.3)
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        74,
        "network read error: the operation timed out",
    )


def test_drop_before_the_final_dot(server: UpstreamServer) -> None:
    server.fail("BODY", Fault(drop=True))
    (result,) = send(account(server), message(data=b"x" * 300_000 + b"\r\n"))
    assert result.disposition is RETRY
    assert result.exit_code in (74, 76)  # the write or the read notices, depending on timing
    assert server.transactions == []


def test_drop_after_the_final_dot_may_have_delivered(server: UpstreamServer) -> None:
    server.fail("END", Fault(drop=True))
    (result,) = send(account(server))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        76,
        "the server sent an empty reply",
    )
    assert result.possibly_delivered
    assert len(server.transactions) == 1


def test_deliver_reconnects_after_a_broken_connection(server: UpstreamServer) -> None:
    server.fail("MAIL", Fault(drop=True), address="drop@example.org")
    first, second = send(
        account(server), message(sender="drop@example.org"), message(sender="ok@example.org")
    )
    assert (first.disposition, first.exit_code) == (RETRY, 76)
    assert not first.possibly_delivered
    assert second.disposition is SENT
    assert server.commands.count("CONNECT") == 2


def test_cancelled_mid_transaction_closes_without_quit(server: UpstreamServer) -> None:
    server.fail("END", Fault(delay=3.0))

    async def scenario() -> None:
        async with Session(account(server), timeout=10) as session:
            task = asyncio.create_task(session.send(message()))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not session.alive

    started = time.monotonic()
    run(scenario())
    assert time.monotonic() - started < 2
    assert "QUIT" not in server.commands


def test_connection_refused() -> None:
    port = free_port()
    (result,) = send(account(port=port))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        75,
        f"cannot connect to 127.0.0.1, port {port}: Connection refused",
    )


def test_unknown_host() -> None:
    (result,) = send(account(host="nonexistent.invalid"))
    assert (result.disposition, result.exit_code) == (RETRY, 68)
    assert result.error is not None
    assert result.error.startswith("cannot locate host nonexistent.invalid: ")


@pytest.mark.parametrize(
    ("source_ip", "reason"),
    [("bogus", "Invalid argument"), ("10.255.255.254", "Cannot assign requested address")],
)
def test_source_ip_that_cannot_be_bound(source_ip: str, reason: str) -> None:
    (result,) = send(account(port=free_port(), source_ip=source_ip))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        71,
        f"cannot bind source ip {source_ip}: {reason}",
    )


def test_source_ip_is_used(server: UpstreamServer) -> None:
    (result,) = send(account(server, source_ip="127.0.0.1"))
    assert result.disposition is SENT


# -- ESMTP -----------------------------------------------------------------------------------------


def test_dsn_parameters_when_offered() -> None:
    with UpstreamServer(features=Features(dsn=True)) as server:
        acc = account(server, dsn_notify="FAILURE,DELAY", dsn_return="HDRS")
        (result,) = send(acc, message("a@example.net", "b@example.net"))
        (got,) = server.transactions
    assert result.disposition is SENT
    assert (got.mail_params, got.rcpt_params) == ("RET=HDRS", ("NOTIFY=FAILURE,DELAY",) * 2)


def test_dsn_wanted_but_not_offered_holds_and_quits(server: UpstreamServer) -> None:
    (result,) = send(account(server, dsn_return="FULL"))
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        69,
        "the server does not support DSN",
    )
    assert server.commands == ["CONNECT", "EHLO localhost", "QUIT"]


def test_size_exceeded_fails_before_mail() -> None:
    with UpstreamServer(features=Features(size=1000)) as server:
        big, small = send(
            account(server), message(data=b"x" * 2000 + b"\r\n"), message(data=b"x\r\n")
        )
        commands = server.commands
    assert (big.disposition, big.exit_code) == (FAIL, 69)
    assert (
        big.error == "the mail is larger than the server's maximum message size (2002 > 1000 bytes)"
    )
    assert small.disposition is SENT
    assert commands.count("MAIL FROM:<me@example.org>") == 1


@pytest.mark.parametrize(("offered", "param"), [(True, "BODY=8BITMIME"), (False, "")])
def test_8bitmime_parameter(offered: bool, param: str) -> None:
    with UpstreamServer(features=Features(eightbitmime=offered)) as server:
        send(account(server), message(data=CORPUS["8bit"]), message(data=b"ascii\r\n"))
        params = [t.mail_params for t in server.transactions]
    assert params == [param, ""]


def test_smtputf8_when_an_address_needs_it() -> None:
    with UpstreamServer(features=Features(smtputf8=True)) as server:
        (result,) = send(account(server), message("jörg@exämple.net"))
        (got,) = server.transactions
    assert result.disposition is SENT
    assert (got.mail_params, got.rcpt_tos) == ("SMTPUTF8", ("jörg@exämple.net",))


def test_smtputf8_needed_but_not_offered_fails_permanently() -> None:
    with UpstreamServer(features=Features(smtputf8=False)) as server:
        (result,) = send(account(server), message("jörg@exämple.net"))
        commands = server.commands
    assert (result.disposition, result.exit_code) == (FAIL, 65)
    assert not any(c.startswith("MAIL") for c in commands)


def test_mailer_daemon_is_the_null_sender(server: UpstreamServer) -> None:
    send(account(server), message(sender="MAILER-DAEMON"))
    assert server.transactions[0].mail_from == ""


def test_command_too_long_fails_the_message(server: UpstreamServer) -> None:
    (result,) = send(account(server), message("x" * 4090 + "@example.net"))
    assert (result.disposition, result.exit_code) == (FAIL, 65)
    assert result.error and result.error.startswith("Cannot send command because it is longer")


def test_capabilities_are_parsed_as_msmtp_does() -> None:
    ehlo = Reply(
        250,
        (
            "mx.test",
            "SIZE 52428800",
            "pipelining",
            "DSN",
            "ETRN",
            "STARTTLS",
            "AUTH=PLAIN SCRAM-SHA-1-PLUS",
            "8BITMIME",
            "SMTPUTF8",
        ),
    )
    caps = parse(ehlo.lines)
    assert caps == Capabilities(
        starttls=True,
        dsn=True,
        pipelining=True,
        etrn=True,
        eightbitmime=True,
        smtputf8=True,
        size=52428800,
        auth=frozenset({"PLAIN", "SCRAM-SHA-1"}),
    )
    assert parse(("x", "SIZE")).size is None
    assert parse(("x", "SIZE -5")).size is None
    assert parse(("x",)).auth is None


# -- LMTP, UNIX sockets, SOCKS5 --------------------------------------------------------------------


def test_lmtp_records_each_recipient() -> None:
    with UpstreamServer(lmtp=True) as server:
        server.fail("END", Fault(reply="552 5.2.2 mailbox full"), address="full@example.net")
        (result,) = send(
            account(server, protocol="lmtp"), message("a@example.net", "full@example.net")
        )
        commands = server.commands
    assert commands[1] == "LHLO localhost"
    assert (result.disposition, result.exit_code) == (FAIL, 69)
    assert result.error == "the server refuses to send the mail to full@example.net"
    ok, full = result.recipients
    assert (ok.disposition, ok.reply) == (SENT, Reply(250, ("2.0.0 Ok: queued",)))
    assert (full.disposition, full.reply) == (FAIL, Reply(552, ("5.2.2 mailbox full",)))


def test_lmtp_lhlo_refused() -> None:
    with UpstreamServer(lmtp=True) as server:
        server.fail("EHLO", Fault(reply="500 5.5.1 no"))
        (result,) = send(account(server, protocol="lmtp"))
    assert (result.exit_code, result.error) == (76, "command LHLO failed")


def test_unix_socket() -> None:
    with UpstreamServer(unix=True) as server:
        assert server.socket_path is not None
        (result,) = send(account(socket=server.socket_path, host="localhost"))
    assert result.disposition is SENT


def test_unix_socket_missing(tmp_path: Any) -> None:
    path = str(tmp_path / "nothing.sock")
    (result,) = send(account(socket=path))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        75,
        f"cannot connect to {path}: No such file or directory",
    )


async def _socks5_proxy(target_port: int, asked: list[str], status: int) -> asyncio.Server:
    """A SOCKS5 proxy on loopback that connects every request to `target_port`."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(3) == b"\x05\x01\x00"
        writer.write(b"\x05\x00")
        head = await reader.readexactly(5)
        name = await reader.readexactly(head[4])
        port = int.from_bytes(await reader.readexactly(2), "big")
        asked.append(f"{name.decode()}:{port}")
        writer.write(bytes([5, status, 0, 1, 0, 0, 0, 0, 0, 0]))
        if status != 0:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(("status", "error"), [(0, None), (5, "proxy failure: connection refused")])
def test_socks5_proxy_passes_the_host_name(
    server: UpstreamServer, status: int, error: str | None
) -> None:
    asked: list[str] = []

    async def scenario() -> list[DeliveryResult]:
        proxy = await _socks5_proxy(server.port, asked, status)
        proxy_port = proxy.sockets[0].getsockname()[1]
        acc = account(host="mail.unresolvable.test", port=587, proxy_host="127.0.0.1")
        acc.proxy_port = proxy_port
        async with proxy:
            return await deliver(acc, [message()], timeout=5)

    (result,) = run(scenario())
    assert asked == ["mail.unresolvable.test:587"]
    assert result.error == error
    assert result.exit_code == (0 if status == 0 else 69)


def test_session_api_keeps_the_facts(server: UpstreamServer) -> None:
    async def scenario() -> tuple[Session, DeliveryResult]:
        async with Session(account(server), timeout=5) as session:
            assert session.alive
            return session, await session.send(message())

    session, result = run(scenario())
    assert result.disposition is SENT
    assert not session.alive
    facts = session.facts
    assert facts.address == "127.0.0.1"
    assert facts.greeting == Reply(220, ("upstream.test Python SMTP 1.4.6",))
    assert facts.ehlo is not None and facts.ehlo.lines[0] == "upstream.test"
    assert facts.tls_version is None and facts.auth_method is None


def test_etrn(server: UpstreamServer) -> None:
    async def scenario(acc: Account) -> Any:
        async with Session(acc, timeout=5) as session:
            return await session.etrn("@example.org")

    assert run(scenario(account(server))).error == (
        "the server does not support Remote Message Queue Starting"
    )
    with UpstreamServer(features=Features(etrn=True)) as etrn_server:
        assert run(scenario(account(etrn_server))) == Reply(250, ("2.0.0 Queuing started",))
        etrn_server.fail("ETRN", Fault(reply="458 4.0.0 unable"))
        failure = run(scenario(account(etrn_server)))
        assert (failure.exit_code, failure.error) == (
            69,
            "the server is unable to fulfill the request",
        )


# -- the same exit code and text as Debian's msmtp 1.8.23 on the same server ----------------------


def _msmtp() -> str | None:
    path = shutil.which("msmtp")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    return path if version.stdout.startswith("msmtp version 1.8.23\n") else None


MSMTP = _msmtp()
_RC_WORDS = {True: "on", False: "off", None: "off", "": "on"}
_BAD_PIN = ":".join(["AB"] * 32)
_USER = {"user": "user", "password": "secret"}
_PLAIN = Features(auth=("PLAIN",))
# id, server options, faults (stage, fault, address), account settings
COMPAT: list[tuple[str, dict[str, Any], list[tuple[Any, Fault, str | None]], dict[str, Any]]] = [
    ("ok", {}, [], {}),
    ("mail-451", {}, [("MAIL", Fault(reply="451 4.3.0 x"), None)], {}),
    ("mail-550", {}, [("MAIL", Fault(reply="550 5.7.1 x"), None)], {}),
    ("rcpt-452", {}, [("RCPT", Fault(reply="452 4.2.2 x"), "b@y.test")], {}),
    ("rcpt-550", {}, [("RCPT", Fault(reply="550 5.1.1 x"), "b@y.test")], {}),
    ("data-451", {}, [("DATA", Fault(reply="451 4.3.0 x"), None)], {}),
    ("data-554", {}, [("DATA", Fault(reply="554 5.5.1 x"), None)], {}),
    ("end-452", {}, [("END", Fault(reply="452 4.3.1 x"), None)], {}),
    ("end-554", {}, [("END", Fault(reply="554 5.7.1 x"), None)], {}),
    ("greeting-421", {}, [("GREETING", Fault(reply="421 4.3.2 x"), None)], {}),
    ("greeting-554", {}, [("GREETING", Fault(reply="554 5.7.1 x"), None)], {}),
    ("greeting-drop", {}, [("GREETING", Fault(drop=True), None)], {}),
    ("helo-fallback", {}, [("EHLO", Fault(reply="502 5.5.2 x"), None)], {}),
    (
        "no-helo",
        {},
        [("EHLO", Fault(reply="502 x"), None), ("HELO", Fault(reply="502 x"), None)],
        {},
    ),
    ("drop-after-dot", {}, [("END", Fault(drop=True), None)], {}),
    ("slow", {}, [("MAIL", Fault(delay=2.5), None)], {"timeout": 1}),
    (
        "pipelined-rcpt-550",
        {"features": Features(pipelining=True)},
        [("RCPT", Fault(reply="550 5.1.1 x"), "b@y.test")],
        {},
    ),
    ("size", {"features": Features(size=10)}, [], {}),
    ("dsn", {"features": Features(dsn=True)}, [], {"dsn_return": "HDRS", "dsn_notify": "FAILURE"}),
    ("no-dsn", {}, [], {"dsn_return": "HDRS"}),
    ("no-starttls", {}, [], {"tls": True}),
    ("starttls", {"tls": "starttls"}, [], {"tls": True}),
    (
        "starttls-454",
        {"tls": "starttls"},
        [("STARTTLS", Fault(reply="454 4.7.0 x"), None)],
        {"tls": True},
    ),
    ("wrong-ca", {"tls": "starttls"}, [], {"tls": True, "tls_trust_file": "system"}),
    (
        "wrong-name",
        {"tls": "implicit"},
        [],
        {"tls": True, "tls_starttls": False, "tls_host_override": "x.test"},
    ),
    (
        "bad-pin",
        {"tls": "implicit"},
        [],
        {"tls": True, "tls_starttls": False, "tls_fingerprint": _BAD_PIN},
    ),
    ("tls-to-plain", {}, [], {"tls": True, "tls_starttls": False, "tls_certcheck": False}),
    ("no-auth", {}, [], {"auth": "PLAIN"} | _USER),
    ("auth-not-offered", {"features": Features(auth=("LOGIN",))}, [], {"auth": "PLAIN"} | _USER),
    ("auth-insecure", {"features": Features(auth=("PLAIN", "LOGIN"))}, [], {"auth": ""} | _USER),
    ("auth-bad", {"features": _PLAIN}, [], {"auth": "PLAIN", "user": "user", "password": "no"}),
    (
        "auth-454",
        {"features": _PLAIN},
        [("AUTH", Fault(reply="454 4.7.0 x"), None)],
        {"auth": "PLAIN"} | _USER,
    ),
    ("auth-no-user", {"features": _PLAIN}, [], {"auth": "PLAIN"}),
    (
        "lmtp-refused",
        {"lmtp": True},
        [("END", Fault(reply="550 5.1.1 x"), "b@y.test")],
        {"protocol": "lmtp"},
    ),
    ("lhlo-refused", {"lmtp": True}, [("EHLO", Fault(reply="500 x"), None)], {"protocol": "lmtp"}),
    ("long-reply", {"features": Features(extra=tuple(f"X{i}" for i in range(60)))}, [], {}),
]


def _msmtprc(server: UpstreamServer, settings: dict[str, Any]) -> str:
    lines = ["account default", "host 127.0.0.1", f"port {server.port}", "from a@x.test"]
    for name, value in settings.items():
        if name == "auth":
            value = value.lower() if value else "on"
        elif name in ("dsn_return", "dsn_notify"):
            value = {"HDRS": "headers"}.get(value, value.lower())
        lines.append(f"{name} {_RC_WORDS.get(value, value) if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n"


# relayd refuses an oversized mail before MAIL with its own text; msmtp learns it after the dot.
_OWN_TEXT = {"size"}


@pytest.mark.skipif(MSMTP is None, reason="Debian's msmtp 1.8.23 is not installed")
@pytest.mark.parametrize(
    ("case", "server_options", "faults", "settings"), COMPAT, ids=[c[0] for c in COMPAT]
)
def test_same_exit_code_and_text_as_msmtp(
    tmp_path: Any,
    case: str,
    server_options: dict[str, Any],
    faults: list[tuple[Any, Fault, str | None]],
    settings: dict[str, Any],
) -> None:
    assert MSMTP is not None
    with UpstreamServer(**server_options) as server:
        for stage, fault, address in faults:
            server.fail(stage, fault, address=address)
        if server.certificates is not None:
            settings = {"tls_trust_file": str(server.certificates.ca_file)} | settings
        rc = tmp_path / "msmtprc"
        rc.write_text(_msmtprc(server, settings))
        rc.chmod(0o600)
        theirs = subprocess.run(
            [MSMTP, "-C", str(rc), "a@y.test", "b@y.test"],
            input=b"Subject: compat\n\nbody\n",
            capture_output=True,
            timeout=30,
        )
        (ours,) = send(
            account(server, **settings), message("a@y.test", "b@y.test", sender="a@x.test")
        )
    first_line = theirs.stderr.decode().partition("\n")[0]
    assert ours.exit_code == theirs.returncode
    if case not in _OWN_TEXT:
        assert (f"msmtp: {ours.error}" if ours.error else "") == first_line
