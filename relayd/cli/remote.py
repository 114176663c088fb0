"""`relayd queue …` for a user of the host queue: the same commands, through the host daemon's
submit socket (SPEC §7), when this user has no queue of its own in use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from relayd.submission import client, route

if TYPE_CHECKING:  # the listing's reader needs SQLAlchemy; `queue show` does without it
    from relayd.store.listing import Listed


def _connection() -> Any:
    return route.decide().sock


def connected() -> bool:
    """Whether this user's queue commands go to the host daemon."""
    sock = _connection()
    if sock is None:
        return False
    sock.close()
    return True


def act(hello: dict[str, Any]) -> int | None:
    """Run `hello` through the host daemon, printing its lines; the exit code, or None when
    this user's commands act on a queue of its own."""
    sock = _connection()
    if sock is None:
        return None

    def show(value: dict[str, object]) -> None:
        for key, err in (("say", False), ("complain", True)):
            if isinstance(value.get(key), str):
                typer.echo(f"relayd: {value[key]}", err=err)

    return finish(client.request(sock, hello, show))


def listing(states: list[str] | None, account: str | None) -> list[Listed] | None:
    """The host queue's listing as this user may see it, or None (a queue of its own)."""
    sock = _connection()
    if sock is None:
        return None
    reply, found = client.listing(sock, states, account)
    if reply.code != 0:
        raise typer.Exit(finish(reply))
    return found


def show(queue_id: str, raw: bool) -> tuple[dict[str, Any] | None, bytes] | None:
    """One message of the host queue (its show record; with `raw`, its bytes are written to
    stdout as they come, a frame at a time, and b"" returned) if this user may see it; None
    for a queue of its own."""
    sock = _connection()
    if sock is None:
        return None
    import base64
    import sys

    record: dict[str, Any] | None = None

    def take(value: dict[str, object]) -> None:
        nonlocal record
        if isinstance(value.get("record"), dict):
            record = value["record"]  # type: ignore[assignment]
        elif isinstance(value.get("raw"), str):
            sys.stdout.buffer.write(base64.b64decode(str(value["raw"])))

    reply = client.request(sock, {"op": "show", "id": queue_id, "raw": raw}, take)
    if reply.code != 0:
        raise typer.Exit(finish(reply))
    return record, b""


def finish(reply: client.Reply) -> int:
    """Print the reply's warnings and failure line as relayd's; its code."""
    return client.report(reply, "relayd")
