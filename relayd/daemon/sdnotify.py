"""The systemd notify protocol by hand (READY, STATUS, WATCHDOG, STOPPING): no extra dependency."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=…") to $NOTIFY_SOCKET; False when it is unset.

    Never raises and never waits: a supervisor that went away, or one that stopped reading
    (its socket buffer full), must not take the daemon down or stop its event loop; such a
    notice is dropped.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or not states:
        return False
    if address.startswith("@"):  # an abstract socket: systemd writes its NUL as "@"
        address = "\0" + address[1:]
    try:
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.send("\n".join(states).encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked for.

    $WATCHDOG_PID, when set, must be this process: a child must not ping for its parent.
    """
    env = os.environ if environ is None else environ
    if not env.get("NOTIFY_SOCKET"):
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
