"""`relayd-sendmail -bs`: the SMTP listener's handler spoken on standard input and output."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aiosmtpd.smtp import Session

from relayd import paths, settings
from relayd.settings import Settings
from relayd.store import fastpath, location
from relayd.store.records import NewMessage
from relayd.submission import client, protocol, route
from relayd.submission.cmdline import Invocation
from relayd.submission.smtpd import (
    TOO_BIG,
    Compose,
    Handler,
    RelaydSMTP,
    Sessions,
    one_line,
    options,
)
from relayd.submission.smtpdata import Content, Spool
from relayd.sysexits import ExitCode

_BLOCK = 64 * 1024
_DRAIN_TIMEOUT = 60.0  # seconds to pass the last replies on once the session ended


def serve(prog: str, inv: Invocation) -> int:
    """One SMTP session on standard input and output, routed as relayd-sendmail routes a
    mail (SPEC §7); 0 once it ends with QUIT or the end of the input."""
    if ignored := _ignored(inv):
        sys.stderr.write(
            f"{prog}: warning: -bs takes the envelope and the account from the SMTP"
            f" session (MAIL FROM, RCPT TO); ignoring {', '.join(ignored)}\n"
        )
    loaded = settings.load()
    way = route.decide()
    queue: QueueIngest | None = None
    handler: Handler
    if way.sock is not None:
        way.sock.close()  # the daemon takes one message a connection: one each, at DATA
        handler = HostHandler(lambda: loaded, paths.submit_socket())
    else:
        wake = _nothing if way.note else _wake
        queue = QueueIngest(location.database_url(), fastpath.lock_timeout(), wake)
        handler = Handler(lambda: loaded, queue)
    aiosmtpd_log = logging.getLogger("mail.log")  # aiosmtpd's own: never on stdout or stderr
    aiosmtpd_log.propagate = False
    aiosmtpd_log.addHandler(logging.NullHandler())
    output = asyncio.run(_session(handler, loaded))
    output.join(_DRAIN_TIMEOUT)
    if way.note and queue is not None and queue.stored:
        from relayd.submission import sendmail

        sendmail.no_daemon_note(prog)
    return ExitCode.OK


def _ignored(inv: Invocation) -> list[str]:
    """What of the command line `-bs` does not use: the SMTP client gives the envelope, and
    MAIL FROM chooses the account among the configured ones, as for the listener."""
    ignored = [f"--{name}" for name, _ in inv.overrides]
    for given, option in (
        (inv.conffile, "-C"),
        (inv.account_id, "-a"),
        (inv.envelope_from, "-f"),
        (inv.full_name, "-F"),
        (inv.read_recipients, "-t"),
        (inv.read_envelope_from, "--read-envelope-from"),
    ):
        if given:
            ignored.append(option)
    if inv.recipients:
        ignored.append("the recipients")
    return ignored


class QueueIngest:
    """The queue this process writes itself: each message in its own commit, as
    relayd-sendmail stores one (the daemon's group commit is not here to share)."""

    def __init__(self, database: str, timeout: float, wake: Callable[[], None]) -> None:
        self.database, self.timeout, self.wake, self.stored = database, timeout, wake, False

    async def add(self, message: NewMessage | Compose, now: float) -> str:
        queue_id = await asyncio.to_thread(self._store, message, now)
        self.stored = True
        self.wake()
        return queue_id

    def _store(self, message: NewMessage | Compose, now: float) -> str:
        new = message if isinstance(message, NewMessage) else message()
        return fastpath.submit(self.database, new, now, timeout=self.timeout)


class _Unused:
    """HostHandler's ingest: its messages are composed and stored by the host daemon."""

    async def add(self, message: NewMessage | Compose, now: float) -> str:
        raise AssertionError("the host daemon stores what goes through its submit socket")


class HostHandler(Handler):
    """The handler for a user of the host queue: each message goes through the submit socket,
    as `relayd-sendmail -f SENDER -- RECIPIENT...` would send it."""

    def __init__(self, settings: Any, path: str) -> None:
        super().__init__(settings, _Unused())
        self.path = path

    async def store(
        self,
        session: Session,
        sender: str,
        recipients: list[str],
        data: Content,
        settings: Settings,
    ) -> str:
        argv = ["-f", sender or "<>", "--", *recipients]
        return smtp_reply(await asyncio.to_thread(_through_socket, self.path, argv, data))


def _through_socket(path: str, argv: list[str], data: Content) -> client.Reply:
    sock = route.connect(path)
    if sock is None:
        return client.Reply(ExitCode.TEMPFAIL, "the host's relayd does not answer", [])
    chunk = protocol.MAX_CHUNK
    if isinstance(data, Spool):
        chunks: Iterable[bytes] = data.chunks()
    else:
        chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
    try:
        return client.send(sock, argv, chunks)
    finally:
        sock.close()


def smtp_reply(reply: client.Reply) -> str:
    """The SMTP reply to DATA for the host daemon's reply to a submission."""
    line = one_line(reply.line)
    if reply.code == ExitCode.OK:
        return f"250 2.0.0 Ok: {line}"
    if reply.code == ExitCode.DATAERR:
        return TOO_BIG if "max_size" in line else f"554 5.6.0 {line}"
    if reply.code in (ExitCode.NOPERM, ExitCode.CONFIG):
        return f"550 5.7.1 {line}"
    return f"451 4.3.0 {line}"


class _StdioSMTP(RelaydSMTP):
    """RelaydSMTP on one end of a socket pair; at the end of the input, the commands already
    read are answered before the session ends (aiosmtpd would drop them: pipelining)."""

    def __init__(self, *args: Any, ended: asyncio.Future[None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ended, self._input_over = ended, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.session is not None:
            self.session.peer = "stdin"  # in the log lines, for the socket pair's nameless end

    def eof_received(self) -> bool:
        asyncio.StreamReaderProtocol.eof_received(self)  # the reader runs dry, then stops
        return True

    async def handle_exception(self, error: Exception) -> str:
        if not isinstance(error, asyncio.IncompleteReadError):
            status: str = await super().handle_exception(error)
            return status
        self._input_over = True  # a command or message cut off by the end: dropped
        assert self.transport is not None
        self.transport.close()  # once the replies are written; connection_lost ends this task
        await asyncio.get_running_loop().create_future()
        return ""

    async def push(self, status: Any) -> None:
        if not self._input_over:
            await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if not self._ended.done():
            self._ended.set_result(None)


async def _session(handler: Handler, loaded: Settings) -> threading.Thread:
    """Serve the session until it ends; the thread still passing its replies to stdout."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ended: asyncio.Future[None] = loop.create_future()
    smtp = _StdioSMTP(handler, Sessions(lambda: 1), ended=ended, **options(loaded))
    await loop.connect_accepted_socket(lambda: smtp, ours)
    output = threading.Thread(target=_copy_out, args=(theirs,), name="stdout", daemon=True)
    output.start()
    threading.Thread(target=_copy_in, args=(theirs,), name="stdin", daemon=True).start()
    await ended
    return output


def _copy_in(sock: socket.socket) -> None:
    """Standard input into the session; its end is the session's end of input."""
    with contextlib.suppress(OSError):  # the session is over, or stdin unreadable: its end
        try:
            while block := os.read(0, _BLOCK):
                sock.sendall(block)
        finally:
            sock.shutdown(socket.SHUT_WR)


def _copy_out(sock: socket.socket) -> None:
    """The session's replies to standard output, every byte, until the session closes."""
    try:
        while block := sock.recv(_BLOCK):
            view = memoryview(block)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # nobody reads the replies: end the session


def _wake() -> None:
    fastpath.wake(paths.wake_socket())


def _nothing() -> None:
    return None
