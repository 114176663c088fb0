"""What every `relayd` command prints with: one-line errors, JSON lines, times, colour or not."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from relayd.errors import RelaydError
from relayd.text import sanitize


def on_terminal() -> bool:
    """Whether stdout is a terminal that wants colour and tables (not piped, no NO_COLOR)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def json_line(value: dict[str, Any]) -> str:
    """`value` as one JSON object on one line (UTF-8 kept, as `postqueue -j` prints), with
    every control, format or separator character escaped: the data stays exact, and nothing in
    it can drive the terminal it is printed on."""
    return sanitize(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")), "json")


def local_time(timestamp: float | None, *, never: str = "-") -> str:
    """A Unix time as local `YYYY-MM-DD HH:MM:SS`, or `never` for None."""
    if timestamp is None:
        return never
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def fail(message: str, code: int) -> NoReturn:
    """Print `relayd: message` on stderr and exit with `code`."""
    typer.echo(f"relayd: {message}", err=True)
    raise typer.Exit(code)


def run(action: Callable[[], int]) -> NoReturn:
    """Run a command's body: RelaydError becomes its one-line message and sysexits code."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="relayd: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        code = action()
    except RelaydError as exc:
        fail(exc.message, int(exc.exit_code))
    raise typer.Exit(code)
