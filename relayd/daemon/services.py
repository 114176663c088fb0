"""What the daemon runs beside the queue runner (the host submit socket, later the SMTP
listener): the context they get and the start/stop they offer."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from relayd.settings import Settings

TYPE_CHECKING = False  # SqlStore only as a type: a listener worker must not load SQLAlchemy
if TYPE_CHECKING:
    from relayd.store.sql import SqlStore


class Context:
    """What a service may use: the queue, the current settings (SIGHUP may replace them), a
    wake-up of the runner, and the sockets systemd passed by name."""

    def __init__(
        self,
        store: SqlStore,
        settings: Callable[[], Settings],
        wake: Callable[[], None],
        sockets: dict[str, list[socket.socket]],
    ) -> None:
        self.store, self.settings, self.wake, self.sockets = store, settings, wake, sockets


class Service(Protocol):
    """A part of the daemon with its own sockets."""

    async def start(self) -> None:
        """Start serving; raise RelaydError (a one-line start error) when it cannot."""

    async def stop(self) -> None:
        """Stop accepting, finish or drop what is in hand (never reply 0 for what is not
        committed), and return."""


ServiceFactory = Callable[[Context], Service]
