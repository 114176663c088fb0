"""Durable Maildir delivery: a private Maildir; each file fsynced in tmp/, renamed into new/."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import socket
import time

_deliveries = itertools.count(1)


def ensure(path: str) -> None:
    """`path` with tmp/, new/ and cur/, created 0700 where missing (OSError if impossible)."""
    for directory in (path, *(os.path.join(path, sub) for sub in ("tmp", "new", "cur"))):
        try:
            os.makedirs(directory, mode=0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", directory) from None
        else:
            os.chmod(directory, 0o700)  # the umask may have left it narrower: never wider


def deliver(path: str, data: bytes) -> str:
    """Write `data` as a new message of the Maildir at `path` (created if missing); its path.

    The file is written in tmp/ (0600), fsynced, renamed into new/, and new/ is fsynced, so a
    crash leaves either no message or a whole one. mailbox.Maildir does not do this: it fsyncs
    the file but creates it with the umask's mode and never syncs the directory. Raises
    OSError when the Maildir cannot be written.
    """
    ensure(path)
    name = _unique_name()
    temporary = os.path.join(path, "tmp", name)
    final = os.path.join(path, "new", name)
    _write_synced(temporary, data)
    try:
        os.rename(temporary, final)
    except OSError:
        _discard(temporary)
        raise
    _fsync_directory(os.path.join(path, "new"))
    return final


def _unique_name() -> str:
    """A Maildir name (time, microseconds, pid, counter, random, host) that cannot repeat."""
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    unique = f"M{micros:06d}P{os.getpid()}Q{next(_deliveries)}R{secrets.token_hex(4)}"
    return f"{seconds}.{unique}.{host}"


def _write_synced(filename: str, data: bytes) -> None:
    fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _discard(filename)
        raise
    os.close(fd)


def _discard(filename: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(filename)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
