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

The JSON is written and read by the standard library's C accelerator (`_json`) that `json`
itself uses, called directly: importing `json` loads `re` and `enum`, 2-3 ms of a user's
submission through the socket. The output is json.dumps's, byte for byte.
"""

from __future__ import annotations

import _json

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


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value, separators=(",", ":")), without the circular-reference check.
_ENCODE = _json.make_encoder(
    None, _unserializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)


class _Decoding:
    """What the C scanner reads of json.JSONDecoder's settings: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_SCAN = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # typeshed: a JSONDecoder
_JSON_SPACE = " \t\n\r"


def dumps(value: object) -> str:
    """`value` as compact JSON, exactly as json.dumps(value, separators=(",", ":"))."""
    return "".join(_ENCODE(value, 0))


def loads(text: str) -> object:
    """The JSON value of `text` (as json.loads); ValueError when it is not JSON."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = _SCAN(text, start)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if text[end:].strip(_JSON_SPACE):
        raise ValueError("extra data after the JSON value")
    return value


def json_frame(kind: bytes, value: object) -> bytes:
    """A frame whose payload is `value` as JSON."""
    return frame(kind, dumps(value).encode("utf-8", "surrogatepass"))


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
        value = loads(payload.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("expected a JSON object")
    return value
