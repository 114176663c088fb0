"""Big mail in (SPEC §6, issue 15): peak RSS of submitting 50 MB, beside msmtp and a floor.

Parts (``--part``, all by default): ``submit`` — ``relayd-sendmail -odq`` storing the message
into a SQLite queue, msmtp sending it to smtp-sink, and the stdlib floor (a fresh Python
streaming stdin into a SQLite table of 64 KiB chunks in one transaction). Each contender runs
``--runs`` times (3 by default) in a fresh parent that reports its child's peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``); the median is printed with the wall-clock time,
which is noisy on a shared machine. Delivering and showing it: bigmail.py.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    CACHE,
    RECIPIENT,
    SENDER,
    VENV,
    SetupError,
    Skip,
    ensure_smtp_sink,
    ensure_venv,
    log,
    make_home,
    shown,
    smtp_sink,
)

BIG_SIZE = 50 * 1000 * 1000
RUN_TIMEOUT = 300.0

# A fresh parent: runs argv with stdin from a file, prints "exit peak_KiB seconds".
PEAK = (
    "import resource, subprocess, sys, time\n"
    "with open(sys.argv[1], 'rb') as stdin:\n"
    "    start = time.monotonic()\n"
    "    code = subprocess.run(sys.argv[2:], stdin=stdin, stdout=subprocess.DEVNULL).returncode\n"
    "    took = time.monotonic() - start\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, took)\n"
)

# The floor: stdin streamed into 64 KiB rows of a SQLite table, one durable transaction.
FLOOR = (
    "import os, sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('PRAGMA synchronous=FULL')\n"
    "conn.execute('BEGIN IMMEDIATE')\n"
    "seq = 0\n"
    "while block := os.read(0, 65536):\n"
    "    conn.execute('INSERT INTO bodies VALUES (?, ?)', (seq, block))\n"
    "    seq += 1\n"
    "conn.execute('COMMIT')\n"
)


def big_message(path: Path) -> None:
    """From/To/Subject and BIG_SIZE bytes of 80-character lines (LF line ends)."""
    line = b"".ljust(79, b"x") + b"\n"
    with path.open("wb") as out:
        out.write(f"From: {SENDER}\nTo: {RECIPIENT}\nSubject: big\n\n".encode())
        for _ in range(BIG_SIZE // len(line) // 1000):
            out.write(line * 1000)


def peak(argv: Sequence[str], stdin: Path, env: dict[str, str]) -> tuple[int, float]:
    """(peak RSS in KiB, seconds) of one run of `argv`; SetupError if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(stdin), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or fields[0] != "0":
        raise SetupError(f"{argv[0]} failed: {done.stdout.strip()} {done.stderr.strip()[-300:]}")
    return int(fields[1]), float(fields[2])


def row(name: str, runs: list[tuple[int, float]] | str) -> str:
    if isinstance(runs, str):
        return f"{name:<34} skipped: {runs}"
    kib = statistics.median(r[0] for r in runs)
    took = statistics.median(r[1] for r in runs)
    return f"{name:<34} peak RSS {kib / 1024:7.1f} MiB   {took:6.2f} s (under load)"


def submit_part(work: Path, runs: int) -> list[str]:
    """relayd-sendmail, msmtp -> smtp-sink and the stdlib floor with the 50 MB message."""
    message = work / "big.eml"
    big_message(message)
    floor_db = work / "floor.sqlite3"
    with contextlib.closing(sqlite3.connect(floor_db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE bodies (seq INTEGER, data BLOB)")
        conn.commit()
    lines = [f"submit: a {message.stat().st_size:,}-byte message, medians of {runs}"]
    with contextlib.ExitStack() as stack:
        port: int | None = None
        sink_skip = None
        msmtp = shutil.which("msmtp")
        if msmtp is None:
            sink_skip = "msmtp not found (apt-get install msmtp)"
        else:
            try:
                port = stack.enter_context(smtp_sink(ensure_smtp_sink(), work / "sink.log"))
            except Skip as exc:
                sink_skip = str(exc)
        env = make_home(work, port)
        sendmail = str(VENV / "bin" / "relayd-sendmail")
        peak([sendmail, "-odq", RECIPIENT], message, env)  # warm-up: creates the queue
        contenders: list[tuple[str, Callable[[], tuple[int, float]]]] = [
            ("relayd-sendmail -odq", lambda: peak([sendmail, "-odq", RECIPIENT], message, env)),
            ("stdlib floor (64 KiB rows)", lambda: peak(floor_argv(floor_db), message, env)),
        ]
        if sink_skip is None and msmtp is not None:
            contenders.append(
                ("msmtp -> smtp-sink", lambda: peak([msmtp, RECIPIENT], message, env))
            )
        else:
            lines.append(row("msmtp -> smtp-sink", sink_skip or "?"))
        results: dict[str, list[tuple[int, float]]] = {name: [] for name, _ in contenders}
        for _ in range(runs):  # round-robin: a busy moment falls on all alike
            for name, run in contenders:
                results[name].append(run())
        lines[1:1] = [row(name, results[name]) for name, _ in contenders]
    return lines


def floor_argv(db: Path) -> list[str]:
    return [str(VENV / "bin" / "python"), "-c", FLOOR, str(db)]


# `stream-out` adds "deliver" and "show" here.
PARTS: dict[str, Callable[[Path, int], list[str]]] = {"submit": submit_part}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=sorted(PARTS), action="append")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the benchmark venv")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print("command:", shown(sys.executable), shown(__file__), *(argv or sys.argv[1:]))
    try:
        ensure_venv(args.rebuild)
    except SetupError as exc:
        log(f"cannot build the non-editable install: {exc}")
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    for part in args.part or list(PARTS):
        work = Path(tempfile.mkdtemp(prefix=f"big-{part}-", dir=CACHE))
        try:
            start = time.monotonic()
            for line in PARTS[part](work, args.runs):
                print(line, flush=True)
            log(f"{part}: {time.monotonic() - start:.0f} s")
        except SetupError as exc:
            print(f"{part}: failed: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
