"""A user's side of the host submit socket: send a request, stream the mail, read the reply."""

from __future__ import annotations

import os
import sys

from relayd.errors import RelaydError
from relayd.submission import protocol
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # the sendmail hot path
if TYPE_CHECKING:
    from _socket import socket
    from collections.abc import Callable, Iterable, Iterator

    from relayd.store.listing import Listed

REPLY_TIMEOUT = 120.0  # seconds the daemon may take to answer (a commit may wait for a lock)
_NO_REPLY = (
    "the host's relayd did not confirm the message ({reason}); it may not be queued: try again"
)


class Reply:
    """The daemon's answer: exit code, one line, warnings."""

    def __init__(self, code: int, line: str, warnings: list[str]) -> None:
        self.code, self.line, self.warnings = code, line, warnings


def submit(sock: socket, argv: list[str], prog: str) -> int:
    """Send the invocation and standard input through `sock`; print what the daemon says and
    return its exit code (75 when it never answers: the caller keeps its copy)."""
    try:
        reply = send(sock, argv, _stdin_blocks())
    finally:
        sock.close()
    return report(reply, prog)


def request(
    sock: socket, hello: dict[str, object], on_line: Callable[[dict[str, object]], None]
) -> Reply:
    """Send a hello without data; pass each `L` frame to `on_line`; the reply."""
    try:
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendall(protocol.json_frame(protocol.HELLO, {"version": protocol.VERSION, **hello}))
        return read_reply(sock, on_line)
    except OSError as exc:
        return Reply(ExitCode.TEMPFAIL, f"the host's relayd did not answer ({exc.strerror})", [])
    finally:
        sock.close()


def report(reply: Reply, prog: str) -> int:
    """Print the reply's warnings and, for a failure, its line, to stderr; its exit code."""
    err = sys.stderr
    for warning in reply.warnings:
        err.write(f"{prog}: warning: {warning}\n")
    if reply.code != 0 and reply.line:
        err.write(f"{prog}: {reply.line}\n")
    err.flush()
    return reply.code


def send(sock: socket, argv: list[str], blocks: Iterable[bytes]) -> Reply:
    """Submit `blocks` (the mail, each at most MAX_CHUNK bytes) with `argv`; the reply.

    Each block is sent once the next one has been read, so a mail read in one block goes out
    in one write (hello, data, end) that the daemon takes at one wake-up; a slow writer still
    gives the daemon a frame whenever it writes (its timeout counts between frames)."""
    sock.settimeout(REPLY_TIMEOUT)
    hello = {"version": protocol.VERSION, "op": "submit", "argv": argv}
    try:
        held, holds_data = [protocol.json_frame(protocol.HELLO, hello)], False
        for block in blocks:
            if holds_data:  # the block before this one, with the hello if it is the first
                sock.sendall(b"".join(held))
                held.clear()
            held.append(protocol.frame(protocol.DATA, block))
            holds_data = True
        held.append(protocol.frame(protocol.END))
        sock.sendall(b"".join(held))
    except RelaydError as err:
        return Reply(err.exit_code, err.message, [])
    except OSError:
        pass  # the daemon stopped reading: it may have replied why (an oversized message)
    try:
        return read_reply(sock, None)
    except OSError as exc:
        return Reply(ExitCode.TEMPFAIL, _NO_REPLY.format(reason=exc.strerror or exc), [])


def _stdin_blocks() -> Iterator[bytes]:
    """Standard input in blocks; the mail is never held whole. (os.read, not the submit
    module's reader: that module and what it loads cost a fifth of this client's start.)"""
    while True:
        try:
            block = os.read(0, protocol.MAX_CHUNK)
        except OSError as exc:
            raise RelaydError(
                f"cannot read the mail from standard input: {exc.strerror}", ExitCode.IOERR
            ) from None
        if not block:
            return
        yield block


def read_reply(sock: socket, on_line: Callable[[dict[str, object]], None] | None) -> Reply:
    """Frames up to the reply; a connection closed first is a 75."""
    while True:
        header = _recv_exact(sock, protocol.HEADER_SIZE)
        if header is None:
            return Reply(ExitCode.TEMPFAIL, _NO_REPLY.format(reason="connection closed"), [])
        kind, length = protocol.parse_header(header)
        try:
            protocol.check_header(kind, length, protocol.LINE + protocol.REPLY)
            payload = _recv_exact(sock, length) if length else b""
            if payload is None:
                return Reply(ExitCode.TEMPFAIL, _NO_REPLY.format(reason="cut off"), [])
            value = protocol.load_json(payload)
        except protocol.ProtocolError as exc:
            return Reply(ExitCode.PROTOCOL, f"the host's relayd answered badly: {exc}", [])
        if kind == protocol.LINE:
            if on_line is not None:
                on_line(value)
            continue
        code, line, warnings = value.get("code"), value.get("line"), value.get("warnings", [])
        if not isinstance(code, int) or not isinstance(line, str):
            return Reply(ExitCode.PROTOCOL, "the host's relayd answered badly: no code", [])
        return Reply(code, line, [str(w) for w in warnings] if isinstance(warnings, list) else [])


def _recv_exact(sock: socket, size: int) -> bytes | None:
    """Exactly `size` bytes, or None at end of stream."""
    parts = []
    while size:
        part = sock.recv(min(size, 1 << 20))
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def listing(
    sock: socket, states: list[str] | None, account: str | None
) -> tuple[Reply, list[Listed]]:
    """The host queue as the daemon lets this user see it (others' envelopes hidden)."""
    from relayd.store.listing import Listed, ListedRecipient

    found: list[Listed] = []

    def add(value: dict[str, object]) -> None:
        row = value.get("listed")
        if isinstance(row, list) and row:
            *fields, recipients = row
            found.append(Listed._make([*fields, tuple(ListedRecipient(*r) for r in recipients)]))

    reply = request(sock, {"op": "list", "states": states, "account": account}, add)
    return reply, found
