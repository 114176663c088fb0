"""`relayd queue import-msmtpq`: take over an msmtpq queue (the work is in submission/msmtpq)."""

from __future__ import annotations

from typing import Annotated

import typer

from relayd.cli.output import run


def _say(line: str) -> None:
    typer.echo(f"relayd: {line}")


def _complain(line: str) -> None:
    typer.echo(f"relayd: {line}", err=True)


def import_msmtpq_command(
    directory: Annotated[
        str | None,
        typer.Argument(
            metavar="DIR",
            help="msmtpq's queue (default: $MSMTPQ_Q, else $Q, else ~/.msmtp.queue).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Say what would be queued; change nothing.")
    ] = False,
) -> None:
    """Queue every mail of an msmtpq queue with its original arrival time, then remove it.

    Each ID.mail with its ID.msmtp arguments goes through relayd-sendmail's rules (account,
    envelope, headers). Arguments msmtpq split at spaces are joined back where that is certain
    (`-F Alice Smith you@x`: the name "Alice Smith"); an entry that is ambiguous or bad is one
    line on stderr and stays in DIR. Exit 0 when all were queued, 65 when some were left, 66
    without DIR, 75 when msmtpq holds its lock past RELAYD_LOCK_TIMEOUT (10 s).
    """
    from relayd.submission import msmtpq

    run(lambda: msmtpq.import_queue(directory, dry_run=dry_run, say=_say, complain=_complain))
