"""The submit socket's wire format, version 1: typed, length-prefixed frames (no pickle).

Every frame is one type byte, a 4-byte big-endian payload length, then the payload.

Client to daemon: `H` (hello, first and once: a UTF-8 JSON object `{"version": 1, "op": OP,
...}`, at most 1 MiB), then for `op` "submit" the message as `D` frames (raw bytes, at most
64 KiB each) and `E` (end, empty). Other ops (`list`, `show`, `hold`, `release`, `delete`,
`flush`) carry their arguments in the hello and send nothing more.
Daemon to client: any number of `L` frames (one JSON object each: a listing row, a line of
output) and one `R` (reply: `{"code": EXIT, "line": TEXT, "warnings": [TEXT, ...]}`), sent for
a submission only after the message is durably committed, then the daemon closes. A daemon
may reply early (a refusal, an oversized message); a client that gets no reply exits 75.

JSON keeps every argument exact: a byte that is not UTF-8 travels as Python's surrogate
escape (`\\udcXX`), which `json` writes and reads back unchanged.
"""

from __future__ import annotations

import json

VERSION = 1
HELLO, DATA, END, LINE, REPLY = b"H", b"D", b"E", b"L", b"R"
HEADER_SIZE = 5
MAX_HELLO = 1 << 20
MAX_CHUNK = 64 * 1024
MAX_LINE = 1 << 20


class Refused(Exception):
    """A request answered with an exit code and one line, nothing stored or changed."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.line, self.code = line, code


class ProtocolError(Exception):
    """A frame that breaks the format (wrong type, too long, bad JSON)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame."""
    return kind + len(payload).to_bytes(4, "big") + payload


def json_frame(kind: bytes, value: object) -> bytes:
    """A frame whose payload is `value` as JSON."""
    return frame(kind, json.dumps(value, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def parse_header(header: bytes) -> tuple[bytes, int]:
    """A frame header's type and payload length."""
    return header[:1], int.from_bytes(header[1:HEADER_SIZE], "big")


def limit(kind: bytes) -> int:
    """The longest payload a frame of this type may carry."""
    return {HELLO: MAX_HELLO, DATA: MAX_CHUNK, END: 0, LINE: MAX_LINE, REPLY: MAX_LINE}.get(
        kind, -1
    )


def check_header(kind: bytes, length: int, allowed: bytes) -> None:
    """ProtocolError unless `kind` is one of `allowed` and `length` within its limit."""
    if kind not in allowed or not kind:
        raise ProtocolError(f"unexpected frame type {kind!r}")
    if length > limit(kind):
        raise ProtocolError(f"frame {kind.decode()} of {length} bytes is too long")


def load_json(payload: bytes) -> dict[str, object]:
    """A JSON object payload; ProtocolError for anything else."""
    try:
        value = json.loads(payload.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("expected a JSON object")
    return value
