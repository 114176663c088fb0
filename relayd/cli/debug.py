"""`relayd debug-server`: a local SMTP sink that prints (and optionally stores) what it gets."""

from __future__ import annotations

from relayd.cli.output import fail


def debug_server_command() -> None:
    """Run a local SMTP sink on loopback that prints each message's envelope and headers."""
    fail("debug-server is not available yet", 69)
