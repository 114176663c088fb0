"""`relayd queue log [ID] [--follow]`: the attempt log, read from the queue."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import typer

from relayd import settings
from relayd.cli import complete
from relayd.cli.output import json_line, local_time, on_terminal, run
from relayd.errors import RelaydError
from relayd.store import LOG_PAGE, fastpath
from relayd.sysexits import ExitCode
from relayd.text import sanitize

# The store (SQLAlchemy), rich and the log line's modules are imported where this command runs:
# the `relayd` CLI imports every command's module, and `queue show` must stay light (SPEC §6).
if TYPE_CHECKING:
    from relayd.store.interface import ReportStore
    from relayd.store.reports import LogEntry

POLL_INTERVAL = 0.5  # seconds between looks for new attempts with --follow
DUPLICATE = "(possible duplicate)"
PAGE = LOG_PAGE  # attempts a read transaction when the whole log is printed


def entry_line(entry: LogEntry) -> str:
    """`TIME QUEUE-ID` and msmtp's log line for the attempt (research/msmtp.md §4.3).

    What the attempts row does not keep is left out: `user=`, and `errormsg=` when a server
    reply was stored (the row holds the reply, or msmtp's error when there was none). The
    runner stores the account's host, or its socket path when it has no host.
    """
    from relayd.daemon.attempt_log import attempt_info
    from relayd.delivery.result import Reply

    attempt = entry.attempt
    on_socket = "/" in attempt.host  # a host name never holds a slash; a socket path does
    reply = None
    if attempt.reply_code is not None:
        reply = Reply(attempt.reply_code, tuple((attempt.reply or "").splitlines()))
    info = attempt_info(
        host=None if on_socket else attempt.host,
        socket=attempt.host if on_socket else None,
        tls=attempt.tls,
        auth=attempt.auth,
        user=None,
        envelope_from=entry.sender,
        recipients=[r.address for r in attempt.recipients],
        exit_code=attempt.exit_code,
        mailsize=entry.mailsize,
        reply=reply,
        error=attempt.reply if reply is None else None,
    )
    # msmtp's log line makes only C0 controls harmless; a server's reply may hold worse.
    line = sanitize(f"{local_time(attempt.started_at)} {entry.queue_id} {info}", "terminal")
    if attempt.note is not None:
        line = f"{line} ({NOTES.get(attempt.note, attempt.note)})"
    return f"{line} {DUPLICATE}" if attempt.possible_duplicate else line


NOTES = {
    "interrupted": "interrupted",
    "late": "late: the lease was lost meanwhile; nothing changed",
}


def entry_json(entry: LogEntry) -> dict[str, Any]:
    """The attempt as one JSON object (`--json`): its attempts row as stored, named by queue
    id instead of row id, with the exit code's name; recipients as in the row's JSON."""
    from relayd.store.rows import attempt_row

    row = attempt_row(0, entry.attempt)
    del row["message_id"]
    recipients = row.pop("recipient_replies")
    exit_name = ExitCode(entry.attempt.exit_code).ex_name
    return {"queue_id": entry.queue_id, **row, "exit_name": exit_name, "recipients": recipients}


def _printer(as_json: bool) -> Callable[[LogEntry], None]:
    """How each entry is shown: JSON lines, coloured lines on a terminal, else plain lines."""
    if as_json:
        return lambda entry: typer.echo(json_line(entry_json(entry)))
    if not on_terminal():
        return lambda entry: typer.echo(entry_line(entry))
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)

    def show(entry: LogEntry) -> None:
        line = Text(entry_line(entry), style="" if entry.attempt.exit_code == 0 else "red")
        if entry.attempt.possible_duplicate:
            line.stylize("bold yellow", len(line) - len(DUPLICATE))
        console.print(line, soft_wrap=True)

    return show


@contextlib.contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM (instead of a KeyboardInterrupt or death)."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _print_after(
    store: ReportStore,
    show: Callable[[LogEntry], None],
    queue_id: str | None,
    after: int,
    stop: threading.Event,
) -> int:
    """Print every attempt after row `after`, a page at a time; the last row id printed."""
    from relayd.store.reports import log_entries

    while not stop.is_set():
        page = log_entries(store, after=after, queue_id=queue_id, limit=PAGE)
        for entry in page:
            show(entry)
        if page:
            after = page[-1].id
        if len(page) < PAGE:
            break
    return after


def _log(queue_id: str | None, follow: bool, as_json: bool, lines: int | None) -> int:
    from relayd.store.reports import log_entries
    from relayd.store.sql import SqlStore

    config = settings.load()
    show = _printer(as_json)
    opened = SqlStore.open_reading(config.database, timeout=fastpath.lock_timeout())
    if opened is None and follow:  # nothing queued yet: create the queue to wait on it
        opened = SqlStore.open(config.database, timeout=fastpath.lock_timeout())
    if opened is None:  # nothing was ever queued
        if queue_id is not None:
            raise RelaydError(f"{queue_id}: no such message", ExitCode.UNAVAILABLE)
        return 0
    with opened as store:
        if queue_id is not None and store.get(queue_id) is None:
            # Postfix's tools name the unknown id and exit non-zero; relayd's queue commands
            # use EX_UNAVAILABLE for a message that is not there (as `queue hold` does).
            raise RelaydError(f"{queue_id}: no such message", ExitCode.UNAVAILABLE)
        with _until_signalled() if follow else contextlib.nullcontext(threading.Event()) as stop:
            if lines is not None:
                # One more than asked, so the last row id is known even for --lines 0.
                tail = log_entries(store, queue_id=queue_id, limit=max(lines, 1), newest=True)
                for entry in tail[max(len(tail) - lines, 0) :]:
                    show(entry)
                after = tail[-1].id if tail else 0
            else:
                after = _print_after(store, show, queue_id, 0, stop)
            while follow and not stop.wait(POLL_INTERVAL):
                after = _print_after(store, show, queue_id, after, stop)
    return 0


def _quietly_piped(action: Callable[[], int]) -> Callable[[], int]:
    """`action`, ending with 0 when the reader of a pipe goes away (`relayd queue log | head`)."""

    def guarded() -> int:
        try:
            return action()
        except BrokenPipeError:
            # Further writes (and the interpreter's final flush) must not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return guarded


def log_command(
    queue_id: str | None = typer.Argument(
        None, metavar="[ID]", help="Only this message's.", autocompletion=complete.any_id
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Then wait for new attempts (until interrupted)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per attempt a line."),
    lines: int | None = typer.Option(
        None, "--lines", "-n", min=0, help="Only the last N attempts.", metavar="N"
    ),
) -> None:
    """Print the attempt log (every attempt, oldest first); --follow waits for new ones.

    Each line: local time, queue id, and msmtp's log line for the attempt;
    "(interrupted)" for one cut off by a kill or a stop, "(late: …)" for a
    result that came after its lease was lost and changed nothing;
    "(possible duplicate)" after one that may have sent the mail again.
    --json, one object a line: queue_id, started_at, duration, host, tls,
    auth, exit_code, exit_name, reply_code, reply, possible_duplicate,
    note (null, "interrupted" or "late"), recipients [{position, address,
    state, code, text}].
    """
    run(_quietly_piped(lambda: _log(queue_id, follow, as_json, lines)))
