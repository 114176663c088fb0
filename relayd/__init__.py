"""relayd: a local mail relay with a durable queue, msmtp-compatible."""

__version__ = "0.1.0"
