"""`relayd debug-server`: a local SMTP sink that prints (and optionally stores) what it gets."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import typer

from relayd.cli.output import json_line, local_time, run
from relayd.text import sanitize

if TYPE_CHECKING:
    from relayd.cli.debugserver import Received

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1025  # unprivileged, the usual port of local test sinks (2525 is [listen]'s example)
SEPARATOR = "-" * 72


def debug_server_command(
    port: int = typer.Option(
        DEFAULT_PORT,
        "--port",
        "-p",
        min=0,
        max=65535,
        metavar="PORT",
        help="TCP port; 0 picks a free one.",
    ),
    host: str = typer.Option(
        DEFAULT_HOST,
        "--host",
        metavar="HOST",
        help="Loopback address (or name) to listen on; no other.",
    ),
    maildir: str | None = typer.Option(
        None, "--maildir", metavar="DIR", help="Also store each message in this Maildir."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object a line: the ready line, then one per message."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print only the ready line (useful with --maildir)."
    ),
) -> None:
    """Run a local SMTP sink on loopback that prints each message's envelope and headers.

    Point an msmtp account at it (host 127.0.0.1, port 1025, tls off, auth off) to try relayd
    without a real mail server. Runs until SIGINT or SIGTERM.
    """
    run(lambda: _serve(host, port, maildir, _Printer(as_json=as_json, quiet=quiet)))


def _serve(host: str, port: int, maildir: str | None, printer: _Printer) -> int:
    import asyncio  # with ssl, ~6 MiB that every other `relayd` command does without

    from relayd.cli import debugserver  # aiosmtpd: loaded for this command only

    address = debugserver.listen_address(host)
    printer.maildir = debugserver.prepare_maildir(maildir) if maildir else None
    asyncio.run(
        debugserver.serve(
            address,
            port,
            maildir=printer.maildir,
            on_ready=printer.ready,
            on_message=printer.message,
        )
    )
    printer.stopped()
    return 0


class _Printer:
    """What the sink prints: text for people or JSON lines, each flushed at once."""

    def __init__(self, *, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.maildir: str | None = None
        self.count = 0

    def ready(self, address: str, port: int) -> None:
        if self.as_json:
            self._out(json_line(_ready_record(address, port, self.maildir)))
            return
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        stored = f", storing messages in Maildir {self.maildir}" if self.maildir else ""
        self._out(f"relayd debug-server: listening on {where}{stored}")

    def message(self, received: Received) -> None:
        self.count += 1
        if self.quiet:
            return
        self._out(json_line(_record(received)) if self.as_json else _text(received))

    def stopped(self) -> None:
        if not self.quiet:
            typer.echo(f"relayd debug-server: stopped after {self.count} message(s)", err=True)

    def _out(self, text: str) -> None:
        try:
            typer.echo(text)  # echo flushes: a reader at the other end of a pipe sees it now
        except BrokenPipeError:
            # Nobody reads any more (`… | head`): stop as if interrupted, and write nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            signal.raise_signal(signal.SIGTERM)


def _ready_record(address: str, port: int, maildir: str | None) -> dict[str, Any]:
    return {"event": "listening", "host": address, "port": port, "maildir": maildir}


def _record(received: Received) -> dict[str, Any]:
    """A message as a JSON object; `headers` is a list of [name, value] pairs."""
    return {
        "event": "message",
        "number": received.number,
        "received_at": received.received_at,
        "peer": received.peer,
        "helo": received.helo,
        "esmtp": received.esmtp,
        "mail_from": received.mail_from,
        "mail_options": list(received.mail_options),
        "rcpt_tos": list(received.rcpt_tos),
        "size": received.size,
        "headers": [[name, value] for name, value in received.headers],
        "maildir_file": received.maildir_file,
    }


def _text(received: Received) -> str:
    hello = "EHLO" if received.esmtp else "HELO"
    stored = f", stored as {received.maildir_file}" if received.maildir_file else ""
    lines = [
        f"Message {received.number} at {local_time(received.received_at)}"
        f" from {received.peer} ({hello} {received.helo})",
        " ".join([f"MAIL FROM:<{received.mail_from}>", *received.mail_options]),
        *(f"RCPT TO:<{address}>" for address in received.rcpt_tos),
        f"Size: {received.size} bytes{stored}",
        "",
        *(f"{name}: {value}" for name, value in received.headers),
        SEPARATOR,
    ]
    # What a client sent could drive the terminal: shown escaped instead.
    return "\n".join(sanitize(line, "terminal") for line in lines)
