"""The `relayd` management command (typer): daemon, queue, status, config, setup."""

from __future__ import annotations

import typer

from relayd import __version__
from relayd.cli import config, oauth2, queue
from relayd.cli.daemon import daemon_command
from relayd.cli.debug import debug_server_command
from relayd.cli.setup import setup_command
from relayd.cli.status import status_command

app = typer.Typer(
    name="relayd",
    help="relayd: a local mail relay with a durable queue.",
    no_args_is_help=True,
    add_completion=True,
    # click's plain help: paragraphs refilled to the terminal's width, and no `<bool>` type
    # column for flags (rich's panels kept the docstrings' line breaks and showed one)
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"relayd version {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """relayd: a local mail relay with a durable queue."""


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(f"relayd version {__version__}")


app.command("daemon")(daemon_command)
app.add_typer(queue.app, name="queue")
app.command("status")(status_command)
app.add_typer(config.app, name="config")
app.add_typer(oauth2.app, name="oauth2")
app.command("debug-server")(debug_server_command)
app.command("setup")(setup_command)


def main() -> None:
    """Entry point of the `relayd` console script."""
    app()
