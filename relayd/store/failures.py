"""Translate OS and SQLite failures into one-line QueueErrors with exit 73 or 75 (stdlib only).

EX_TEMPFAIL (75) means "try again later, the caller keeps its copy": a lock held too long, a
full disk, no memory. EX_CANTCREAT (73) means the queue cannot be written until someone fixes
something: a read-only or missing location, no permission, a corrupt database.
"""

from __future__ import annotations

import errno
import sqlite3

from relayd.errors import QueueError
from relayd.sysexits import ExitCode

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_SQLITE_CAUSES: dict[int, tuple[str, ExitCode]] = {
    _SQLITE_BUSY: ("the queue database is locked", ExitCode.TEMPFAIL),
    _SQLITE_LOCKED: ("the queue database is locked", ExitCode.TEMPFAIL),
    _SQLITE_NOMEM: ("out of memory", ExitCode.TEMPFAIL),
    _SQLITE_FULL: ("the disk is full", ExitCode.TEMPFAIL),
    _SQLITE_READONLY: ("the queue database is read-only", ExitCode.CANTCREAT),
    _SQLITE_PERM: ("permission denied", ExitCode.CANTCREAT),
    _SQLITE_IOERR: ("I/O error", ExitCode.CANTCREAT),
    _SQLITE_CORRUPT: ("the queue database is corrupt", ExitCode.CANTCREAT),
    _SQLITE_NOTADB: ("the queue database is corrupt", ExitCode.CANTCREAT),
    _SQLITE_CANTOPEN: ("the queue database cannot be opened", ExitCode.CANTCREAT),
}

_OS_TEMPORARY = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN, errno.EINTR}
_OS_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EEXIST: "a path component is not a directory",
    errno.EISDIR: "the queue database path is a directory",
}


def from_sqlite(
    exc: sqlite3.Error, where: str, action: str, timeout: float | None = None
) -> QueueError:
    """A QueueError for a SQLite error met while doing `action` (e.g. "store the message")."""
    code = getattr(exc, "sqlite_errorcode", None)
    detail = str(exc) or type(exc).__name__
    primary = code & 0xFF if isinstance(code, int) else _guess_code(detail)
    cause, exit_code = _SQLITE_CAUSES.get(primary, (None, ExitCode.TEMPFAIL))
    if cause is None:
        text = detail
    elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED) and timeout is not None:
        text = f"{cause} (waited {timeout:g} s)"
    else:
        text = f"{cause} ({detail})"
    return QueueError(f"cannot {action} in {where}: {text}", exit_code)


def _guess_code(detail: str) -> int:
    """Errors raised by Python's sqlite3 module itself carry no code: recognise the text."""
    text = detail.lower()
    for needle, code in (
        ("locked", _SQLITE_BUSY),
        ("disk is full", _SQLITE_FULL),
        ("readonly", _SQLITE_READONLY),
        ("malformed", _SQLITE_CORRUPT),
        ("not a database", _SQLITE_NOTADB),
        ("unable to open", _SQLITE_CANTOPEN),
        ("disk i/o", _SQLITE_IOERR),
    ):
        if needle in text:
            return code
    return 0


def from_os(exc: OSError, where: str, action: str) -> QueueError:
    """A QueueError for an OS error met while creating or opening the queue's files."""
    err = exc.errno or 0
    cause = _OS_CAUSES.get(err) or exc.strerror or str(exc)
    name = f" ({exc.filename})" if exc.filename and exc.filename != where else ""
    exit_code = ExitCode.TEMPFAIL if err in _OS_TEMPORARY else ExitCode.CANTCREAT
    return QueueError(f"cannot {action} in {where}: {cause}{name}", exit_code)
