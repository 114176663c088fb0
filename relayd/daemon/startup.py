"""The daemon's start-up faults as one line each: the path, the reason, and a sysexits code.

An OS error while taking the instance lock, opening the queue or binding the wake-up socket
names its path and what went wrong; a file or directory this user may not write also says who
owns it, its mode, and who the daemon runs as (a queue created by root before the first start
of the system unit, whose daemon runs as `relayd`). The codes tell systemd what to do: 73
(cannot create) and 77 (no permission) stay until someone acts, 75 may clear by itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import socket
import stat

from relayd import paths
from relayd.daemon.instance import daemon_listening, instance_lock
from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

_CANTCREAT = {
    errno.EROFS,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EINVAL,
}
_TEMPORARY = {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR}
_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
    errno.ENOSPC: "the disk is full",
}


def user_name(uid: int) -> str:
    """The name of `uid` from the password database, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _not_a_directory(path: str) -> str | None:
    """The first component of `path` that exists and is not a directory, if any."""
    parts = os.path.abspath(path).split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end])
        try:
            mode = os.stat(prefix).st_mode
        except OSError:
            return None
        if not stat.S_ISDIR(mode):
            return prefix
    return None


def _existing(path: str) -> tuple[str, os.stat_result] | None:
    """`path` or its nearest existing parent, with its stat; None if nothing can be stat'ed."""
    current = os.path.abspath(path)
    for _ in range(current.count(os.sep) + 1):
        try:
            return current, os.stat(current)
        except (FileNotFoundError, PermissionError):  # or in a directory this user cannot search
            current = os.path.dirname(current)
        except OSError:
            return None
    return None


def permission_failure(path: str, doing: str, *, fix: str | None = None) -> RelaydError:
    """Exit 77 for `path` this user may not use: its (or its directory's) owner and mode."""
    me = user_name(os.geteuid())
    found = _existing(path)
    if found is None:
        return RelaydError(f"cannot {doing}: {path}: permission denied", ExitCode.NOPERM)
    where, info = found
    directory = stat.S_ISDIR(info.st_mode)
    owner = user_name(info.st_uid)
    facts = f"owned by {owner} (mode {stat.S_IMODE(info.st_mode):04o})"
    if where != path:
        facts = f"its {'directory ' if directory else ''}{where} is {facts}"
    if owner != me:
        hint = f"chown {fix or me + ': ' + where}"
    else:
        hint = f"chmod u+{'rwx' if directory else 'rw'} {where}"
    return RelaydError(
        f"cannot {doing}: {path}: {facts}, but the daemon runs as {me}; {hint}", ExitCode.NOPERM
    )


def os_failure(exc: OSError, doing: str, path: str | None = None) -> RelaydError:
    """One line for an OS error met while `doing` something to `path` (else the error's own)."""
    where = str(exc.filename) if exc.filename is not None else (path or "?")
    err = exc.errno or 0
    if err in (errno.EACCES, errno.EPERM):
        return permission_failure(where, doing)
    blocking = _not_a_directory(where) if err in (errno.EEXIST, errno.ENOTDIR) else None
    if blocking == where:
        reason = "exists and is not a directory"
    elif blocking is not None:
        reason = f"{blocking} is not a directory"
    else:
        reason = _REASONS.get(err) or (exc.strerror or str(exc)).lower()
    if err in _CANTCREAT:
        code = ExitCode.CANTCREAT
    elif err in _TEMPORARY:
        code = ExitCode.TEMPFAIL
    elif err == errno.EIO:
        code = ExitCode.IOERR
    else:
        code = ExitCode.OSERR
    return RelaydError(f"cannot {doing}: {where}: {reason}", code)


def check_queue_files(database_url: str) -> None:
    """Open a SQLite queue's files (database, -wal, -shm) for writing, as SQLite will: a file
    this user may not write is reported with its owner and mode (exit 77), not as SQLite's
    "unable to open database file". Nothing to do for a server database or a new queue."""
    db = paths.sqlite_path(database_url)
    if db is None:
        return
    directory = os.path.dirname(os.path.abspath(db))
    me = user_name(os.geteuid())
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):  # SQLite adds -wal there
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            raise RelaydError(
                f"cannot open the queue: {directory}: read-only file system", ExitCode.CANTCREAT
            )
        raise permission_failure(directory, "open the queue", fix=f"{me}: {directory}")
    for path in (db, db + "-wal", db + "-shm"):
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise permission_failure(
                    path, "open the queue", fix=f"-R {me}: {directory}"
                ) from None
            raise os_failure(exc, "open the queue", path) from None


def lock_queue(database_url: str) -> int | None:
    """`instance_lock` for the daemon, then `check_queue_files`; OS errors as one line."""
    try:
        lock = instance_lock(database_url)
    except OSError as exc:
        raise os_failure(exc, "take the queue's instance lock") from None
    try:
        check_queue_files(database_url)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return lock


def clear_stale_socket(path: str, kind: socket.SocketKind = socket.SOCK_DGRAM) -> None:
    """Remove a socket file (the wake-up socket; the submit socket: `kind` SOCK_STREAM) left
    by a dead daemon. A live daemon's (another queue's daemon with the same runtime directory)
    is refused with exit 75, as a second daemon on the same queue is: removing it would leave
    that daemon deaf."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RelaydError(f"{path}: exists and is not a socket", ExitCode.CANTCREAT)
    if _listening(path, kind):
        raise RelaydError(
            f"{path}: another relayd daemon listens on this socket (one using the same"
            " runtime directory for another queue); give each daemon its own RELAYD_RUNTIME_DIR",
            ExitCode.TEMPFAIL,
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _listening(path: str, kind: socket.SocketKind) -> bool:
    if kind == socket.SOCK_DGRAM:
        return daemon_listening(path)
    with socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def bind_wake_socket(path: str) -> socket.socket:
    """The wake-up datagram socket at `path` (0600 in a 0700 directory), non-blocking.

    A socket file left by a dead daemon is removed; one a live daemon listens on (another
    queue's daemon with the same runtime directory) is refused with exit 75, as a second
    daemon on the same queue is; anything else in the way is an error.
    """
    try:
        paths.ensure_private_dir(os.path.dirname(os.path.abspath(path)))
        clear_stale_socket(path)
    except OSError as exc:
        raise os_failure(exc, "bind the wake-up socket", path) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise os_failure(exc, "bind the wake-up socket", path) from None
    sock.setblocking(False)
    return sock


def unbind(sock: socket.socket) -> None:
    """Close a UNIX socket and remove its file."""
    with contextlib.suppress(OSError):
        os.unlink(sock.getsockname())
    sock.close()
