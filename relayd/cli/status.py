"""`relayd status`: is the daemon up, what the queue holds per state and account, what failed."""

from __future__ import annotations

from relayd.cli.output import fail


def status_command() -> None:
    """Show whether the daemon runs, counts per state and account, next retry, last errors."""
    fail("status is not available yet", 69)
