"""`relayd config check`: every problem in the msmtprc and relayd.toml, with file:line."""

from __future__ import annotations

import typer

from relayd.cli.output import fail

app = typer.Typer(name="config", help="Check the configuration.", no_args_is_help=True)


@app.command("check")
def check_command() -> None:
    """Report every problem in the msmtprc and relayd.toml; exit 78 if there is any."""
    fail("config check is not available yet", 69)
