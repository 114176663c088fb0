"""`relayd queue …`: flush (make mail due; wake the daemon or deliver in-process), hold, release."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Annotated

import typer

from relayd import paths, runner, settings
from relayd.cli.output import run
from relayd.cli.queue_log import log_command
from relayd.store import fastpath
from relayd.store.records import State
from relayd.store.sql import SqlStore

app = typer.Typer(name="queue", help="Inspect and act on the queue.", no_args_is_help=True)
app.command("log")(log_command)


def _flush(queue_ids: list[str], account: str | None) -> int:
    config = settings.load()
    with SqlStore.open(config.database, timeout=fastpath.lock_timeout()) as store:
        flushed = store.make_due(time.time(), queue_ids or None, account)
        for missing in sorted(set(queue_ids) - set(flushed)):
            typer.echo(f"relayd: {missing}: no such queued message", err=True)
        if not flushed:
            typer.echo("relayd: nothing to flush")
            return 0
        if fastpath.wake(paths.wake_socket()):
            typer.echo(f"relayd: {len(flushed)} message(s) due now; the daemon delivers them")
            return 0
        # No daemon listens: one pass in this process, over exactly the flushed messages.
        drainer = runner.Runner(
            store,
            config,
            owner=f"flush-{socket.gethostname()}-{os.getpid()}",
            queue_ids=flushed,
        )
        wanted = set(flushed)
        accounts = {m.account for m in store.list(State.QUEUED) if m.queue_id in wanted}
        asyncio.run(drainer.drain(sorted(accounts)))
        typer.echo(f"relayd: no daemon running; delivered in-process: {drainer.tally}")
    return 0


@app.command("flush")
def flush_command(
    queue_ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID", help="Only these messages.")
    ] = None,
    account: str | None = typer.Option(None, "--account", "-a", help="Only this account's."),
) -> None:
    """Make queued messages due now; wake the daemon, or deliver in-process when none runs."""
    run(lambda: _flush(list(queue_ids or ()), account))


def _change(action: str, queue_ids: list[str], *, hold: bool) -> int:
    """Hold or release `queue_ids`; a release wakes the daemon. Exit 69 if any was not found
    in the state the action needs (Postfix's postsuper reports and goes on the same way)."""
    config = settings.load()
    with SqlStore.open(config.database, timeout=fastpath.lock_timeout()) as store:
        if hold:
            changed = store.hold(queue_ids, "held by the user")
        else:
            changed = store.release(queue_ids, time.time())
    for queue_id in changed:
        typer.echo(f"relayd: {queue_id}: {action}")
    missing = sorted(set(queue_ids) - set(changed))
    need = "queued or being sent" if hold else "held"
    for queue_id in missing:
        typer.echo(f"relayd: {queue_id}: no such message {need}", err=True)
    if changed and not hold:
        fastpath.wake(paths.wake_socket())
    return 69 if missing else 0


@app.command("hold")
def hold_command(
    queue_ids: Annotated[list[str], typer.Argument(metavar="ID…", help="The messages to hold.")],
) -> None:
    """Hold messages: they stay in the queue, untried, until released (postsuper -h)."""
    run(lambda: _change("placed on hold", queue_ids, hold=True))


@app.command("release")
def release_command(
    queue_ids: Annotated[
        list[str], typer.Argument(metavar="ID…", help="The held messages to release.")
    ],
) -> None:
    """Release held messages: due now, and the daemon is woken (postsuper -H)."""
    run(lambda: _change("released from hold", queue_ids, hold=False))
