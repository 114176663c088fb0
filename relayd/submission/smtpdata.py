"""Reading SMTP DATA in blocks: find "CRLF . CRLF", undo dot-stuffing, keep aiosmtpd's limits.

aiosmtpd reads DATA one line at a time (an await, a log call and list work per line: most of
the listener's time at load). This reads what the stream has in large blocks instead, with the
same results: the message as aiosmtpd's `original_content` would be (dot-stuffing undone, CRLF
line ends as sent), a message over the size limit or with a line over aiosmtpd's line limit
refused once its end has been read, and its bytes dropped as they come (memory stays bounded).
A message bigger than `spooled.IN_MEMORY` goes on into a private temporary file (`Spool`) as
it is read: a 50 MB message never sits whole in memory.

The end of data is the first "CRLF . CRLF" of the stream, counting the CRLF that ended the DATA
command (so a lone "." line right away is an empty message). `StreamReader.readuntil` finds it
inside the reader's buffer and leaves what follows (pipelined commands) unread; only at the
start, where the DATA command's CRLF was consumed already, a few bytes at a time are read until
no prefix of the end marker is pending.
"""

from __future__ import annotations

import asyncio
import enum
import re
import tempfile
from collections.abc import Iterator

from relayd.submission.spooled import IN_MEMORY, Replay

END = b"\r\n.\r\n"
_LINE_END = b"\r\n"
_STUFFED = b"\r\n."
_FIND_STUFFED = re.compile(re.escape(_STUFFED)).search


class Outcome(enum.Enum):
    """How DATA ended (aiosmtpd's `_DataState`)."""

    NOMINAL = "nominal"
    TOO_LONG = "a line is too long"
    TOO_MUCH = "too much mail data"


def _pending(tail: bytes) -> int:
    """The length of the longest end of `tail` that begins END (0 when none)."""
    for size in range(min(len(tail), len(END) - 1), 0, -1):
        if END.startswith(tail[-size:]):
            return size
    return 0


class Spool:
    """The content of a big message, in a private temporary file (deleted when closed)."""

    def __init__(self, start: bytes | bytearray) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.size = 0
        self.nul = False
        self.write(start)

    def write(self, data: bytes | bytearray) -> None:
        self.nul = self.nul or b"\0" in data
        self.file.write(data)
        self.size += len(data)

    def drop_last(self, count: int) -> None:
        """Drop the last `count` bytes written."""
        self.size -= count
        self.file.truncate(self.size)
        self.file.seek(self.size)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (b"" at the end), after `rewind`, like os.read."""
        return self.file.read(size)

    def rewind(self) -> None:
        self.file.flush()
        self.file.seek(0)

    def chunks(self) -> Iterator[bytes]:
        """The content from its start, BODY_CHUNK at a time."""
        self.file.flush()
        return iter(Replay(self.file))

    def close(self) -> None:
        self.file.close()


Content = bytes | Spool


class _Message:
    """The message as its raw blocks arrive: unstuffed content, raw size, line lengths."""

    def __init__(self, limit: int | None, line_limit: int) -> None:
        self.limit, self.line_limit = limit, line_limit
        self.content = bytearray()
        self.spool: Spool | None = None
        self.outcome = Outcome.NOMINAL
        self.size = 0  # raw bytes read, the end marker's ".\r\n" included once found
        self.before = _LINE_END  # the last two raw bytes (at first the DATA command's CRLF)
        self.line = 0  # raw bytes of the line still open (a trailing CR included)

    def add(self, block: bytes) -> None:
        self.size += len(block)
        if self.outcome is Outcome.NOMINAL:
            self._check_lines(block)
        if self.outcome is Outcome.NOMINAL and self.limit and self.size - 3 > self.limit:
            self.outcome = Outcome.TOO_MUCH  # more than the limit even if the end is next
        if self.outcome is not Outcome.NOMINAL:
            self.discard()  # refused: keep nothing of it
        else:
            self._unstuff(block)
        self.before = (self.before + block[-2:])[-2:]

    def _unstuff(self, block: bytes) -> None:
        """Keep `block` without the dot of each CRLF "." (one CRLF possibly in the last
        block): found one by one (bytes.find and replace are slower for 3 bytes)."""
        joined = self.before + block
        found = _FIND_STUFFED(joined)
        if found is None:
            self._keep(block)
            return
        pieces, start = [], 2  # the content starts after `before`; a "CRLF ." may start in it
        while found is not None:
            at = found.start()
            pieces.append(joined[start : at + 2])
            start = at + 3
            found = _FIND_STUFFED(joined, start)
        pieces.append(joined[start:])
        self._keep(b"".join(pieces))

    def _keep(self, data: bytes) -> None:
        if self.spool is not None:
            self.spool.write(data)
            return
        self.content += data
        if len(self.content) > IN_MEMORY:
            self.spool, self.content = Spool(self.content), bytearray()

    def discard(self) -> None:
        """Keep nothing of the message (a spool file is closed and so deleted)."""
        self.content = bytearray()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _check_lines(self, block: bytes) -> None:
        """aiosmtpd's line limit: a line of more than `line_limit` bytes with its CRLF.

        Not line by line: from a line's start, the last CRLF within `line_limit` bytes ends a
        run of lines that are all short enough; none there means the line is too long (when a
        CRLF ends it later) or still open."""
        limit = self.line_limit
        carried = b"\r" if self.before.endswith(b"\r") else b""
        data = carried + block if carried else block
        end = data.find(_LINE_END)
        if end < 0:
            self.line += len(data) - len(carried)
        elif self.line - len(carried) + end + 2 > limit:
            self.line = 0
            self.outcome = Outcome.TOO_LONG
            return
        else:
            start = end + 2
            while (last := data.rfind(_LINE_END, start, start + limit)) >= 0:
                start = last + 2
            if data.find(_LINE_END, start) >= 0:
                self.outcome = Outcome.TOO_LONG
                return
            self.line = len(data) - start
        if self.line > limit:
            self.outcome = Outcome.TOO_LONG

    def finish(self) -> tuple[Outcome, Content]:
        """The outcome and the message, once the end marker was added (as "\r\n" after
        unstuffing: its dot is a stuffed one): bytes, or a Spool the caller closes."""
        if self.outcome is not Outcome.NOMINAL:
            return self.outcome, b""
        if self.spool is not None:
            spool, self.spool = self.spool, None
            spool.drop_last(2)
            return self.outcome, spool
        del self.content[-2:]
        content, self.content = bytes(self.content), bytearray()
        return self.outcome, content


async def read(
    reader: asyncio.StreamReader, limit: int | None, line_limit: int
) -> tuple[Outcome, Content]:
    """Read DATA's message from `reader` up to and including the end marker; the outcome
    and (when NOMINAL) the message, bytes or a Spool for the caller to close. `limit`:
    aiosmtpd's data_size_limit (None or 0: none); `line_limit`: its line_length_limit.
    IncompleteReadError when the stream ends first (nothing is kept then)."""
    message = _Message(limit, line_limit)
    try:
        return await _read(reader, message)
    except BaseException:
        message.discard()
        raise


async def _read(reader: asyncio.StreamReader, message: _Message) -> tuple[Outcome, Content]:
    tail = _LINE_END
    while pending := _pending(tail):  # a prefix of END may be waiting for its rest
        more = await reader.readexactly(len(END) - pending)
        message.add(more)
        if tail[-pending:] + more == END:
            return message.finish()
        tail = (tail + more)[-4:]
    while True:
        try:
            block = await reader.readuntil(END)
        except asyncio.LimitOverrunError as exc:
            # Not within the reader's limit: take what surely holds no end (the end, when
            # found further on, is then at the start of the buffer).
            message.add(await reader.readexactly(exc.consumed))
            continue
        message.add(block)
        return message.finish()
