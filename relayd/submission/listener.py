"""`[listen]` in `relayd daemon`: bind the SMTP listener's addresses (or take the sockets
systemd passed, named `smtp`) and serve them with the SMTP handler (a daemon service), in the
daemon itself or in `[listen] workers` processes (`workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from relayd import paths
from relayd.daemon.services import Context
from relayd.daemon.startup import permission_failure
from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store import batch
from relayd.submission.limits import Committer
from relayd.submission.smtpd import Handler, RelaydSMTP, Sessions, options
from relayd.submission.workers import Pool, worker_count
from relayd.sysexits import ExitCode

log = logging.getLogger("relayd.smtp")

# Seconds between two wake-ups of the runner from the listener: under load every commit would
# start a scan of the queue; mail committed in between is woken for at the end of the pause.
WAKE_PACE = 0.1
BACKLOG = 128  # connections the kernel queues before the listener accepts them


class SmtpListener:
    """Serves `[listen] address` (and systemd's `smtp` sockets) inside the daemon."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.paced = Paced(context.wake, WAKE_PACE)
        # A SQLite queue: commits on a connection of the listener's own, without SQLAlchemy.
        self.writer = batch.writer_for(self.settings.database)
        self.committer = Committer(self.writer or context.store, on_commit=self.paced)
        self.handler = Handler(context.settings, self.committer)
        self.sessions = Sessions(lambda: self.settings.listen.max_sessions)
        self.servers: list[asyncio.Server] = []  # workers = 0: served here
        self.pool: Pool | None = None  # else the workers serve
        self.sockets: list[socket.socket] = []
        self.tls: ssl.SSLContext | None = None

    @property
    def settings(self) -> Settings:
        return self.context.settings()

    def _protocol(self) -> RelaydSMTP:
        return RelaydSMTP(
            self.handler, self.sessions, tls_context=self.tls, **options(self.settings)
        )

    async def start(self) -> None:
        listen = self.settings.listen
        if listen.tls_cert is not None and listen.tls_key is not None:
            self.tls = tls_context(listen.tls_cert, listen.tls_key)
        self.sockets = self.context.sockets.pop("smtp", [])
        if not self.sockets:
            self.sockets = [_bind(address) for address in listen.address]
        if not self.sockets:
            return
        count = worker_count(self.settings)
        if count:
            self.pool = Pool(count, self.context.settings, self.paced)
            await self.pool.start(self.sockets)
        else:
            loop = asyncio.get_running_loop()
            for sock in self.sockets:
                self.servers.append(await loop.create_server(self._protocol, sock=sock))
        for address in self.addresses():
            log.info("SMTP listener on %s%s", address, f" ({count} workers)" if count else "")
        _note(self.addresses())

    async def stop(self) -> None:
        self.paced.cancel()  # the runner is stopping too: the next start scans anyway
        if self.sockets:
            with contextlib.suppress(OSError):
                os.unlink(paths.listener_file())
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.pool is not None:
            await self.pool.stop()
        for sock in self.sockets:
            sock.close()
        if self.writer is not None:  # after a commit in flight (a later one opens it anew)
            await asyncio.to_thread(self.writer.close)

    def addresses(self) -> list[str]:
        return [_shown(sock.getsockname()) for sock in self.sockets]


def _bind(address: str) -> socket.socket:
    """A listening socket on `address` (HOST:PORT, [V6]:PORT); a failure is one line."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family, backlog=BACKLOG)
    except OSError as exc:
        code = ExitCode.NOPERM if isinstance(exc, PermissionError) else ExitCode.TEMPFAIL
        raise RelaydError(
            f"cannot listen on {address}: {exc.strerror or exc}"
            + (" (use socket activation: relayd-smtp.socket)" if int(port) < 1024 else ""),
            code,
        ) from None


class Paced:
    """Calls `wake` at once, then at most once every `pause` seconds: calls in between are
    answered by one call at the end of the pause (on the running event loop)."""

    def __init__(self, wake: Callable[[], None], pause: float) -> None:
        self.wake, self.pause = wake, pause
        self._last = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        if self._timer is not None:  # a call is due at the end of this pause already
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self.pause - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:
        self._timer = None
        self._last = asyncio.get_running_loop().time()
        self.wake()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """A call due at the end of the pause, made now."""
        if self._timer is not None:
            self.cancel()
            self._fire()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """STARTTLS's server context (TLS 1.2 or later) from `[listen] tls_cert` and `tls_key`; a
    file the daemon cannot read (77 for permissions, else 74) or use (78) is one line naming it."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise permission_failure(path, f"read listen.{name}") from None
            reason = (exc.strerror or str(exc)).lower()
            raise RelaydError(
                f"cannot read listen.{name}: {path}: {reason}", ExitCode.IOERR
            ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise RelaydError(
            f"listen.tls_cert {cert} with listen.tls_key {key}: not a PEM certificate and its"
            f" key ({exc.reason or exc})",
            ExitCode.CONFIG,
        ) from None
    return context


def _note(addresses: list[str]) -> None:
    """Tell `relayd status` where the listener is (a note, never worth failing the start)."""
    path = paths.listener_file()
    try:
        with open(path + ".new", "w", encoding="utf-8") as note:
            note.write("".join(f"{address}\n" for address in addresses))
        os.replace(path + ".new", path)
    except OSError as exc:
        log.warning("cannot note the listener's addresses in %s: %s", path, exc.strerror)


def _shown(name: Any) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(name)
