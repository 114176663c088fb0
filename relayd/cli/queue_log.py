"""`relayd queue log [ID] [--follow]`: the attempt log, read from the queue."""

from __future__ import annotations

from relayd.cli.output import fail


def log_command() -> None:
    """Print the attempt log (every attempt, oldest first); --follow waits for new ones."""
    fail("queue log is not available yet", 69)
