"""The sysexits(3) exit codes relayd and msmtp use, as an IntEnum."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """sysexits.h values; names match msmtp's log (`exitcode=EX_…`) with `EX_` dropped."""

    OK = 0
    USAGE = 64
    DATAERR = 65
    NOINPUT = 66
    NOUSER = 67
    NOHOST = 68
    UNAVAILABLE = 69
    SOFTWARE = 70
    OSERR = 71
    OSFILE = 72
    CANTCREAT = 73
    IOERR = 74
    TEMPFAIL = 75
    PROTOCOL = 76
    NOPERM = 77
    CONFIG = 78

    @property
    def ex_name(self) -> str:
        """The name msmtp logs, e.g. `EX_TEMPFAIL`."""
        return f"EX_{self.name}"
