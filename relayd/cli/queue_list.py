"""`relayd queue list` and `relayd queue show`: the queue as Postfix shows it, and one message."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Annotated, Any

import typer

from relayd import settings
from relayd.cli import complete, remote
from relayd.cli.output import fail, json_line, local_time, on_terminal, run
from relayd.errors import RelaydError
from relayd.store import fastpath
from relayd.store.records import State
from relayd.store.sqlite_reader import open_reader
from relayd.submission import queuelist
from relayd.submission.queuelist import PURGED, owner_text, show_record
from relayd.sysexits import ExitCode
from relayd.text import display_headers, sanitize

# Imported where used: SQLAlchemy (the listing, a server queue) and rich (a terminal) cost
# `queue show` of a SQLite queue most of its memory (SPEC §6: 40 MiB).
if TYPE_CHECKING:
    from rich.text import Text

    from relayd.store.listing import Listed
    from relayd.store.sql import SqlStore

ALL = "all"
_STATE_HELP = "Only messages in this state (repeatable): queued, sending, held, sent, failed, all."
_MARKER_STYLES = {"*": "cyan", "!": "magenta", "-": "red", "+": "green"}
PURGED_LINE = "Body: purged under [retain]; the envelope, recipients and attempts are kept"


def parse_states(
    values: Sequence[str] | None, default: Sequence[State]
) -> tuple[State, ...] | None:
    """--state values as States (None for `all`); a bad one is a usage error (64)."""
    if not values:
        return tuple(default)
    if ALL in values:
        return None
    try:
        return tuple(State(value) for value in values)
    except ValueError:
        bad = next(v for v in values if v not in {s.value for s in State})
        raise RelaydError(
            f"unknown state {bad!r} (choose from queued, sending, held, sent, failed, all)",
            ExitCode.USAGE,
        ) from None


def open_queue() -> SqlStore | None:
    """The configured queue, read-only, or None when nothing was ever queued."""
    from relayd.store.sql import SqlStore

    return SqlStore.open_reading(settings.load().database, timeout=fastpath.lock_timeout())


def write_listing(messages: Iterable[Listed], *, as_json: bool, styled: bool) -> None:
    """Write the listing to stdout: JSON lines, plain Postfix text, or the same text coloured."""
    if as_json:
        lines = (json_line(queuelist.json_record(m)) for m in messages)
        queuelist.write_lines(sys.stdout, lines)
    elif styled:
        _write_styled(queuelist.listing_blocks(messages))
    else:
        queuelist.write_lines(sys.stdout, queuelist.listing_blocks(messages))


def _style(line: str) -> Text:
    """One listing line coloured by what it is: heading, message, reason or recipient."""
    from rich.text import Text

    if line == queuelist.HEADINGS or line.startswith(("-- ", queuelist.EMPTY)):
        return Text(line, style="bold")
    if line.endswith(")") and line.lstrip().startswith("("):
        return Text(line, style="yellow")
    text = Text(line)
    if line and not line.startswith(" "):
        end = line.index(" ")
        text.stylize("bold", 0, end)
        style = _MARKER_STYLES.get(line[end - 1])
        if style:
            text.stylize(style, end - 1, end)
    return text


def _write_styled(blocks: Iterable[str]) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    for block in blocks:
        for line in block.split("\n"):
            console.print(_style(line))


def _list(states: tuple[State, ...] | None, account: str | None, as_json: bool) -> int:
    wanted = None if states is None else [state.value for state in states]
    found = remote.listing(wanted, account)
    if found is not None:
        write_listing(found, as_json=as_json, styled=on_terminal())
        return 0
    store = open_queue()
    if store is None:
        if not as_json:
            typer.echo(queuelist.EMPTY)
        return 0
    with store:
        write_listing(store.listing(states, account), as_json=as_json, styled=on_terminal())
    return 0


def list_command(
    state: Annotated[
        list[str] | None, typer.Option("--state", "-s", metavar="STATE", help=_STATE_HELP)
    ] = None,
    account: Annotated[str | None, complete.ACCOUNT_OPTION] = None,
    as_json: Annotated[
        bool, typer.Option("--json", "-j", help="One JSON object a line (postqueue -j).")
    ] = False,
) -> None:
    """List the queue like `postqueue -p` (default: all but sent mail; `*` being sent,
    `!` held, `-` failed, `+` sent)."""
    run(lambda: _list(parse_states(state, queuelist.UNFINISHED), account, as_json))


# --- queue show ---------------------------------------------------------------------------


def show_lines(record: dict[str, Any]) -> list[str]:
    """The plain, stable text of `queue show`: the envelope, recipients, attempts, headers."""
    sender = record["sender"] or "<>"
    lines = [
        f"Queue ID: {record['queue_id']}",
        f"State: {record['state']}",
        f"Account: {record['account']}",
    ]
    if record["config_file"]:
        lines.append(f"Configuration file: {record['config_file']}")
    for option, value in record["overrides"]:
        lines.append(f"Override: --{option}" + ("" if value is None else f"={value}"))
    lines += [
        f"Sender: {sender}",
        f"Owner: {owner_text(record['submitted_user'], record['submitted_uid'])}",
        f"Size: {record['message_size']} bytes",
        *([PURGED_LINE] if record["body_purged"] else []),
        f"Arrival: {local_time(record['arrival_time'])}",
        f"Attempts: {record['attempts']}",
    ]
    if record["state"] == State.QUEUED.value:
        lines.append(f"Next attempt: {local_time(record['next_attempt'])}")
    if record["state"] == State.SENDING.value:
        lines.append(
            f"Being sent by: {record['lease_owner']} (lease until "
            f"{local_time(record['lease_until'])})"
        )
    if record["reason"]:
        lines.append(f"Reason: {record['reason']}")
    if record["possible_duplicate_next"]:
        lines.append("Note: a delivery was cut off; the next attempt may send it twice")
    lines.append("Recipients:")
    for r in record["recipients"]:
        reply = f" ({r['reply']})" if r["reply"] else ""
        lines.append(f"  {r['address']}: {r['state']}{reply}")
    lines.append("Attempt log:" if record["attempt_log"] else "Attempt log: none yet")
    for a in record["attempt_log"]:
        flags = f"tls={'on' if a['tls'] else 'off'} auth={'on' if a['auth'] else 'off'}"
        dup = " possible duplicate" if a["possible_duplicate"] else ""
        if a["note"]:
            dup = f" ({a['note']}){dup}"
        lines.append(
            f"  {local_time(a['started_at'])} host={a['host']} {flags} "
            f"duration={a['duration']:.3f}s exitcode={a['exit_name']}{dup}"
        )
        if a["reply"]:
            lines.append(f"    reply: {a['reply']}")
        for r in a["recipients"]:
            reply = f" ({r['reply']})" if r["reply"] else ""
            lines.append(f"    {r['address']}: {r['state']}{reply}")
    if not record["body_purged"]:
        lines.append("Headers:")
        lines += [f"  {name}: {value}" for name, value in record["headers"]]
    return lines


def _show(queue_id: str, raw: bool, as_json: bool) -> int:
    through_host = remote.show(queue_id, raw)
    if through_host is not None:
        return _print_show(*through_host, raw=raw, as_json=as_json)
    store = open_reader(settings.load().database, timeout=fastpath.lock_timeout())
    message = head = None
    if store is not None:
        with closing(store):
            message = store.get(queue_id)
            if message is not None and raw:
                return _copy_raw(queue_id, store.read_data_chunks(queue_id))
            head = queuelist.header_head(store.read_data_chunks(queue_id))
            attempts = store.attempts(queue_id)
    if message is None:
        fail(f"{queue_id}: no such message", ExitCode.UNAVAILABLE)
    record = show_record(message, attempts, None if head is None else display_headers(head))
    return _print_show(record, b"", raw=False, as_json=as_json)


def _copy_raw(queue_id: str, chunks: Iterable[bytes]) -> int:
    """`queue show --raw`: the stored bytes to stdout as they are read, a chunk at a time."""
    out = sys.stdout.buffer
    empty = True
    for chunk in chunks:
        empty = False
        out.write(chunk)
    if empty:
        fail(f"{queue_id}: {PURGED}", ExitCode.NOINPUT)
    out.flush()
    return 0


def _print_show(record: dict[str, Any] | None, data: bytes, *, raw: bool, as_json: bool) -> int:
    """Print a message as `queue show` does: its bytes (`raw`), its JSON, or the text."""
    if raw or record is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    if as_json:
        typer.echo(json_line(record))
        return 0
    # Headers, replies and reasons come from outside: no control character reaches a terminal.
    lines = [sanitize(line, "terminal") for line in show_lines(record)]
    if on_terminal():
        _show_styled(lines)
    else:
        typer.echo("\n".join(lines))
    return 0


def _show_styled(lines: list[str]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line in lines:
        if not line.startswith(" ") and ": " in line:
            key, _, value = line.partition(": ")
            console.print(Text.assemble((key + ":", "bold"), " ", value))
        elif line.endswith(":") and not line.startswith(" "):
            console.print(Text(line, style="bold"))
        else:
            console.print(Text(line))


def show_command(
    queue_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="The message to show.", autocompletion=complete.any_id),
    ],
    raw: Annotated[bool, typer.Option("--raw", help="Print the exact stored bytes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", "-j", help="One JSON object.")] = False,
) -> None:
    """Show one message: envelope, state, each recipient's status, every attempt, headers."""
    run(lambda: _show(queue_id, raw, as_json))
