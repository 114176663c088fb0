"""Bodies stream out of the queue: dot-stuffing, sizes and reads across chunk boundaries."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from relayd.daemon.bodies import Streamed
from relayd.delivery.result import Disposition
from relayd.delivery.session import OutgoingMessage, deliver
from relayd.delivery.wire import Abort, Stuffer
from relayd.store import BODY_CHUNK
from relayd.store.queued import MailSize, mail_size
from relayd.store.sql import SqlStore
from tests.store_helpers import message
from tests.test_delivery_session import account
from tests.upstream import Features, UpstreamServer

CASES = [
    b"",
    b"\n",
    b"\r\n",
    b".",
    b".\r\n",
    b"a\r\n.b\r\n..\r\n.",
    b"x\n.\n.y",
    b"line\r",
    b"line\r\r\n",
    b"a\n\n",
    b"a\r\n\r\n.",
    b"last line without newline",
    b"bare LF at the end\n",
    b"\r\n.\r\n.\r\n",
]


def reference(data: bytes) -> bytes:
    """The stuffed bytes as relayd sent them before streaming (the whole body at once)."""
    end = len(data) - 1 if data.endswith(b"\n") and not data.endswith(b"\r\n") else len(data)
    body = data[:end]
    out = body.replace(b"\n.", b"\n..")
    if body.startswith(b"."):
        out = b"." + out
    return out + (b".\r\n" if not body or body.endswith(b"\n") else b"\r\n.\r\n")


def splits(data: bytes) -> Iterator[list[bytes]]:
    """`data` cut at every one and every two places (empty pieces included)."""
    for cuts in itertools.chain(
        itertools.combinations_with_replacement(range(len(data) + 1), 1),
        itertools.combinations_with_replacement(range(len(data) + 1), 2),
    ):
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def stuffed(pieces: Sequence[bytes]) -> bytes:
    stuffer = Stuffer()
    return b"".join(stuffer.feed(piece) for piece in pieces) + stuffer.end()


@pytest.mark.parametrize("data", CASES)
def test_stuffing_is_the_same_whatever_the_chunk_boundaries(data: bytes) -> None:
    expected = reference(data)
    for pieces in splits(data):
        assert stuffed(pieces) == expected, pieces


@pytest.mark.parametrize("data", CASES)
def test_mail_size_is_the_same_whatever_the_chunk_boundaries(data: bytes) -> None:
    for pieces in splits(data):
        counter = MailSize()
        for piece in pieces:
            counter.add(piece)
        assert counter.value == mail_size(data), pieces


class Chunks:
    """A stored body as the daemon streams it: its size and last byte known, its bytes in
    the given pieces."""

    def __init__(self, pieces: Sequence[bytes], size: int | None = None) -> None:
        self.pieces = pieces
        data = b"".join(pieces)
        self.size = len(data) if size is None else size
        self.last = data[-1:]
        self.read = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.read += 1
            yield piece


def cut(data: bytes, at: Sequence[int]) -> list[bytes]:
    bounds = [0, *at, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


BIG = b"Subject: big\r\n\r\n" + b"".join(b".%06d line\r\n" % n for n in range(20_000))


@pytest.mark.parametrize(
    ("data", "at"),
    [
        (b"Subject: s\r\n\r\nx\r\n.dot\r\n", [19]),  # ".dot": the LF ends one chunk
        (b"Subject: s\r\n\r\nx\r\n.dot\r\n", [20]),  # the "." begins the next
        (b"Subject: s\r\n\r\nx\r\n.dot\r\n", [18]),  # CRLF split: a chunk ends in CR
        (b"Subject: s\r\n\r\nno final newline", [5, 17]),
        (b".first\r\n", [1]),
        (BIG, list(range(7, len(BIG), 4093))),
    ],
)
def test_a_streamed_body_arrives_byte_exact(data: bytes, at: list[int]) -> None:
    with UpstreamServer(timeout=10) as server:
        body = Chunks(cut(data, at))
        streamed = OutgoingMessage("me@example.org", ["you@example.net"], b"", body=body)
        whole = OutgoingMessage("me@example.org", ["you@example.net"], data)
        results = asyncio.run(asyncio.wait_for(deliver(account(server), [streamed, whole]), 20))
        assert [r.disposition for r in results] == [Disposition.SENT] * 2
        got, reference_ = server.transactions
    assert got.data == reference_.data
    assert got.data == (data if data.endswith(b"\r\n") else data + b"\r\n")


def test_the_size_check_uses_the_stored_size_and_reads_nothing() -> None:
    with UpstreamServer(timeout=10, features=Features(size=1000)) as server:
        body = Chunks([b"x" * 10], size=999)  # 999 stored bytes, no final LF: 1001 to send
        outgoing = OutgoingMessage("me@example.org", ["you@example.net"], b"", body=body)
        (result,) = asyncio.run(asyncio.wait_for(deliver(account(server), [outgoing]), 20))
        assert result.disposition is Disposition.FAIL
        assert "1001" in (result.error or ""), result.error
        assert body.read == 0
        assert server.transactions == []


def test_a_body_deleted_while_it_streams_sends_no_final_dot(tmp_path: Path) -> None:
    data = b"Subject: big\r\n\r\n" + b"z" * (5 * BODY_CHUNK * 8)
    with SqlStore.open(f"sqlite:///{tmp_path / 'queue.db'}") as store:
        queue_id = store.enqueue(message(data=data), 0.0)
        (queued,) = [m for m in [store.get(queue_id)] if m is not None]

        async def run() -> None:
            body = await Streamed.open(store, queued)
            assert body is not None and body.size == len(data) and body.last == b"z"
            chunks = body.chunks()
            assert await anext(chunks) == data[:BODY_CHUNK]
            assert store.delete([queue_id]) == (queue_id,)
            with pytest.raises(Abort, match="cannot read the queued message"):
                async for _ in chunks:
                    pass

        asyncio.run(asyncio.wait_for(run(), 20))


def test_queue_store_streams_a_body_in_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BODY_CHUNK // 256 * 20 + 3)
    with SqlStore.open(f"sqlite:///{tmp_path / 'queue.db'}") as store:
        queue_id = store.enqueue(message(data=data), 0.0)
        chunks = list(store.read_data_chunks(queue_id))
        assert b"".join(chunks) == data
        assert max(map(len, chunks)) <= BODY_CHUNK
        assert list(store.read_data_chunks("nope")) == []
