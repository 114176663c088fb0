"""Where msmtp's configuration files are, loading them, and msmtp's permission check."""

from __future__ import annotations

import os
import stat

from relayd.accounts import msmtprc, values
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

SYSTEM_FILE_ENV = "RELAYD_MSMTPRC_SYSTEM"
_DEFAULT_SYSTEM_FILE = "/etc/msmtprc"


def system_file() -> str:
    """The system file: /etc/msmtprc (RELAYD_MSMTPRC_SYSTEM may point elsewhere)."""
    return os.environ.get(SYSTEM_FILE_ENV) or _DEFAULT_SYSTEM_FILE


def user_file() -> str:
    """~/.msmtprc, or $XDG_CONFIG_HOME/msmtp/config when only that one exists."""
    home = values.home_dir()
    dot = os.path.join(home, ".msmtprc")
    try:
        os.stat(dot)
    except OSError:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        candidate = os.path.join(xdg, "msmtp", "config")
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
    """Read and parse one file; ConfigError on syntax, read or permission problems."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
    except IsADirectoryError:
        raise ConfigError(f"{path}: input error", ExitCode.IOERR) from None
    except OSError as err:
        return Unopenable(path, strerror(err))
    conf = msmtprc.parse(path, data)
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
