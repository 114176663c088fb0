"""Where msmtp's configuration files are, loading them, and msmtp's permission check."""

from __future__ import annotations

import os
import stat
import time

from relayd.accounts import msmtprc, values
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

# Files parsed already, by path and $HOME (a parse expands `~`): (the file's identity and times
# when read, its parse). The daemon reads the msmtprc for every message over SMTP and every
# delivery; an unchanged file is not read again.
_parsed: dict[tuple[str, str | None], tuple[tuple[int, ...], msmtprc.ConfFile]] = {}
# Seconds: a file modified this recently is not kept (a second change within the same clock
# tick of its modification time would go unseen: git's "racily clean" entries).
_SETTLED = 2.0

SYSTEM_FILE_ENV = "RELAYD_MSMTPRC_SYSTEM"
_DEFAULT_SYSTEM_FILE = "/etc/msmtprc"


def system_file() -> str:
    """The system file: /etc/msmtprc (RELAYD_MSMTPRC_SYSTEM may point elsewhere)."""
    return os.environ.get(SYSTEM_FILE_ENV) or _DEFAULT_SYSTEM_FILE


def user_candidates() -> tuple[str, str]:
    """The user files msmtp looks for, in its order: ~/.msmtprc, $XDG_CONFIG_HOME/msmtp/config."""
    home = values.home_dir()
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(home, ".msmtprc"), os.path.join(xdg, "msmtp", "config")


def user_file() -> str:
    """~/.msmtprc, or $XDG_CONFIG_HOME/msmtp/config when only that one exists."""
    dot, candidate = user_candidates()
    try:
        os.stat(dot)
    except OSError:
        if os.path.exists(candidate):
            return candidate
    return dot


class Unopenable:
    """A configuration file that could not be opened, with the system's reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason


def strerror(err: OSError) -> str:
    """The C library's text for an OSError, as msmtp prints it."""
    return os.strerror(err.errno) if err.errno else str(err)


def load(path: str, *, check_secure: bool) -> msmtprc.ConfFile | Unopenable:
    """Read and parse one file; ConfigError on syntax, read or permission problems. A file
    whose identity, size and times are those of its last parse is not read again."""
    key = (path, os.environ.get("HOME"))
    kept = _parsed.get(key)
    if kept is not None:
        try:
            st = os.stat(path)
        except OSError:
            pass  # gone or unreachable: opening it says why
        else:
            if _identity(st) == kept[0]:
                return _checked(path, kept[1], st, check_secure)
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
    except IsADirectoryError:
        raise ConfigError(f"{path}: input error", ExitCode.IOERR) from None
    except OSError as err:
        return Unopenable(path, strerror(err))
    conf = msmtprc.parse(path, data)
    if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > _SETTLED:
        _parsed[key] = (_identity(st), conf)
    else:
        _parsed.pop(key, None)
    return _checked(path, conf, st, check_secure)


def fingerprint(conffile: str | None) -> tuple[object, ...] | None:
    """What choosing an account reads, to tell whether a choice made earlier still holds: the
    paths of the system and user files (or `conffile`) with their identities or why they could
    not be read, and the environment the choice looks at. None while a file is too fresh to
    be trusted (modified within _SETTLED seconds) or not a regular file: choose again."""
    names = (system_file(), conffile) if conffile else (system_file(), *user_candidates())
    now = time.time()
    seen: list[object] = []
    for path in names:
        try:
            st = os.stat(path)
        except OSError as err:
            seen.append((path, err.errno))
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime <= _SETTLED:
            return None
        seen.append((path, _identity(st)))
    environ = os.environ
    seen += (environ.get("HOME"), environ.get("SMTPSERVER"), environ.get("EMAIL"))
    return tuple(seen)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _checked(
    path: str, conf: msmtprc.ConfFile, st: os.stat_result, check_secure: bool
) -> msmtprc.ConfFile:
    if check_secure and conf.contains_secrets and os.geteuid() != 0:
        check_permissions(path, st)
    return conf


def check_permissions(path: str, st: os.stat_result) -> None:
    """msmtp's check_secure: owned by the user, no more than user read/write."""
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path}: contains secrets and therefore must be owned by you")
    if st.st_mode & (stat.S_IXUSR | stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: contains secrets and therefore must have no more than user "
            "read/write permissions"
        )
