"""`relayd queue …`: for now `flush` (make mail due; wake the daemon or deliver in-process)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from typing import Annotated

import typer

from relayd import daemon, paths, settings
from relayd.errors import RelaydError
from relayd.store import fastpath
from relayd.store.records import State
from relayd.store.sql import SqlStore

app = typer.Typer(name="queue", help="Inspect and act on the queue.", no_args_is_help=True)


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
        runner = daemon.Runner(
            store,
            config,
            owner=f"flush-{socket.gethostname()}-{os.getpid()}",
            queue_ids=flushed,
        )
        wanted = set(flushed)
        accounts = {m.account for m in store.list(State.QUEUED) if m.queue_id in wanted}
        asyncio.run(runner.drain(sorted(accounts)))
        typer.echo(f"relayd: no daemon running; delivered in-process: {runner.tally}")
    return 0


@app.command("flush")
def flush_command(
    queue_ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID", help="Only these messages.")
    ] = None,
    account: str | None = typer.Option(None, "--account", "-a", help="Only this account's."),
) -> None:
    """Make queued messages due now; wake the daemon, or deliver in-process when none runs."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="relayd: %(message)s")
    try:
        code = _flush(list(queue_ids or ()), account)
    except RelaydError as exc:
        typer.echo(f"relayd: {exc.message}", err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    raise typer.Exit(code)
