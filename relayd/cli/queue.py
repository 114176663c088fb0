"""`relayd queue …`: list, show, flush, hold, release, delete and log the queued mail."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from relayd import paths, settings
from relayd.cli.output import run
from relayd.cli.queue_list import list_command, show_command
from relayd.cli.queue_log import log_command
from relayd.daemon import flush
from relayd.store import fastpath
from relayd.store.records import State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode

app = typer.Typer(name="queue", help="Inspect and act on the queue.", no_args_is_help=True)
app.command("list")(list_command)
app.command("show")(show_command)

_IDS = typer.Argument(metavar="ID…", help="The messages.")


def _say(line: str) -> None:
    typer.echo(f"relayd: {line}")


def _complain(line: str) -> None:
    typer.echo(f"relayd: {line}", err=True)


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("delivering", total=total)
        yield lambda n: bar.advance(task, n)


@app.command("flush")
def flush_command(
    queue_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID…]", help="Only these messages.")
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", "-a", help="Only this account's.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Block until the pass ends; exit 0 if all went, 75 if some wait for a retry, "
            "else the failed or held attempt's code.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.0, help="With --wait: give up after this many seconds."),
    ] = None,
) -> None:
    """Make queued messages due now; wake the daemon, or deliver in-process when none runs."""
    run(
        lambda: flush.flush(
            settings.load(),
            list(queue_ids or ()),
            account,
            say=_say,
            complain=_complain,
            wait=wait,
            timeout=timeout,
            progress=_progress_bar,
        )
    )


def _change(action: str, queue_ids: list[str], *, hold: bool) -> int:
    """Hold or release `queue_ids`; a release wakes the daemon. Exit 69 if any was not found
    in the state the action needs (Postfix's postsuper reports and goes on the same way)."""
    config = settings.load()
    with SqlStore.open(config.database, timeout=fastpath.lock_timeout()) as store:
        if hold:
            changed = store.hold(queue_ids, "held by the user")
        else:
            changed = store.release(queue_ids, time.time())
        states = store.states_of(changed)
    for queue_id in changed:
        if states.get(queue_id, (None,))[0] is State.SENDING:  # its attempt is under way
            later = "placed on hold when" if hold else "no longer held after"
            _say(f"{queue_id}: being sent right now; {later} this attempt ends")
        else:
            _say(f"{queue_id}: {action}")
    missing = sorted(set(queue_ids) - set(changed))
    need = "queued or being sent" if hold else "held"
    for queue_id in missing:
        _complain(f"{queue_id}: no such message {need}")
    if changed and not hold:
        fastpath.wake(paths.wake_socket())
    return ExitCode.UNAVAILABLE if missing else 0


@app.command("hold")
def hold_command(queue_ids: Annotated[list[str], _IDS]) -> None:
    """Hold messages: they stay in the queue, untried, until released (postsuper -h)."""
    run(lambda: _change("placed on hold", queue_ids, hold=True))


@app.command("release")
def release_command(queue_ids: Annotated[list[str], _IDS]) -> None:
    """Release held messages: due now, and the daemon is woken (postsuper -H)."""
    run(lambda: _change("released from hold", queue_ids, hold=False))


def _asks() -> bool:
    """Whether `queue delete` asks first: someone at a terminal, not a script."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _delete(queue_ids: list[str], yes: bool) -> int:
    """Delete `queue_ids` (asking first on a terminal); never one being sent right now."""
    config = settings.load()
    store = SqlStore.open_existing(config.database, timeout=fastpath.lock_timeout())
    if store is None:
        for queue_id in queue_ids:
            _complain(f"{queue_id}: no such message")
        return ExitCode.UNAVAILABLE
    with store:
        if not yes and _asks():
            count = len(set(queue_ids))
            if not typer.confirm(f"Delete {count} message(s) with their attempts?"):
                _complain("nothing deleted")
                return ExitCode.TEMPFAIL
        deleted = store.delete(queue_ids, now=time.time())
        left = store.states_of(set(queue_ids) - set(deleted))
    for queue_id in deleted:
        _say(f"{queue_id}: removed")
    code = 0
    for queue_id in sorted(set(queue_ids) - set(deleted)):
        if queue_id in left:
            _complain(f"{queue_id}: being sent right now; not removed (hold it, or try again)")
            code = code or ExitCode.TEMPFAIL
        else:
            _complain(f"{queue_id}: no such message")
            code = ExitCode.UNAVAILABLE
    return code


@app.command("delete")
def delete_command(
    queue_ids: Annotated[list[str], _IDS],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask on a terminal.")] = False,
) -> None:
    """Delete messages with their attempts (postsuper -d); not one being sent right now."""
    run(lambda: _delete(queue_ids, yes))


app.command("log")(log_command)
