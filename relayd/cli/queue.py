"""`relayd queue …`: list, show, flush, hold, release, delete and log the queued mail."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from relayd import paths, settings
from relayd.cli import complete, remote
from relayd.cli.output import run
from relayd.cli.queue_import import import_msmtpq_command
from relayd.cli.queue_list import list_command, show_command
from relayd.cli.queue_log import log_command
from relayd.store import fastpath
from relayd.sysexits import ExitCode

# The store (SQLAlchemy) and the daemon's pieces are imported by the commands that act, so that
# `queue show` and `queue list` load only what they read with (SPEC §6: show within 40 MiB).

app = typer.Typer(name="queue", help="Inspect and act on the queue.", no_args_is_help=True)
app.command("list")(list_command)
app.command("show")(show_command)


def _ids(complete_with: Callable[[str], list[str]]) -> Any:
    return typer.Argument(metavar="ID…", help="The messages.", autocompletion=complete_with)


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
        list[str] | None,
        typer.Argument(
            metavar="[ID…]", help="Only these messages.", autocompletion=complete.queued_id
        ),
    ] = None,
    account: Annotated[str | None, complete.ACCOUNT_OPTION] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Block until the pass ends and print its outcome; exit 0 if all went, 75 if "
            "some wait for a retry, else the failed or held attempt's code.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.0,
            metavar="SECONDS",
            help="With --wait: give up after this many seconds.",
        ),
    ] = None,
) -> None:
    """Make queued messages due now; wake the daemon, or deliver in-process when none runs."""
    run(lambda: _flush(list(queue_ids or ()), account, wait, timeout))


def _flush(queue_ids: list[str], account: str | None, wait: bool, timeout: float | None) -> int:
    hello = {"op": "flush", "ids": queue_ids, "account": account}
    if not wait:
        remote_code = remote.act(hello)
        if remote_code is not None:
            return remote_code
    elif remote.connected():
        _complain("--wait needs read access to the queue; the host daemon delivers without it")
        return ExitCode.USAGE
    from relayd.daemon import flush

    return flush.flush(
        settings.load(),
        queue_ids,
        account,
        say=_say,
        complain=_complain,
        wait=wait,
        timeout=timeout,
        progress=_progress_bar,
    )


def _change(queue_ids: list[str], *, hold: bool) -> int:
    """Hold or release `queue_ids`; a release wakes the daemon."""
    remote_code = remote.act({"op": "hold" if hold else "release", "ids": queue_ids})
    if remote_code is not None:
        return remote_code
    from relayd.daemon import actions
    from relayd.store.sql import SqlStore

    config = settings.load()
    with SqlStore.open(config.database, timeout=fastpath.lock_timeout()) as store:
        code, wake = actions.hold_or_release(
            store, queue_ids, hold=hold, say=_say, complain=_complain
        )
    if wake:
        fastpath.wake(paths.wake_socket())
    return code


@app.command("hold")
def hold_command(queue_ids: Annotated[list[str], _ids(complete.holdable_id)]) -> None:
    """Hold messages: they stay in the queue, untried, until released (postsuper -h)."""
    run(lambda: _change(queue_ids, hold=True))


@app.command("release")
def release_command(queue_ids: Annotated[list[str], _ids(complete.held_id)]) -> None:
    """Release held messages: due now, and the daemon is woken (postsuper -H)."""
    run(lambda: _change(queue_ids, hold=False))


def _asks() -> bool:
    """Whether `queue delete` asks first: someone at a terminal, not a script."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _delete(queue_ids: list[str], yes: bool) -> int:
    """Delete `queue_ids` (asking first on a terminal); never one being sent right now."""
    if not yes and _asks():
        count = len(set(queue_ids))
        if not typer.confirm(f"Delete {count} message(s) with their attempts?"):
            _complain("nothing deleted")
            return ExitCode.TEMPFAIL
    remote_code = remote.act({"op": "delete", "ids": queue_ids})
    if remote_code is not None:
        return remote_code
    from relayd.daemon import actions
    from relayd.store.sql import SqlStore

    config = settings.load()
    store = SqlStore.open_existing(config.database, timeout=fastpath.lock_timeout())
    if store is None:
        for queue_id in queue_ids:
            _complain(f"{queue_id}: no such message")
        return ExitCode.UNAVAILABLE
    with store:
        return actions.delete(store, queue_ids, say=_say, complain=_complain)


@app.command("delete")
def delete_command(
    queue_ids: Annotated[list[str], _ids(complete.any_id)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask on a terminal.")] = False,
) -> None:
    """Delete messages with their attempts (postsuper -d); not one being sent right now."""
    run(lambda: _delete(queue_ids, yes))


app.command("log")(log_command)
app.command("import-msmtpq")(import_msmtpq_command)
