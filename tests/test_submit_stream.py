"""Bodies stream into the queue: byte-exact at any chunk boundary, bounded memory, or not at all."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.errors import DataError, RelaydError
from relayd.store import BODY_CHUNK
from relayd.store.fastpath import BodyRows
from relayd.store.records import NewMessage
from relayd.submission.message import build_message, scan_headers, wire_chunks
from relayd.submission.submit import Input
from relayd.sysexits import ExitCode
from tests.sendmail_helpers import (
    SENDMAIL,
    assert_nothing_stored,
    check_consistent,
    error_line,
    queue_db,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)

OPTIONS: dict[str, Any] = {
    "envelope_from": "me@example.org",
    "full_name": None,
    "set_from_header": "auto",
    "set_date_header": "auto",
    "set_msgid_header": "off",
    "remove_bcc_headers": True,
    "undisclosed_recipients": False,
    "now": 1_795_192_499.0,
    "hostname": "host.example",
}


class Reads:
    """A read function (like os.read) giving `pieces` one per call, whatever size is asked
    (never more than asked: a longer piece is handed out over several calls)."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = [piece for piece in pieces if piece]

    def __call__(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            self.pieces.insert(0, piece[size:])
            piece = piece[:size]
        return piece


def streamed(pieces: Sequence[bytes], limit: int = 1 << 30) -> tuple[bytes, list[bytes]]:
    """What the store writes for input read as `pieces`: the body and its rows' chunks."""
    source = Input(Reads(pieces), limit)
    head = source.head()
    scan = scan_headers(head, read_recipients=True)
    body = wire_chunks(head, source.rest(), scan, **OPTIONS)
    new = NewMessage("", (), "me@example.org", ("you@example.org",), body=body)
    rows = BodyRows(1, new)
    chunks = [chunk for _, _, chunk in rows]
    joined = b"".join(chunks)
    assert rows.size == len(joined)
    assert rows.eightbit == (not joined.isascii())
    return joined, chunks


def whole(raw: bytes) -> bytes:
    return bytes(build_message(raw, scan_headers(raw, read_recipients=True), **OPTIONS))


def check_every_split(raw: bytes) -> None:
    """Streamed as two reads split at every offset, or in reads of 1..3 bytes: the same bytes
    as the whole message built at once, in rows of at most BODY_CHUNK bytes."""
    expected = whole(raw)
    cuts: list[list[bytes]] = [[raw[:at], raw[at:]] for at in range(len(raw) + 1)]
    cuts += [[raw[at : at + n] for at in range(0, len(raw), n)] for n in (1, 2, 3)]
    for pieces in cuts:
        joined, chunks = streamed(pieces)
        assert joined == expected, pieces
        assert all(len(chunk) <= BODY_CHUNK for chunk in chunks)


def test_crlf_split_across_two_reads() -> None:
    check_every_split(b"Subject: x\r\n\r\nline one\r\nline two\r\n")


def test_lone_cr_at_a_boundary() -> None:
    check_every_split(b"Subject: x\n\nA\rB\n\r\r\nC\r")
    check_every_split(b"Subject: x\r\n\r\r\n\r")


def test_empty_body_and_empty_input() -> None:
    check_every_split(b"Subject: x\n\n")
    check_every_split(b"Subject: x\n")
    check_every_split(b"")
    joined, chunks = streamed([])
    assert chunks == [joined]  # one (possibly empty) row, as for a body given whole


def test_header_section_bigger_than_one_chunk() -> None:
    header = b"".join(b"X-Filler-%06d: %s\n" % (n, b"h" * 70) for n in range(2000))
    assert len(header) > 2 * BODY_CHUNK
    raw = b"To: a@example.org\n" + header + b"Bcc: hidden@example.org\n\nbody\n"
    pieces = [raw[at : at + BODY_CHUNK] for at in range(0, len(raw), BODY_CHUNK)]
    joined, _ = streamed(pieces)
    assert joined == whole(raw)
    assert b"hidden" not in joined  # the Bcc: far past the first chunk was still found


def test_message_exactly_one_chunk_long() -> None:
    prefix = b"Subject: x\r\n\r\n"
    raw = prefix + b"a" * (BODY_CHUNK - len(prefix) - 2) + b"\r\n"
    assert len(raw) == BODY_CHUNK
    options = {**OPTIONS, "set_from_header": "off", "set_date_header": "off"}
    source = Input(Reads([raw]), 1 << 30)
    head = source.head()
    body = wire_chunks(head, source.rest(), scan_headers(head, read_recipients=False), **options)
    chunks = [c for _, _, c in BodyRows(1, NewMessage("", (), "", ("a@b",), body=body))]
    assert chunks == [raw]  # one row: no empty row after a body of exactly BODY_CHUNK bytes
    _, chunks = streamed([raw + b"b"])
    assert [len(c) for c in chunks][:-1] == [BODY_CHUNK] * (len(chunks) - 1)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=200).map(lambda b: b.replace(b"\0", b"")),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_any_cuts_give_the_bytes_of_the_whole(raw: bytes, cuts: list[int]) -> None:
    raw = raw.replace(b"a", b"\r").replace(b"b", b"\n")  # plenty of line ends
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert streamed(pieces)[0] == whole(raw)


def test_nul_late_in_the_body_refused_while_streaming() -> None:
    pieces = [b"Subject: x\n\n", b"ok\n" * 50_000, b"bad\0\n"]
    with pytest.raises(DataError) as caught:
        streamed(pieces)
    assert "BINARYMIME" in caught.value.message


def test_over_the_limit_refused_as_read() -> None:
    with pytest.raises(RelaydError) as caught:
        streamed([b"Subject: x\n\n", b"y" * 100], limit=50)
    assert caught.value.exit_code == ExitCode.DATAERR
    assert caught.value.message == "message too big: more than 50 bytes ([submit] max_size)"


# -- through relayd-sendmail, a real process -----------------------------------------------------

LINE = b"0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz\n"
HEADERS = (
    b"From: me@example.org\nTo: you@example.org\nDate: Fri, 20 Nov 2026 16:34:59 +0000\n"
    b"Message-ID: <big@example.org>\nSubject: big\n\n"
)


def big_message(size: int) -> bytes:
    return HEADERS + LINE * (size // len(LINE))


_PEAK = (
    "import resource, subprocess, sys\n"
    "with open(sys.argv[1], 'rb') as stdin:\n"
    "    code = subprocess.run(sys.argv[2:], stdin=stdin, capture_output=True).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_kib(message: Path) -> int:
    """relayd-sendmail's peak RSS (KiB) submitting `message`, from a fresh parent (so the
    children's maximum is this one child's)."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, str(message), SENDMAIL, "-odq", "you@example.org"],
        env=sendmail_env(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    code, peak = result.stdout.split()
    assert int(code) == 0, result
    return int(peak)


def test_twenty_megabytes_submitted_in_bounded_memory(tmp_path: Path) -> None:
    """SPEC §6: the body streams; a 20 MB message costs what a 10 KB one does, plus little.

    Holding the message once would add 20 MiB; the streaming path holds a few 64 KiB pieces
    and SQLite's page cache (at most 2 MiB by default), so growth stays under 8 MiB."""
    write_msmtprc()
    small, big = tmp_path / "small.eml", tmp_path / "big.eml"
    small.write_bytes(big_message(10_000))
    big.write_bytes(big_message(20_000_000))
    assert run_sendmail(["-odq", "you@example.org"], small.read_bytes()).returncode == 0  # schema
    baseline = min(peak_kib(small) for _ in range(2))
    growth = peak_kib(big) - baseline
    assert growth < 8 * 1024, f"peak RSS grew by {growth} KiB for a 20 MB message"
    stored = stored_messages()[-1]
    raw = big.read_bytes()
    assert stored.data == raw.replace(b"\n", b"\r\n")  # byte-exact: CRLF, nothing added
    assert stored.size == len(stored.data)
    check_consistent()
    conn = sqlite3.connect(queue_db())
    try:
        (rows, longest) = conn.execute(
            "SELECT count(*), max(length(data)) FROM bodies JOIN messages ON id = message_id"
            " WHERE queue_id = ?",
            (stored.queue_id,),
        ).fetchone()
    finally:
        conn.close()
    assert longest == BODY_CHUNK and rows == -(-stored.size // BODY_CHUNK)


def write_settings(text: str) -> None:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_over_max_size_mid_stream_stores_nothing() -> None:
    """Past `[submit] max_size` after body rows were written: 65, one line, rolled back."""
    write_msmtprc()
    write_settings('[submit]\nmax_size = "300KiB"\n')
    result = run_sendmail(["-odq", "you@example.org"], big_message(1_000_000))
    assert result.returncode == ExitCode.DATAERR
    assert error_line(result) == (
        f"relayd-sendmail: message too big: more than {300 * 1024} bytes ([submit] max_size)"
    )
    assert_nothing_stored()
    assert run_sendmail(["-odq", "you@example.org"], big_message(200_000)).returncode == 0
    check_consistent()


def test_nul_mid_stream_stores_nothing() -> None:
    write_msmtprc()
    result = run_sendmail(["-odq", "you@example.org"], big_message(500_000) + b"x\0y\n")
    assert result.returncode == ExitCode.DATAERR
    assert "NUL" in error_line(result)
    assert_nothing_stored()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=10)
        accepted, _ = server.accept()
    client.settimeout(None)  # blocking: relayd-sendmail shares the file description
    return client, accepted


def _unread(sock: socket.socket) -> int:
    import fcntl
    import termios

    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, sys.byteorder)


def _wait_until_read(sock: socket.socket, deadline: float) -> None:
    while _unread(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _unread(sock) == 0, "relayd-sendmail did not read its input"


def test_stdin_error_mid_stream_stores_nothing() -> None:
    """Standard input is a TCP connection reset after 400 KB were read (ECONNRESET on the
    next read): 74, one line, nothing stored."""
    write_msmtprc()
    ours, theirs = _tcp_pair()
    with ours, theirs:
        proc = subprocess.Popen(
            [SENDMAIL, "-odq", "you@example.org"],
            stdin=ours.fileno(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sendmail_env(),
            cwd=os.environ["HOME"],
        )
        try:
            theirs.sendall(big_message(400_000))
            _wait_until_read(ours, time.monotonic() + 30)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            theirs.close()  # with linger 0: a reset
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == ExitCode.IOERR
    assert error_line(result) == (
        "relayd-sendmail: cannot read the mail from standard input: Connection reset by peer"
    )
    assert_nothing_stored()
