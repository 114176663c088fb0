"""systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) by hand."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

FIRST_FD = 3  # SD_LISTEN_FDS_START


def inherited(environ: MutableMapping[str, str] | None = None) -> dict[str, list[socket.socket]]:
    """The sockets systemd passed to this process, by their FileDescriptorName (systemd's
    default name is "unknown"); empty when none were passed to this very process.

    The variables are removed, as sd_listen_fds(unset_environment=1) does, so a child (a
    notify command, a passwordeval) does not think the sockets are its own.
    """
    env = os.environ if environ is None else environ
    found = _parse(env)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    sockets: dict[str, list[socket.socket]] = {}
    for fd, name in found:
        os.set_inheritable(fd, False)
        sockets.setdefault(name, []).append(socket.socket(fileno=fd))
    return sockets


def _parse(env: Mapping[str, str]) -> list[tuple[int, str]]:
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":")
    return [
        (FIRST_FD + index, names[index] if index < len(names) and names[index] else "unknown")
        for index in range(int(count))
    ]
