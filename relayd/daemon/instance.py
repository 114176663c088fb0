"""Whether a daemon is there (its instance lock on a SQLite queue, its wake-up socket); defaults.

Light imports: `relayd-sendmail --version` asks too, and the CLI shows the defaults.
"""

from __future__ import annotations

# The C module behind `socket`: `import socket` costs ~2 ms, and one connect() needs none of it.
import _socket
import fcntl
import os

from relayd import paths
from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

SCAN_INTERVAL = 30.0  # recovers lost wake-ups and due retries (SPEC §4: at most 30 s)
SHUTDOWN_GRACE = 5.0  # in-flight transactions get this long after SIGTERM, then are abandoned
LOCK_SUFFIX = ".daemon.lock"


class AlreadyRunning(RelaydError):
    """Another daemon holds the instance lock of this SQLite queue."""

    default_code = ExitCode.TEMPFAIL


def _lock_path(database_url: str) -> tuple[str, str] | None:
    """The SQLite queue file and its instance lock file beside it; None for a server database."""
    db = paths.sqlite_path(database_url)
    return None if db is None else (db, db + LOCK_SUFFIX)


def _try_lock(fd: int, operation: int) -> bool:
    """Take `operation` (fcntl.LOCK_EX or LOCK_SH) on `fd` without waiting; False if held."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def instance_lock(database_url: str) -> int | None:
    """Lock a SQLite queue for this daemon (an fcntl lock on a file beside it); the lock's fd.

    None for a server database, where several daemons may share the queue. Raises
    AlreadyRunning when another daemon holds the lock: it is released when that process dies.
    """
    found = _lock_path(database_url)
    if found is None:
        return None
    db, path = found
    paths.ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not _try_lock(fd, fcntl.LOCK_EX):
        os.close(fd)
        raise AlreadyRunning(
            f"another relayd daemon is already running on the queue {db} (it holds {path})"
        )
    return fd


def daemon_running(database_url: str) -> bool | None:
    """Whether a daemon holds `instance_lock` on this SQLite queue, tested without keeping it.

    A shared lock, dropped at once: two checks never disturb each other, and a daemon starting
    in that instant is refused as if one ran. None when it cannot tell: a server database, or
    a lock file this user may not open (a system queue).
    """
    found = _lock_path(database_url)
    if found is None:
        return None
    try:
        fd = os.open(found[1], os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no daemon ever ran on this queue
    except PermissionError:
        return None
    try:
        return not _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def daemon_listening(wake_socket: str) -> bool:
    """Whether something has the wake-up socket at `wake_socket` bound (a daemon on this host):
    a connect(), which fails with no listener; no datagram is sent, so nothing is woken."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(wake_socket)
    except OSError:
        return False
    finally:
        sock.close()
    return True
