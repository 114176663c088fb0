"""Where a submission goes (SPEC §7): the named queue, a per-user daemon's, the host's, or
the user's own, in that order; never silently into a queue that no daemon drains."""

from __future__ import annotations

import _socket
import os

from relayd import paths, settings_hot

TYPE_CHECKING = False  # the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Mapping

NO_DAEMON = (
    "warning: no relayd daemon delivers this queue ({queue}); the mail is stored safely and "
    "waits: start one with `relayd daemon` (or `systemctl --user enable --now relayd`)"
)


class Route:
    """Either the host submit socket (connected) or this process writes the queue itself,
    with `note` to print when no daemon will deliver what it stores."""

    def __init__(self, sock: _socket.socket | None = None, note: bool = False) -> None:
        self.sock, self.note = sock, note


def decide(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Route:
    """The route for a submission by `uid` (this process's by default)."""
    env = os.environ if environ is None else environ
    user = os.getuid() if uid is None else uid
    if _named_queue(env):
        return Route()
    wake = paths.wake_socket(env, user)
    if user == 0:  # root writes the host queue itself; the host daemon runs as another user
        return Route(note=not _answers(wake) and not _stream_answers(paths.submit_socket(env)))
    if _answers(wake, owner=user):
        return Route()
    sock = connect(paths.submit_socket(env))
    if sock is not None:
        return Route(sock)
    return Route(note=True)


def _named_queue(env: Mapping[str, str]) -> bool:
    """Whether `RELAYD_DATABASE_URL` or relayd.toml's `database` names the queue."""
    if env.get("RELAYD_DATABASE_URL"):
        return True
    return settings_hot.load(env).database is not None


def _answers(path: str, owner: int | None = None) -> bool:
    """Whether a daemon has the wake-up socket at `path` bound (and `owner` owns it)."""
    if owner is not None:
        try:
            if os.stat(path).st_uid != owner:
                return False
        except OSError:
            return False
    # Here, not at the top: a user of the host socket has no wake-up socket of its own.
    from relayd.daemon.instance import daemon_listening

    return daemon_listening(path)


def connect(path: str) -> _socket.socket | None:
    """A connection to the stream socket at `path`, or None when nothing listens there."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _stream_answers(path: str) -> bool:
    sock = connect(path)
    if sock is None:
        return False
    sock.close()
    return True
