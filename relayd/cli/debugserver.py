"""`relayd debug-server`: an aiosmtpd sink on loopback that reports, and may file, what it gets."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, Envelope, Session

from relayd.daemon import maildir
from relayd.errors import RelaydError, UsageError
from relayd.sysexits import ExitCode
from relayd.text import display_headers, readable, sanitize

__all__ = ["Received", "listen_address", "prepare_maildir", "serve"]

IDENT = "relayd debug-server"
_SHUTDOWN = b"421 4.3.2 relayd debug-server shutting down\r\n"

log = logging.getLogger("relayd.cli.debugserver")


@dataclass(frozen=True)
class Received:
    """One message as the sink took it, in text safe to print (invalid UTF-8 shown as U+FFFD)."""

    number: int  # 1 for the first message since the start
    received_at: float  # Unix seconds
    peer: str  # the client's address, `127.0.0.1:50123` or `[::1]:50123`
    helo: str  # the name the client gave in HELO/EHLO
    esmtp: bool  # EHLO (True) or HELO
    mail_from: str  # '' for the null sender <>
    mail_options: tuple[str, ...]  # MAIL FROM parameters, e.g. SIZE=312 BODY=8BITMIME SMTPUTF8
    rcpt_tos: tuple[str, ...]
    size: int  # bytes of message data, after dot-unstuffing
    headers: tuple[tuple[str, str], ...]  # (name, value): unfolded, RFC 2047 words decoded
    maildir_file: str | None  # where --maildir filed it


def listen_address(host: str) -> str:
    """The address to bind for `--host`: loopback only (UsageError), the first one a name has."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise RelaydError(
            f"debug-server: cannot resolve {host}: {detail}", ExitCode.NOHOST
        ) from None
    addresses = [str(info[4][0]) for info in found]
    if not all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses):
        raise UsageError(
            f"debug-server: refusing to listen on {host}: not a loopback address "
            "(it would accept mail from other hosts; use 127.0.0.1 or ::1)"
        )
    return addresses[0]


def prepare_maildir(path: str) -> str:
    """`path` made absolute, with tmp/, new/ and cur/ created 0700 if missing (EX_CANTCREAT)."""
    directory = os.path.abspath(os.path.expanduser(path))
    try:
        maildir.ensure(directory)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise RelaydError(
            f"cannot create Maildir {directory}: {detail}", ExitCode.CANTCREAT
        ) from None
    return directory


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def _sender(envelope: Envelope) -> str:
    """aiosmtpd keeps the null sender as the literal `<>`; no address can be spelt so."""
    address = str(envelope.mail_from)
    return "" if address == "<>" else address


def _delivery_headers(sender: str, recipients: list[str]) -> bytes:
    """What a delivery agent prepends (Postfix local(8) order): Return-Path, then X-Original-To
    and Delivered-To for each envelope recipient, as one file serves them all."""
    fields = [("Return-Path", f"<{sender}>")]
    fields += [("X-Original-To", address) for address in recipients]
    fields += [("Delivered-To", address) for address in recipients]
    return b"".join(
        f"{name}: {sanitize(value, 'header')}\r\n".encode("utf-8", "surrogateescape")
        for name, value in fields
    )


def _file(directory: str, envelope: Envelope, data: bytes) -> str:
    """File the message in the Maildir; the new file's path (OSError when it cannot)."""
    stored = _delivery_headers(_sender(envelope), list(envelope.rcpt_tos)) + data
    return maildir.deliver(directory, stored)


class _Sink:
    """The aiosmtpd handler: each message is filed (with a Maildir), then reported."""

    def __init__(self, maildir: str | None, on_message: Callable[[Received], None]) -> None:
        self.maildir = maildir
        self.on_message = on_message
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        received_at = time.time()
        data = envelope.original_content
        assert isinstance(data, bytes)
        stored = None
        if self.maildir is not None:
            try:
                stored = await asyncio.to_thread(_file, self.maildir, envelope, data)
            except OSError as exc:
                log.error(
                    "debug-server: cannot store a message in Maildir %s: %s",
                    self.maildir,
                    exc.strerror or exc,
                )
                return "451 4.3.0 Cannot store the message now, try again later"
        self.count += 1
        self.on_message(
            Received(
                number=self.count,
                received_at=received_at,
                peer=_peer(session.peer),
                helo=readable(str(session.host_name)),
                esmtp=bool(session.extended_smtp),
                mail_from=readable(_sender(envelope)),
                mail_options=tuple(readable(option) for option in envelope.mail_options),
                rcpt_tos=tuple(readable(address) for address in envelope.rcpt_tos),
                size=len(data),
                headers=tuple(display_headers(data)),
                maildir_file=stored,
            )
        )
        return f"250 2.0.0 Ok: message {self.count} received by {IDENT}"


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP that tracks its open connections, so a shutdown can close them."""

    # relayd sends long lines unchanged as msmtp does, and real servers take them: refuse only
    # what the size limit refuses.
    line_length_limit = DATA_SIZE_DEFAULT

    def __init__(self, handler: _Sink, connections: set[_SinkSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(error)

    def shut_down(self) -> None:
        """Say 421 (RFC 5321 §3.8) and close the connection."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(_SHUTDOWN)
            transport.close()


async def serve(
    address: str,
    port: int,
    *,
    maildir: str | None,
    on_ready: Callable[[str, int], None],
    on_message: Callable[[Received], None],
) -> None:
    """Accept mail on `address`:`port` (0: a free port) until SIGINT or SIGTERM.

    `on_ready(address, port)` once listening, `on_message` for every message accepted. SMTPUTF8
    and 8BITMIME are offered; AUTH is not (it needs TLS, which the sink does not offer: 538).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sink = _Sink(maildir, on_message)
    connections: set[_SinkSMTP] = set()
    hostname = socket.gethostname()  # not getfqdn(), which may wait for DNS

    def connection() -> _SinkSMTP:
        return _SinkSMTP(
            sink,
            connections,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident=IDENT,
            loop=loop,
        )

    try:
        server = await loop.create_server(connection, host=address, port=port)
    except OSError as exc:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        detail = exc.strerror or str(exc)
        raise RelaydError(
            f"debug-server: cannot listen on {where}: {detail}", ExitCode.UNAVAILABLE
        ) from None
    bound = server.sockets[0].getsockname()
    on_ready(str(bound[0]), int(bound[1]))
    try:
        await stop.wait()
    finally:
        server.close()
        for smtp in list(connections):
            smtp.shut_down()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost() run for the connections just closed
