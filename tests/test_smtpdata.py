"""Reading SMTP DATA in blocks (relayd.submission.smtpdata) on a real asyncio StreamReader fed
the raw stream in pieces cut everywhere; the reference is the whole-stream rule of RFC 5321
4.5.2 (end at the first CRLF.CRLF, counting the DATA command's CRLF; a leading dot removed)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random

import pytest
from aiosmtpd.smtp import SMTP

from relayd.submission.smtpd import _PLAIN_PATH, RelaydSMTP
from relayd.submission.smtpdata import END, Outcome, Spool, read
from relayd.submission.spooled import IN_MEMORY

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, also its StreamReader's limit
AFTER = b"MAIL FROM:<next@example.org>\r\n"  # a pipelined command: must stay unread


def reference(stream: bytes) -> tuple[bytes, int]:
    """(message, bytes the DATA takes) by the whole-stream rule."""
    whole = b"\r\n" + stream
    end = whole.index(END)
    message = whole[: end + 2].replace(b"\r\n.", b"\r\n")[2:]
    return message, end + len(END) - 2


def run_read(
    pieces: list[bytes], limit: int | None = None, eof: bool = False
) -> tuple[Outcome, bytes | Spool, bytes]:
    """Feed `pieces` one loop turn apart; (outcome, message, what is left in the reader)."""

    async def main() -> tuple[Outcome, bytes | Spool, bytes]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)

        async def feed() -> None:
            for piece in pieces:
                reader.feed_data(piece)
                await asyncio.sleep(0)
            if eof:
                reader.feed_eof()

        feeder = asyncio.create_task(feed())
        outcome, message = await asyncio.wait_for(read(reader, limit, LINE_LIMIT), 10)
        await feeder
        reader.feed_eof()
        return outcome, message, await reader.read()

    return asyncio.run(main())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


CASES = [
    b".\r\n",  # a bare "." at once: the empty message
    b"\r\n.\r\n",  # one empty line
    b"..\r\n.\r\n",  # a stuffed line holding one dot
    b"Subject: x\r\n\r\n.leading\r\n..two\r\nend\r\n.\r\n",
    b"a\r\n.\r\r\n.\r\n",  # ".\r\r\n" is a line, not the end
    b"a\r.\r\n\n.\r\n.\r\n",  # bare CR and LF around dots: not line starts
    b"x" * 999 + b"\r\n.\r\n",  # the longest line aiosmtpd takes
    (b"y" * 78 + b"\r\n.z\r\n") * 300 + b".\r\n",  # 24 KB, over the reader's limit
]


@pytest.mark.parametrize("stream", CASES)
def test_every_cut_of_the_stream_gives_the_whole_stream_answer(stream: bytes) -> None:
    expected, taken = reference(stream)
    assert taken == len(stream)
    data = stream + AFTER
    cuts = [[n] for n in range(1, len(data))] if len(data) < 200 else []
    rng = random.Random(len(stream))
    cuts += [[rng.randrange(1, len(data)) for _ in range(rng.randrange(1, 12))] for _ in range(40)]
    for points in [[], *cuts]:
        outcome, message, left = run_read(cut(data, points))
        assert (outcome, message, left) == (Outcome.NOMINAL, expected, AFTER), points


def test_a_block_boundary_inside_the_end_marker_and_a_stuffed_dot_split_off() -> None:
    stream = b"one\r\n..stuffed\r\n.\r\n" + AFTER
    at_marker = stream.index(END)
    for points in ([at_marker + k] for k in range(1, 5)):
        assert run_read(cut(stream, points))[:2] == (Outcome.NOMINAL, b"one\r\n.stuffed\r\n")
    stuffed = stream.index(b"..")
    for points in ([stuffed - 1], [stuffed], [stuffed + 1], [stuffed - 1, stuffed + 1]):
        assert run_read(cut(stream, points))[:2] == (Outcome.NOMINAL, b"one\r\n.stuffed\r\n")


def test_over_the_size_limit_is_refused_after_its_end_without_holding_it() -> None:
    body = (b"z" * 98 + b"\r\n") * 50  # 5,000 bytes
    outcome, message, left = run_read(cut(body + b".\r\n" + AFTER, [1000, 3000]), limit=4999)
    assert (outcome, message, left) == (Outcome.TOO_MUCH, b"", AFTER)
    assert run_read([body + b".\r\n"], limit=5000)[:2] == (Outcome.NOMINAL, body)


def test_the_size_limit_holds_the_memory_too() -> None:
    """A refused message is dropped as it comes: the reader holds at most one block of it."""
    from relayd.submission import smtpdata

    message = smtpdata._Message(limit=1000, line_limit=LINE_LIMIT)
    for _ in range(100):
        message.add(b"q" * 98 + b"\r\n")
    assert message.outcome is Outcome.TOO_MUCH and len(message.content) == 0


def test_a_line_over_the_limit_is_refused_as_aiosmtpd_does() -> None:
    too_long = b"x" * 1000 + b"\r\n.\r\n"
    for points in ([], [500], [1000], [1001]):
        assert run_read(cut(too_long + AFTER, points))[::2] == (Outcome.TOO_LONG, AFTER)
    # a CRLF split across blocks ends the line there
    ok = b"x" * 999 + b"\r\n" + b"y" * 999 + b"\r\n.\r\n"
    assert run_read(cut(ok, [1000, 1001]))[0] is Outcome.NOMINAL


def test_the_end_of_input_before_the_end_marker_raises() -> None:
    for pieces in ([b""], [b"partial line"], [b"line\r\n.\r"]):
        with pytest.raises(asyncio.IncompleteReadError):
            run_read(pieces, eof=True)


# Over IN_MEMORY: lines with dots to unstuff, one of them across the point where it spools.
BIG_BODY = b"".join(b"..%06d dotted line of the big message\r\n" % n for n in range(60_000))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_big_message_waits_in_a_file_byte_for_byte() -> None:
    stream = BIG_BODY + b".\r\n"
    expected, _ = reference(stream)
    assert len(expected) > 2 * IN_MEMORY
    rng = random.Random(3)
    spooled_at = IN_MEMORY + 1
    for points in (
        [],
        [spooled_at - 1, spooled_at, spooled_at + 1],
        rng.sample(range(1, 2**21), 30),
    ):
        outcome, message, left = run_read(cut(stream + AFTER, points))
        assert isinstance(message, Spool), "a big message is not held in memory"
        try:
            assert (outcome, b"".join(message.chunks()), left) == (Outcome.NOMINAL, expected, AFTER)
            assert (message.size, message.nul) == (len(expected), False)
        finally:
            message.close()
    small = run_read([b"small\r\n.\r\n"])[1]
    assert small == b"small\r\n"  # bytes, as before


def test_a_nul_in_a_big_message_is_noticed_and_a_cut_off_one_leaves_no_file() -> None:
    _, message, _ = run_read([BIG_BODY + b"a\0b\r\n" + b"x\r\n.\r\n"])
    assert isinstance(message, Spool) and message.nul
    message.close()
    before = _open_fds()
    with pytest.raises(asyncio.IncompleteReadError):
        run_read([BIG_BODY[: 3 * IN_MEMORY // 2]], eof=True)
    assert _open_fds() == before  # the spool file was closed (and so deleted)
    _, refused, _ = run_read([BIG_BODY + b".\r\n"], limit=IN_MEMORY + 10)
    assert refused == b""  # over the limit: nothing kept, no file


def test_plain_addresses_parse_as_aiosmtpd_parses_them() -> None:
    """The fast path of MAIL/RCPT parsing agrees with aiosmtpd's parser on random paths."""
    base = SMTP.__new__(SMTP)
    ours = RelaydSMTP.__new__(RelaydSMTP)
    base.local_part_limit = ours.local_part_limit = 0
    atoms = [*list("ab.-+_!#$%&'*/=?^`{|}~Z9"), '"', "(", ")", " ", "[", "]", "é", ":", ","]
    rests = ["", " ", "SIZE=10", "  BODY=8BITMIME SMTPUTF8", "\tX=1", " (c) X", "X ", " <"]
    rng = random.Random(7)
    fast = 0
    for _ in range(3000):
        local = "".join(rng.choice(atoms[: 24 if rng.random() < 0.8 else None]) for _ in "1234")
        domain = "".join(rng.choice("ab-.9Z" if rng.random() < 0.9 else "é[]") for _ in "123")
        arg = f"<{local}@{domain}>{rng.choice(rests)}"
        try:
            expected: object = SMTP._getaddr(base, arg)
        except AttributeError:  # the email parser's own bug on some garbage: not fast-pathed
            assert _PLAIN_PATH.fullmatch(arg) is None
            continue
        fast += _PLAIN_PATH.fullmatch(arg) is not None
        assert ours._getaddr(arg) == expected, arg
    assert fast > 300


def test_the_line_limit_by_the_whole_stream_rule_for_random_streams_and_cuts() -> None:
    """A line is too long when it has more than `limit` bytes with its CRLF (bare CRs and LFs
    are inside lines), however the stream is cut into blocks."""
    from relayd.submission import smtpdata

    rng = random.Random(14)
    for _ in range(3000):
        limit = rng.randrange(3, 12)
        body = bytes(rng.choice(b"xx\r\n.") for _ in range(rng.randrange(0, 60)))
        stream = body + b"\r\n.\r\n"
        lines = (b"\r\n" + stream).split(b"\r\n")
        expected = Outcome.TOO_LONG if max(map(len, lines)) + 2 > limit else Outcome.NOMINAL
        message = smtpdata._Message(limit=None, line_limit=limit)
        for block in cut(stream, [rng.randrange(1, len(stream)) for _ in range(rng.randrange(4))]):
            message.add(block)
        assert message.outcome is expected, (stream, limit)
