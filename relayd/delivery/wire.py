"""The byte stream to the server: connecting (TCP, UNIX socket, SOCKS5), replies and data."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from collections.abc import AsyncIterable, Callable, Sequence

from relayd.accounts.account import Account
from relayd.delivery import tls
from relayd.delivery.classify import Failure, classify, host_not_found, io_failure, strerror
from relayd.delivery.result import Event, Reply

MAX_REPLY_LINES = 50  # msmtp's SMTP_MAXLINES
CHUNK = 64 * 1024  # message bytes per write
_READ_LIMIT = 64 * 1024
_CLOSE_WAIT = 1.0

DebugSink = Callable[[str], None]


class Abort(Exception):
    """The connection cannot go on; `quit` says whether msmtp would still say QUIT."""

    def __init__(self, failure: Failure, *, quit: bool = False) -> None:
        super().__init__(failure.error)
        self.failure = failure
        self.quit = quit


def encode(line: str) -> bytes:
    return line.encode("utf-8", "surrogateescape")


class Stuffer:
    """Dot-stuffing of message data fed a chunk at a time: the same bytes whatever the chunk
    boundaries. The data ends in CRLF (a missing one added, a bare LF at the very end made
    CRLF as msmtp would), then the terminating dot line (`end`)."""

    def __init__(self) -> None:
        self._line_start = True  # the data given out so far ends a line (or there is none)
        self._last = b""  # the last byte of data given out
        self._held = False  # a final LF kept back: the end may drop it (a bare LF at the end)

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed bytes of `chunk` that can go out now."""
        if not chunk:
            return b""
        data = b"\n" + chunk if self._held else chunk
        self._held = data.endswith(b"\n")
        if self._held:
            data = data[:-1]
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._line_start and data.startswith(b"."):
            out = b"." + out
        self._line_start = data.endswith(b"\n")
        self._last = data[-1:]
        return out

    def end(self) -> bytes:
        """The rest: a kept-back CRLF's LF, or the CRLF msmtp adds, and the dot line."""
        if self._held and self._last == b"\r":
            return b"\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


class _Trace:
    """The data lines traced like msmtp -d, as the stuffed bytes go out."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._partial = b""

    def add(self, out: bytes) -> None:
        *lines, self._partial = (self._partial + out).split(b"\n")
        shown = [line.decode("utf-8", "surrogateescape").removesuffix("\r") for line in lines]
        self._wire.trace(shown)


class Wire:
    """The byte stream to the server: replies read and commands written as msmtp does, bounded
    by the timeout, with the dialogue traced like msmtp -d."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float | None,
        debug: DebugSink | None,
    ) -> None:
        self.reader, self.writer, self.timeout, self.debug = reader, writer, timeout, debug
        # What was read and not yet taken as reply lines: one read takes in every reply of a
        # pipelined burst, and only a read that must wait arms the timeout (a hot path).
        self._buffer = bytearray()

    async def _line(self) -> bytes:
        """The next line with its LF; at the end of the connection what is left (maybe b"")."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > _READ_LIMIT:
                raise Abort(classify(Event.INVALID_REPLY))
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self.reader.read(_READ_LIMIT)
            except OSError as exc:  # TimeoutError included
                raise Abort(io_failure(exc, writing=False)) from None
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            self._buffer += chunk

    @property
    def buffered(self) -> bool:
        """Has the server sent bytes not read yet (after STARTTLS's 220: an injection)?"""
        return bool(self._buffer) or bool(getattr(self.reader, "_buffer", b""))

    async def read_reply(self) -> Reply:
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end > 3 and buffer[3] == 0x20 and not self.debug:
            # The usual case, read already: one whole one-line reply ("250 2.0.0 Ok").
            code = bytes(buffer[:3])
            if code.isdigit():
                only = bytes(buffer[4:end]).removesuffix(b"\r")
                del buffer[: end + 1]
                return Reply(int(code), (only.decode("utf-8", "surrogateescape"),))
        lines: list[bytes] = []
        while len(lines) <= MAX_REPLY_LINES:
            raw = await self._line()
            valid = raw[:3].isdigit() and raw[3:4] in (b" ", b"-") and raw.endswith(b"\n")
            if not valid:
                empty = not lines and not raw
                raise Abort(classify(Event.EMPTY_REPLY if empty else Event.INVALID_REPLY))
            line = raw[:-1].removesuffix(b"\r")
            if self.debug:
                self.debug("<-- " + line.decode("utf-8", "surrogateescape"))
            lines.append(line)
            if raw[3:4] == b" ":
                break
        else:
            raise Abort(classify(Event.LONG_REPLY))
        text = tuple(line[4:].decode("utf-8", "surrogateescape") for line in lines)
        return Reply(int(lines[0][:3]), text)

    async def write(self, payload: bytes) -> None:
        try:
            self.writer.write(payload)
            # Usually the kernel took it all at once: waiting on drain() would only cost a
            # timer and a loop turn. A lost connection still goes through drain(), which
            # raises its error (asyncio would otherwise drop later writes with a warning).
            transport = self.writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                async with asyncio.timeout(self.timeout):
                    await self.writer.drain()
        except OSError as exc:
            raise Abort(io_failure(exc, writing=True)) from None

    def trace(self, lines: Sequence[str]) -> None:
        if self.debug:
            for line in lines:
                self.debug("--> " + line)

    async def send(self, lines: Sequence[str], shown: str | None = None) -> None:
        """Write commands in one buffer (pipelining, and no Nagle stall); `shown` replaces a
        single secret line in the trace."""
        self.trace([shown] if shown is not None else lines)
        await self.write(b"".join(encode(line) + b"\r\n" for line in lines))

    async def command(self, line: str, shown: str | None = None) -> Reply:
        await self.send([line], shown)
        return await self.read_reply()

    async def send_data(
        self, data: bytes | AsyncIterable[bytes], *, then: Sequence[str] = ()
    ) -> None:
        """The message data (bytes, or chunks as read from the store) dot-stuffed as it goes,
        and its final dot; `then`: commands to pipeline after it (the next message's
        envelope), in the same write."""
        stuffer = Stuffer()
        trace = _Trace(self) if self.debug else None
        # Small messages go out in one write with their final dot (one syscall, one segment).
        pending = b""
        if isinstance(data, bytes):
            view = memoryview(data)
            for start in range(0, len(data), CHUNK):
                piece = stuffer.feed(bytes(view[start : start + CHUNK]))
                pending = await self._stage(pending, piece, trace)
        else:
            async for chunk in data:
                pending = await self._stage(pending, stuffer.feed(chunk), trace)
        last = stuffer.end()
        if trace:
            trace.add(last)
            self.trace(then)
        await self.write(pending + last + b"".join(encode(line) + b"\r\n" for line in then))

    async def _stage(self, pending: bytes, piece: bytes, trace: _Trace | None) -> bytes:
        """`pending` with `piece` added; a CHUNK's worth written out first."""
        if trace:
            trace.add(piece)
        if pending and len(pending) + len(piece) > CHUNK:
            await self.write(pending)
            return piece
        return pending + piece

    async def start_tls(self, context: ssl.SSLContext, hostname: str | None) -> None:
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=hostname), self.timeout
            )
        except OSError as exc:
            raise Abort(tls.handshake_failure(exc)) from None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the connection is gone either way
            await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_WAIT)


# -- connecting ----------------------------------------------------------------------------------


def _bind(sock: socket.socket, source_ip: str) -> None:
    """msmtp's bind: the address must parse as IPv6 or IPv4 and suit the socket."""
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            socket.inet_pton(family, source_ip)
        except OSError:
            continue
        if family == sock.family:
            sock.bind((source_ip, 0))
            return
        break
    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


async def _tcp(host: str, port: int, source_ip: str | None, timeout: float | None) -> socket.socket:
    """Connect to the first address of `host` that answers, as msmtp's net_open_socket."""
    loop = asyncio.get_running_loop()
    try:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError:
            # Python's IDNA codec refuses what msmtp hands the resolver as it is (an empty or
            # 64-character label): ask with those bytes, as msmtp. Bytes that are not UTF-8
            # (a --host argument) msmtp's IDN conversion refuses before any lookup.
            raw = host.encode("utf-8", "surrogateescape")
            if raw.decode("utf-8", "replace") != host:
                shown = raw.decode("utf-8", "backslashreplace")  # stored and logged as text
                refused = socket.gaierror(socket.EAI_FAIL, "Parameter string not correctly encoded")
                raise Abort(host_not_found(refused, shown)) from None
            infos = await loop.getaddrinfo(raw, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Abort(host_not_found(exc, host)) from None
    failure: Failure | None = None
    connect_error = 0
    for family, kind, proto, _, address in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            failure = classify(Event.SOCKET, reason=strerror(exc))
            continue
        try:
            if source_ip:
                _bind(sock, source_ip)
        except OSError as exc:
            sock.close()
            failure = classify(Event.BIND, ip=source_ip, reason=strerror(exc))
            continue
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
        except OSError as exc:
            sock.close()
            code = errno.ETIMEDOUT if isinstance(exc, TimeoutError) else exc.errno or 0
            connect_error = connect_error if code == errno.ENETUNREACH else code
            reason = os.strerror(connect_error or errno.ENETUNREACH)
            failure = classify(Event.CONNECT, target=f"{host}, port {port}", reason=reason)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert failure is not None  # getaddrinfo returns at least one address
    raise Abort(failure)


_SOCKS_ERRORS = (
    "general server failure",
    "connection not allowed",
    "network unreachable",
    "host unreachable",
    "connection refused",
    "time-to-live expired",
    "command not supported",
    "address type not supported",
)


async def _socks5(wire: Wire, host: str, port: int) -> None:
    """A SOCKS5 CONNECT with the host name (no local DNS), as msmtp's net_socks5_connect."""
    name = host.encode("utf-8")
    if len(name) > 0xFF:
        raise Abort(classify(Event.PROXY, reason="host name too long"))

    async def read(count: int) -> bytes:
        try:
            return await asyncio.wait_for(wire.reader.readexactly(count), wire.timeout)
        except asyncio.IncompleteReadError:
            raise Abort(io_failure(None, writing=False)) from None
        except OSError as exc:
            raise Abort(io_failure(exc, writing=False)) from None

    await wire.write(b"\x05\x01\x00")
    if await read(2) != b"\x05\x00":
        raise Abort(classify(Event.PROXY, reason="unexpected reply"))
    await wire.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    head = await read(5)
    if head[0] != 5 or head[2] != 0 or head[3] not in (1, 3, 4):
        raise Abort(classify(Event.PROXY, reason="unexpected reply"))
    await read({1: 3, 4: 15, 3: head[4]}[head[3]] + 2)
    if head[1] != 0:
        reason = _SOCKS_ERRORS[head[1] - 1] if head[1] <= len(_SOCKS_ERRORS) else "unknown error"
        raise Abort(classify(Event.PROXY, reason=reason))


async def connect(account: Account, timeout: float | None, debug: DebugSink | None) -> Wire:
    if account.socket:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(account.socket, limit=_READ_LIMIT), timeout
            )
        except OSError as exc:
            reason = strerror(exc)
            raise Abort(classify(Event.CONNECT, target=account.socket, reason=reason)) from None
        return Wire(reader, writer, timeout, debug)
    host, port = account.host or "", account.port
    if account.proxy_host:
        sock = await _tcp(account.proxy_host, account.proxy_port, None, timeout)
    else:
        sock = await _tcp(host, port, account.source_ip, timeout)
    reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_LIMIT)
    wire = Wire(reader, writer, timeout, debug)
    if account.proxy_host:
        try:
            await _socks5(wire, host, port)
        except Abort:
            await wire.close()
            raise
    return wire
