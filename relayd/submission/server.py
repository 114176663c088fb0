"""The host submit socket (SPEC §7): users' relayd-sendmail hands its mail to the system daemon,
which records the peer's uid from SO_PEERCRED and replies only after the durable commit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pwd
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relayd import paths
from relayd.daemon import startup
from relayd.daemon.services import Context
from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store.records import NewMessage
from relayd.submission import privilege, protocol, spooled
from relayd.submission.cmdline import Delivery, Invocation, Mode, parse
from relayd.submission.limits import Committer, RateLimit
from relayd.submission.ops import QueueOps
from relayd.submission.protocol import Refused
from relayd.submission.submit import too_big
from relayd.sysexits import ExitCode

log = logging.getLogger("relayd.submit")

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_STOP_WAIT = 10.0  # seconds a stop waits for submissions that are being committed


class Peer:
    """Who is on the other end, from the kernel (never from what the client says)."""

    def __init__(self, sock: socket.socket) -> None:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        self.pid, self.uid, self.gid = _CREDENTIALS.unpack(raw)
        try:
            self.user: str | None = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            self.user = None

    def __str__(self) -> str:
        return f"uid {self.uid} ({self.user or '?'}), pid {self.pid}"


def enabled(settings: Settings) -> bool:
    """`[submit] listen`, by default on for the host queue: the daemon runs as root, or its
    queue lies in the system spool directory."""
    if settings.submit.listen is not None:
        return settings.submit.listen
    spool = paths.sqlite_path(settings.database) or ""
    return os.geteuid() == 0 or spool.startswith(paths.SYSTEM_STATE_DIR + "/")


class SubmitServer:
    """Serves the submit socket inside `relayd daemon` (a daemon service)."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.committer = Committer(context.store)
        self.rate = RateLimit()
        self.handlers = QueueOps(context).handlers()
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._readers: set[asyncio.Task[Any]] = set()  # still reading: cancelled at a stop
        self._tasks: set[asyncio.Task[Any]] = set()  # every connection
        self._clients = 0

    @property
    def settings(self) -> Settings:
        return self.context.settings()

    async def start(self) -> None:
        passed = self.context.sockets.pop("submit", [])
        if passed:
            sock = passed[0]
        elif enabled(self.settings):
            sock = bind_submit_socket(paths.submit_socket())
            self._sock = sock
        else:
            return
        self._server = await asyncio.start_unix_server(self._connection, sock=sock)
        log.info("submit socket: %s", sock.getsockname() or "(passed by systemd)")

    async def stop(self) -> None:
        """Stop accepting; a client still sending gets no reply (it exits 75); what is being
        committed is committed and answered."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._readers):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_STOP_WAIT)
        if self._sock is not None:
            startup.unbind(self._sock)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = Peer(writer.get_extra_info("socket"))
        except OSError:
            writer.close()
            return
        self._clients += 1
        reading = asyncio.current_task()
        assert reading is not None
        self._readers.add(reading)
        self._tasks.add(reading)
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            log.warning("submission from %s cut off by the daemon's stop: nothing stored", peer)
        finally:
            self._readers.discard(reading)
            self._tasks.discard(reading)
            self._clients -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        limits = self.settings.submit
        try:
            if self._clients > limits.max_clients:
                raise Refused(
                    f"the host's relayd is busy ({limits.max_clients} submitters); try again",
                    ExitCode.TEMPFAIL,
                )
            kind, hello_bytes = await self._frame(reader, protocol.HELLO, first=True)
            if kind is None:
                return  # connected and left (a probe whether the daemon answers)
            hello = protocol.load_json(hello_bytes)
            if hello.get("version") != protocol.VERSION:
                raise Refused(
                    f"unsupported protocol version {hello.get('version')!r} (this daemon speaks"
                    f" {protocol.VERSION}): relayd-sendmail and the daemon differ",
                    ExitCode.PROTOCOL,
                )
            op = hello.get("op")
            if op == "submit":
                await self._submit(reader, writer, hello, peer)
            elif isinstance(op, str) and op in self.handlers:
                code, line = await self.handlers[op](hello, peer.uid, _sender(writer))
                await _reply(writer, code, line)
            else:
                raise Refused(f"unknown request {op!r}", ExitCode.PROTOCOL)
        except Refused as refusal:
            await _reply(writer, refusal.code, refusal.line)
        except protocol.ProtocolError as exc:
            log.warning("submit socket: malformed request from %s: %s; nothing stored", peer, exc)
            await _reply(writer, ExitCode.PROTOCOL, f"malformed request: {exc}")
        except TimeoutError:
            log.warning(
                "submit socket: %s sent nothing for %ds; nothing stored", peer, limits.timeout
            )
            await _reply(writer, ExitCode.TEMPFAIL, "timed out waiting for the message")
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("submission from %s ended before the message did: nothing stored", peer)

    async def _frame(
        self, reader: asyncio.StreamReader, allowed: bytes, *, first: bool = False
    ) -> tuple[bytes | None, bytes]:
        """The next frame; (None, b"") when a client leaves before its first frame."""
        # asyncio.timeout, not wait_for: wait_for makes a task of every read (Python 3.11)
        async with asyncio.timeout(self.settings.submit.timeout):
            try:
                header = await reader.readexactly(protocol.HEADER_SIZE)
            except asyncio.IncompleteReadError as exc:
                if first and not exc.partial:
                    return None, b""
                raise
            kind, length = protocol.parse_header(header)
            protocol.check_header(kind, length, allowed)
            payload = await reader.readexactly(length) if length else b""
        return kind, payload

    async def _submit(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: dict[str, Any],
        peer: Peer,
    ) -> None:
        argv = hello.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise protocol.ProtocolError("argv must be a list of strings")
        try:
            inv = parse(argv)
            if inv.mode is not Mode.SEND or inv.pretend:
                raise Refused("only mail goes through the submit socket", ExitCode.USAGE)
            warnings = privilege.screen(inv)
        except RelaydError as err:
            raise Refused(err.message, err.exit_code) from None
        limits = self.settings.submit
        if not self.rate.take(peer.uid, limits.rate, time.monotonic()):
            log.warning("submit socket: %s is over %d messages a minute", peer, limits.rate)
            raise Refused(
                f"more than {limits.rate} messages a minute from this user; try again later",
                ExitCode.TEMPFAIL,
            )
        with tempfile.SpooledTemporaryFile(spooled.IN_MEMORY) as spool:
            size = 0
            while True:
                kind, chunk = await self._frame(reader, protocol.DATA + protocol.END)
                if kind == protocol.END:
                    break
                size += len(chunk)
                if size > limits.max_size:
                    log.warning("submit socket: %s sent more than %d bytes", peer, limits.max_size)
                    raise Refused(too_big(limits.max_size).message, ExitCode.DATAERR)
                spool.write(chunk)
            self._readers.difference_update({asyncio.current_task()})  # a stop lets it finish
            spool.seek(0)
            with spooled.wire_file() as wire:
                work: NewMessage | Callable[[], NewMessage]
                work = functools.partial(_compose, inv, spool, wire, peer)
                try:
                    if size > spooled.IN_MEMORY:  # not in the commit's thread: others wait there
                        work = await asyncio.to_thread(work)
                    # else composed in the group commit's thread: one hop to a thread, not two
                    queue_id = await self.committer.add(work, time.time())
                except RelaydError as err:
                    raise Refused(err.message, err.exit_code) from None
        await _reply(writer, ExitCode.OK, f"queued as {queue_id}", warnings)  # then the rest
        log.info("queued %s from %s", queue_id, peer)
        if inv.delivery is Delivery.BACKGROUND:
            self.context.wake()


def _compose(inv: Invocation, spool: Any, wire: Any, peer: Peer) -> NewMessage:
    """(In the commit's thread) the stored message, made with the host's accounts from
    `spool` (`spooled.compose`), recorded as the peer's; its RelaydError is the answer."""
    new = spooled.compose(inv, spool.read, wire)
    new.uid, new.user = peer.uid, peer.user
    return new


def _sender(writer: asyncio.StreamWriter) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """Send one `L` frame and wait until the client takes it (a slow reader slows only its
    own listing)."""

    async def send(value: dict[str, Any]) -> None:
        writer.write(protocol.json_frame(protocol.LINE, value))
        await writer.drain()

    return send


async def _reply(
    writer: asyncio.StreamWriter, code: int, line: str, warnings: list[str] | None = None
) -> None:
    value = {"code": int(code), "line": line, "warnings": warnings or []}
    with contextlib.suppress(OSError):
        writer.write(protocol.json_frame(protocol.REPLY, value))
        await writer.drain()


def bind_submit_socket(path: str) -> socket.socket:
    """The submit socket at `path`, mode 0666 (the daemon decides what each user may do), in
    a directory created 0755; a directory others cannot search is logged."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        startup.clear_stale_socket(path, socket.SOCK_STREAM)
    except OSError as exc:
        raise startup.os_failure(exc, "bind the submit socket", path) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise startup.os_failure(exc, "bind the submit socket", path) from None
    if not os.stat(directory).st_mode & stat.S_IXOTH:
        log.warning("submit socket: other users cannot reach %s (its directory is not o+x)", path)
    return sock
