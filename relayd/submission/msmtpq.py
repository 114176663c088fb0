"""`relayd queue import-msmtpq`: each msmtpq queue entry (`ID.mail` with its `ID.msmtp`
arguments) becomes a queued message with its original arrival time, through relayd-sendmail's
own submission code; its files are removed only after the message is durably committed."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext, suppress
from dataclasses import dataclass

from relayd import paths
from relayd.errors import QueueError, RelaydError
from relayd.store import fastpath
from relayd.submission import submit
from relayd.submission.cmdline import Mode
from relayd.submission.msmtpq_args import Ambiguous, split_line
from relayd.submission.sendmail import Output, no_daemon_note, prepare
from relayd.sysexits import ExitCode

DEFAULT_QUEUE = "~/.msmtp.queue"  # msmtpq's default; $MSMTPQ_Q, then $Q, override it
LOCK_NAME = ".lock"  # msmtpq's lock: a directory it makes with mkdir and removes with rmdir
ARGS_LIMIT = 1 << 20  # bytes of an .msmtp file: an argument line, never more
_ID = re.compile(r"(\d{4})-(\d\d)-(\d\d)-(\d\d)\.(\d\d)\.(\d\d)(?:-.+)?")  # date +%Y-%m-%d-%H.%M.%S

Say = Callable[[str], None]


def queue_dir(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The msmtpq queue: `given`, else msmtpq's own choice ($MSMTPQ_Q, $Q, ~/.msmtp.queue)."""
    env = os.environ if environ is None else environ
    chosen = given or env.get("MSMTPQ_Q") or env.get("Q") or DEFAULT_QUEUE
    return os.path.expanduser(chosen)


def arrival_time(queue_id: str, mail_mtime: float) -> float:
    """When msmtpq queued the mail: its id is the local time then (`date +%Y-%m-%d-%H.%M.%S`,
    plus `-N` or `-UUID` for uniqueness); an id msmtpq did not make gives the file's mtime."""
    match = _ID.fullmatch(queue_id)
    if match is None:
        return mail_mtime
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))
    except (OverflowError, ValueError):
        return mail_mtime


@dataclass
class Outcome:
    """What an import did: messages queued (or that would be), entries left and why."""

    imported: int = 0
    skipped: int = 0
    code: int = ExitCode.OK


def _order(queue_id: str) -> tuple[str, int, str]:
    """Arrival order: by the time in the id, then msmtpq's `-N` (`-2` before `-10`)."""
    time_part, rest = queue_id[:19], queue_id[19:]
    return time_part, len(rest), rest


def _entries(directory: str) -> tuple[list[str], list[str]]:
    """(ids with both files, in msmtpq's order; file names that have no partner)."""
    names = set(os.listdir(directory))
    mails = sorted((name[: -len(".mail")] for name in names if name.endswith(".mail")), key=_order)
    pairs = [queue_id for queue_id in mails if f"{queue_id}.msmtp" in names]
    alone = [f"{queue_id}.mail" for queue_id in mails if f"{queue_id}.msmtp" not in names]
    alone += sorted(
        name
        for name in names
        if name.endswith(".msmtp") and f"{name[: -len('.msmtp')]}.mail" not in names
    )
    return pairs, alone


def _open_regular(path: str) -> int:
    """A descriptor on the regular file `path` (not followed if it is a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RelaydError("not a regular file", ExitCode.DATAERR)
    return fd


def _read_args(path: str) -> str:
    fd = _open_regular(path)
    try:
        raw = os.read(fd, ARGS_LIMIT + 1)
    finally:
        os.close(fd)
    if len(raw) > ARGS_LIMIT:
        raise RelaydError(f"more than {ARGS_LIMIT} bytes of arguments", ExitCode.DATAERR)
    return raw.decode("utf-8", "surrogateescape")


class NotRemoved(RelaydError):
    """The entry was queued, but its files could not be removed (exit 74)."""

    default_code = ExitCode.IOERR


class _Lock:
    """msmtpq's queue lock (mkdir DIR/.lock), so no msmtpq writes or flushes while we read;
    waited for up to `timeout` seconds like a submission waits for the queue."""

    def __init__(self, directory: str, timeout: float) -> None:
        self.path, self.timeout = os.path.join(directory, LOCK_NAME), timeout

    def __enter__(self) -> _Lock:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                os.mkdir(self.path, 0o700)
                return self
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise QueueError(
                        f"msmtpq's queue is locked ({self.path}): msmtpq is sending, or the"
                        " lock is stale (rmdir it if no msmtpq runs)",
                        ExitCode.TEMPFAIL,
                    ) from None
                time.sleep(0.1)
            except OSError as exc:
                raise QueueError(
                    f"cannot lock msmtpq's queue ({self.path}): {exc.strerror}",
                    ExitCode.CANTCREAT,
                ) from None

    def __exit__(self, *_exc: object) -> None:
        with suppress(OSError):
            os.rmdir(self.path)


def _shown_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _one(directory: str, queue_id: str, *, dry_run: bool, say: Say) -> None:
    """Queue the entry `queue_id` and remove its files (or say what would be queued)."""
    mail_path = os.path.join(directory, f"{queue_id}.mail")
    args_path = os.path.join(directory, f"{queue_id}.msmtp")
    arguments = split_line(_read_args(args_path))
    inv = arguments.invocation
    if inv.mode is not Mode.SEND or inv.pretend:
        raise RelaydError("the arguments do not send mail", ExitCode.DATAERR)
    if arguments.joined:
        say(f"{queue_id}: arguments read as {arguments.shown()}")
    fd = _open_regular(mail_path)
    try:
        arrived = arrival_time(queue_id, os.fstat(fd).st_mtime)
        stdin = submit.Input(lambda size: os.read(fd, size), submit.max_size())
        data, rest = stdin.head(), stdin.rest()
        account, recipients, scan = prepare(inv, data, Output(False))
        new = submit.build(inv, account, data, scan, recipients, arrived, rest)
        if dry_run:
            for _piece in new.body or ():  # read it all: a message over max_size is refused
                pass
            to = ", ".join(new.recipients)
            say(
                f"{queue_id}: would queue (account {account.id or '(command line)'}, from"
                f" <{new.sender}>, to {to}, arrived {_shown_time(arrived)})"
            )
            return
        queue_id_new = submit.store(inv, new, arrived)
    finally:
        os.close(fd)
    say(f"{queue_id}: queued as {queue_id_new} (arrived {_shown_time(arrived)})")
    _remove(directory, (mail_path, args_path), queue_id_new)


def _remove(directory: str, files: tuple[str, ...], queued_as: str) -> None:
    """Remove the entry's files, durably (a crash after this never imports it again)."""
    try:
        for path in files:
            os.unlink(path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise NotRemoved(
            f"queued as {queued_as}, but {exc.filename or directory}: {exc.strerror}; remove"
            " the entry by hand or a second import queues it again"
        ) from None


def _import_entry(
    directory: str, queue_id: str, outcome: Outcome, *, dry_run: bool, say: Say, complain: Say
) -> None:
    """Import one entry, counting it in `outcome`; a QueueError (relayd's queue cannot be
    written, so nothing more can be imported) is raised, anything else said in one line."""
    entry = os.path.join(directory, queue_id)
    try:
        _one(directory, queue_id, dry_run=dry_run, say=say)
    except NotRemoved as err:
        complain(f"{entry}: {err.message}")
        outcome.imported += 1
        outcome.code = ExitCode.IOERR
    except Ambiguous as err:
        complain(
            f"{entry}: skipped: {err.message} (queue it with `relayd-sendmail ARGS <"
            f" {entry}.mail`, then remove {entry}.*)"
        )
        outcome.skipped += 1
    except QueueError:
        raise
    except RelaydError as err:
        complain(f"{entry}: skipped: {err.message}")
        outcome.skipped += 1
    except OSError as exc:
        complain(f"{exc.filename or entry}: skipped: {exc.strerror}")
        outcome.skipped += 1
    else:
        outcome.imported += 1


def import_queue(given: str | None, *, dry_run: bool, say: Say, complain: Say) -> int:
    """Import msmtpq's queue (see the module); the exit code: 0 when every entry was queued,
    65 when some were left (each said in one line), 66 without a queue directory, 73/75 when
    relayd's queue cannot be written (the entry being imported and the rest stay)."""
    directory = queue_dir(given)
    if not os.path.isdir(directory):
        complain(f"no msmtpq queue at {directory}")
        return ExitCode.NOINPUT
    timeout = fastpath.lock_timeout()
    outcome = Outcome()
    with nullcontext() if dry_run else _Lock(directory, timeout):  # a dry run changes nothing
        try:
            pairs, alone = _entries(directory)
        except OSError as exc:
            complain(f"cannot read msmtpq's queue {directory}: {exc.strerror}")
            return ExitCode.NOINPUT
        for name in alone:
            complain(f"{os.path.join(directory, name)}: skipped: its partner file is missing")
            outcome.skipped += 1
        for queue_id in pairs:
            _import_entry(directory, queue_id, outcome, dry_run=dry_run, say=say, complain=complain)
    verb = "would import" if dry_run else "imported"
    left = f"; {outcome.skipped} left in {directory}" if outcome.skipped else ""
    say(f"{verb} {outcome.imported} message(s) from {directory}{left}")
    if outcome.imported and not dry_run:  # each store woke the daemon, if there is one
        from relayd.daemon.instance import daemon_listening

        if not daemon_listening(paths.wake_socket()):
            no_daemon_note("relayd")
    if outcome.code:
        return outcome.code
    return ExitCode.DATAERR if outcome.skipped else ExitCode.OK
