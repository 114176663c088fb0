"""`relayd daemon`: run the queue runner in the foreground (systemd runs this)."""

from __future__ import annotations

import logging
import sys

import typer

from relayd import settings
from relayd.daemon import instance, malloc
from relayd.errors import RelaydError


def daemon_command(
    scan_interval: float = typer.Option(
        instance.SCAN_INTERVAL,
        "--scan-interval",
        min=0.05,
        max=instance.SCAN_INTERVAL,
        metavar="SECONDS",
        help="Seconds between queue scans (recovers lost wake-ups and due retries).",
    ),
    grace: float = typer.Option(
        instance.SHUTDOWN_GRACE,
        "--shutdown-grace",
        min=0.0,
        max=9.0,
        metavar="SECONDS",
        help="Seconds in-flight transactions get after SIGTERM before they are abandoned.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every pass."),
) -> None:
    """Deliver the queue: wake on submissions, scan periodically, retry as relayd.toml says."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="relayd: %(message)s",
    )
    # Alembic narrates every migration at INFO; only relayd's own lines belong in this log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it narrates every job run
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: every SMTP command
    malloc.one_arena()  # before the first thread
    import asyncio  # with ssl, ~6 MiB that every other `relayd` command does without

    from relayd.daemon import (
        lifecycle as daemon,  # the scheduler and the delivery engine: only to run
    )
    from relayd.submission.listener import SmtpListener  # [listen] (SPEC §5)
    from relayd.submission.server import SubmitServer  # the host submit socket (SPEC §7)

    try:
        config = settings.load()
        run = daemon.run_daemon(
            config, scan_interval=scan_interval, grace=grace, services=[SubmitServer, SmtpListener]
        )
        code = asyncio.run(run)
    except OSError as exc:  # every known start-up path translates its own; never a traceback
        from relayd.daemon.startup import os_failure

        failure = os_failure(exc, "run the daemon")
        typer.echo(f"relayd: {failure.message}", err=True)
        raise typer.Exit(int(failure.exit_code)) from None
    except RelaydError as exc:
        typer.echo(f"relayd: {exc.message}", err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    raise typer.Exit(code)
