"""Server replies parsed the same on the fast path (a one-line reply already read) as on the
general one (multi-line replies, replies split across reads, the traced dialogue)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from relayd.delivery.result import Reply
from relayd.delivery.wire import Abort, Wire

STREAMS = [
    b"250 2.0.0 Ok: queued as 1\r\n",
    b"250 ok\n354 go\r\n",
    b"250-first\r\n250-second\r\n250 last\r\n220 next\r\n",
    b"250 \r\n",
    b"250 caf\xc3\xa9 \xff\r\n",
    b"550 5.1.1 <a@b>: no\r\r\n",
    b"250 ok\r\n25x bad\r\n",
    b"250\r\n",
    b"hello there\r\n",
    b"250-only a continuation\r\n",
]


def replies(stream: bytes, *, pieces: int, traced: bool) -> list[Reply | str]:
    """Every reply in `stream`, fed in `pieces` reads, until the end or an Abort (its error)."""

    async def scenario() -> list[Reply | str]:
        reader = asyncio.StreamReader()
        step = max(1, len(stream) // pieces)
        for start in range(0, len(stream), step):
            reader.feed_data(stream[start : start + step])
        reader.feed_eof()
        shown: list[str] = []
        wire = Wire(reader, cast(asyncio.StreamWriter, None), 5.0, shown.append if traced else None)
        got: list[Reply | str] = []
        while True:
            try:
                got.append(await wire.read_reply())
            except Abort as abort:
                got.append(abort.failure.error or "")
                return got

    return asyncio.run(asyncio.wait_for(scenario(), 10))


@pytest.mark.parametrize("stream", STREAMS)
def test_replies_are_the_same_on_every_path(stream: bytes) -> None:
    general = replies(stream, pieces=len(stream), traced=True)  # a byte a read, traced
    assert replies(stream, pieces=1, traced=False) == general
    assert replies(stream, pieces=3, traced=False) == general
    assert isinstance(general[-1], str)  # the stream ends in an error (no more reply)


def test_a_one_line_reply_keeps_its_code_and_text() -> None:
    got = replies(b"250 2.0.0 Ok\r\n451-4.3.0 try\r\n451 4.3.0 later\r\n", pieces=1, traced=False)
    assert got[:2] == [Reply(250, ("2.0.0 Ok",)), Reply(451, ("4.3.0 try", "4.3.0 later"))]
