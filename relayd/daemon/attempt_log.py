"""What msmtp 1.8.23 records about a delivery attempt: the log line and the stderr report.

Plain formatting plus the writing: the caller hands in the account, the envelope, msmtp's error
text, the deciding server reply and the exit code (research/msmtp.md §3, §4.3).

The log line, byte for byte as msmtp writes it::

    TIME host=H|socket=S tls=on|off auth=on|off [user=U] from=F recipients=R1,R2
        [mailsize=N] [smtpstatus=C smtpmsg='…'] [errormsg='…'] exitcode=EX_NAME

`log_info` is the text without the time (what goes to syslog and to the "log info was" line),
`attempt_info` the same from plain fields (`relayd queue log` formats stored attempts);
`log_line` puts the time in front; `write` appends to the logfile and/or sends to syslog the way
msmtp does: a failure to log is reported on stderr and never changes the exit code.
"""

from __future__ import annotations

import os
import sys
import time

from relayd.sysexits import ExitCode
from relayd.text import sanitize

TYPE_CHECKING = False  # typing costs milliseconds at import: -odi is on the sendmail path
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import TextIO

    from relayd.accounts.account import Account
    from relayd.delivery.result import Reply

DEFAULT_TIME_FORMAT = "%b %d %H:%M:%S"
LOCK_TIMEOUT = 10  # seconds msmtp retries the logfile's write lock
#: msmtp's errormsg for an LMTP attempt where some recipients failed (no smtpstatus then).
LMTP_LOG_ERROR = "delivery to one or more recipients failed"
_TIME_BUFFER = 128  # msmtp's time_str[128]: a longer result is "invalid logfile_time_format"


def log_info(
    account: Account,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    exit_code: ExitCode | int,
    mailsize: int | None = None,
    reply: Reply | None = None,
    error: str | None = None,
) -> str:
    """The log line without its time: the text msmtp sends to syslog.

    `tls=` and `auth=` come from the account's settings, as in msmtp (not from what happened on
    the wire). `mailsize` is printed only for EX_OK; `reply` (the last reply captured, also the
    one to the final dot on success) whenever given; `error` only when the exit code is not EX_OK.
    """
    return attempt_info(
        host=account.host,
        socket=account.socket,
        tls=account.tls,
        auth=account.auth is not None,
        user=account.user,
        envelope_from=envelope_from,
        recipients=recipients,
        exit_code=exit_code,
        mailsize=mailsize or 0,
        reply=reply,
        error=error,
    )


def attempt_info(
    *,
    host: str | None,
    socket: str | None,
    tls: bool,
    auth: bool,
    user: str | None,
    envelope_from: str,
    recipients: Sequence[str],
    exit_code: ExitCode | int,
    mailsize: int | None,
    reply: Reply | None,
    error: str | None,
) -> str:
    """`log_info` from plain fields (a live account's, or an attempt read back from the queue).

    `socket=` only without a host; `user=` only with auth; `mailsize=` only for EX_OK and
    when known; `smtpstatus=`/`smtpmsg=` for a reply; `errormsg=` only when not EX_OK.
    """
    code = ExitCode(exit_code)
    parts = [f"host={host}" if host is not None else f"socket={socket or ''}"]
    parts.append("tls=on" if tls else "tls=off")
    parts.append("auth=on" if auth else "auth=off")
    if auth and user is not None:
        parts.append(f"user={user}")
    parts.append(f"from={envelope_from}")
    parts.append("recipients=" + ",".join(recipients))
    if code == ExitCode.OK and mailsize is not None:
        parts.append(f"mailsize={mailsize}")
    if reply is not None:
        wire = reply.wire_lines() or [str(reply.code)]
        text = "\\n".join(sanitize(line, "log-field") for line in wire)
        parts.append(f"smtpstatus={reply.code} smtpmsg='{text}'")
    if code != ExitCode.OK and error:
        parts.append(f"errormsg='{sanitize(error, 'log-field')}'")
    parts.append(f"exitcode={code.ex_name}")
    return " ".join(parts)


def log_time(time_format: str | None = None, now: float | None = None) -> str:
    """The time in front of a logfile line: strftime in local time (`None`/"" = msmtp's default).

    Raises ValueError("invalid logfile_time_format") where msmtp's strftime gives up: an empty
    result, or one that does not fit msmtp's 128-byte buffer.
    """
    stamp = time.strftime(time_format or DEFAULT_TIME_FORMAT, time.localtime(now))
    if not stamp or len(stamp.encode("utf-8", "surrogateescape")) >= _TIME_BUFFER:
        raise ValueError("invalid logfile_time_format")
    return stamp


def log_line(
    account: Account,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    exit_code: ExitCode | int,
    mailsize: int | None = None,
    reply: Reply | None = None,
    error: str | None = None,
    now: float | None = None,
) -> str:
    """The logfile line (without the newline): time, one space, `log_info`."""
    info = log_info(
        account,
        envelope_from=envelope_from,
        recipients=recipients,
        exit_code=exit_code,
        mailsize=mailsize,
        reply=reply,
        error=error,
    )
    return f"{log_time(account.logfile_time_format, now)} {info}"


def _emit(stream: TextIO, text: str) -> None:
    """Write text to a stream, passing undecodable input bytes (surrogate escapes) through."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        stream.flush()
        stream.buffer.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def _lock(fd: int, timeout: int) -> str | None:
    """msmtp's lock_file: a POSIX write lock, retried every 0.1 s for `timeout` seconds.

    Returns None when locked, else the failure reason msmtp prints.
    """
    import errno
    import fcntl

    tenths = 0
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as exc:
            reason = os.strerror(exc.errno or 0)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                return f"cannot lock: {reason}"
            if tenths // 10 >= timeout:
                return f"cannot lock (tried for {timeout} seconds): {reason}"
        time.sleep(0.1)
        tenths += 1


def write_logfile(
    path: str,
    info: str,
    *,
    prog: str,
    time_format: str | None = None,
    now: float | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    lock_timeout: int = LOCK_TIMEOUT,
) -> bool:
    """Append `TIME INFO` to `path` (`-` = standard output) as msmtp does; True if written.

    On failure print `PROG: cannot log to PATH: REASON` and `PROG: log info was: INFO` to stderr.
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        data = f"{log_time(time_format, now)} {info}\n"
    except ValueError as exc:
        return _log_failure(err, prog, path, str(exc), info)
    if path == "-":
        _emit(stdout if stdout is not None else sys.stdout, data)
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        return _log_failure(err, prog, path, f"cannot open: {os.strerror(exc.errno or 0)}", info)
    try:
        reason = _lock(fd, lock_timeout)
        if reason is None:
            try:
                view = memoryview(data.encode("utf-8", "surrogateescape"))
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                reason = os.strerror(exc.errno or 0)
    finally:
        os.close(fd)  # also releases the lock
    if reason is not None:
        return _log_failure(err, prog, path, reason, info)
    return True


def _log_failure(err: TextIO, prog: str, path: str, reason: str, info: str) -> bool:
    _emit(err, f"{prog}: cannot log to {path}: {reason}\n{prog}: log info was: {info}\n")
    return False


def syslog_facility(name: str) -> int:
    """The syslog facility for an account's `syslog` value, decoded the way msmtp does."""
    import syslog

    if name[4:5] == "M":
        return syslog.LOG_MAIL
    if name[4:5] == "U":
        return syslog.LOG_USER
    digit = name[9:10]
    if digit in ("0", "1", "2", "3", "4", "5", "6"):
        return int(getattr(syslog, f"LOG_LOCAL{digit}"))
    return syslog.LOG_LOCAL7


def write_syslog(facility: str, info: str, *, failed: bool, ident: str = "relayd") -> None:
    """openlog(ident, 0, facility); LOG_ERR for a failed attempt, else LOG_INFO; closelog()."""
    import syslog

    message = info.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    syslog.openlog(ident, 0, syslog_facility(facility))
    syslog.syslog(syslog.LOG_ERR if failed else syslog.LOG_INFO, message)
    syslog.closelog()


def write(
    account: Account,
    info: str,
    *,
    exit_code: ExitCode | int,
    prog: str,
    ident: str = "relayd",
    now: float | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    lock_timeout: int = LOCK_TIMEOUT,
) -> None:
    """Record one attempt (`info` from `log_info`) in the account's logfile and/or syslog.

    Nothing happens when the account has neither. Never raises for a logging failure and never
    touches the exit code: a logfile failure is reported on stderr, as msmtp does.
    """
    if account.logfile:
        write_logfile(
            account.logfile,
            info,
            prog=prog,
            time_format=account.logfile_time_format,
            now=now,
            stdout=stdout,
            stderr=stderr,
            lock_timeout=lock_timeout,
        )
    if account.syslog:
        write_syslog(account.syslog, info, failed=ExitCode(exit_code) != ExitCode.OK, ident=ident)


def _account_suffix(account: Account) -> str:
    if account.id is not None and account.conffile is not None:
        return f" (account {account.id} from {account.conffile})"
    return ""


def stderr_lines(
    prog: str,
    account: Account,
    error: str | None,
    reply: Reply | None,
    *,
    sendmail: bool = True,
) -> list[str]:
    """msmtp's stderr report of a failed attempt, one string per line (no newlines).

    `PROG: ERROR`, one `PROG: server message: LINE` per reply line, then (sending mail only,
    not --serverinfo/--rmqs) `PROG: could not send mail (account ID from FILE)`, or without the
    parenthesis for an account from the command line. Control characters become `?`.
    """
    lines = []
    if error is not None:
        lines.append(f"{prog}: {sanitize(error, 'log')}")
    if reply is not None:
        lines.extend(
            f"{prog}: server message: {sanitize(line, 'log')}" for line in reply.wire_lines()
        )
    if sendmail:
        lines.append(f"{prog}: could not send mail{_account_suffix(account)}")
    return lines


def lmtp_stderr_lines(
    prog: str, account: Account, failures: Iterable[tuple[str, Reply | None]]
) -> list[str]:
    """msmtp's stderr report when an LMTP server refused some recipients.

    `failures` holds (error, final reply) for each refused recipient, in envelope order; the
    error is msmtp's `the server refuses to send the mail to R`.
    """
    lines = []
    for error, reply in failures:
        lines.append(f"{prog}: {sanitize(error, 'log')}")
        if reply is not None:
            lines.extend(
                f"{prog}: LMTP server message: {sanitize(line, 'log')}"
                for line in reply.wire_lines()
            )
    lines.append(f"{prog}: could not send mail to all recipients{_account_suffix(account)}")
    return lines
