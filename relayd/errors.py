"""relayd's exception types: each carries the sysexits code it ends the program with."""

from __future__ import annotations

from relayd.sysexits import ExitCode


class RelaydError(Exception):
    """An error to report in one line and exit with `exit_code`."""

    default_code = ExitCode.SOFTWARE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code if exit_code is not None else self.default_code


class UsageError(RelaydError):
    """Bad command line (EX_USAGE)."""

    default_code = ExitCode.USAGE


class ConfigError(RelaydError):
    """Bad configuration (EX_CONFIG unless the file could not be read: EX_IOERR).

    `path` and `line` locate the problem even where msmtp's message text leaves them out.
    """

    default_code = ExitCode.CONFIG

    def __init__(
        self,
        message: str,
        exit_code: ExitCode | None = None,
        *,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, exit_code)
        self.path = path
        self.line = line


class DataError(RelaydError):
    """Bad message or address (EX_DATAERR)."""

    default_code = ExitCode.DATAERR


class QueueError(RelaydError):
    """The queue cannot be written or read (EX_CANTCREAT or EX_TEMPFAIL)."""

    default_code = ExitCode.TEMPFAIL
