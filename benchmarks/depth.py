#!/usr/bin/env python3
"""Queue depth: drain rate, daemon RSS, `relayd status` and `queue list` at 10k, 100k and 1M queued.

SPEC §6 (issue 15 point 4): the drain is flat with depth (>= 3,000 messages/s of 10 KB at every
depth), the daemon's RSS <= 80 MiB with 1,000,000 queued, `relayd status` <= 1 s and `queue
list` streams (first line < 0.5 s, the whole listing <= 12 s) at 1,000,000.

For each depth, in a fresh SQLite queue: one 10 KB message is stored through relayd's own store
(drain.py's `enqueue`), then copied with plain SQL to the depth (untimed: a million messages in
about a minute, where the store's own inserts take ten). Then, timed: `relayd status` and
`relayd queue list` (time to its first message line and to its end, output read from a pipe),
medians of --runs; then `relayd daemon` drains the queue to Postfix's smtp-sink (drain.py's
`run_daemon`), timed from READY=1, its RSS sampled throughout. Wall-clock figures on a shared
machine are noisy: compare the depths within one run. It reports; it does not gate (exit 0).
Usage: python benchmarks/depth.py [--depths N ...] [--runs N] [--json FILE] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    SetupError,
    Skip,
    command_line,
    ensure_smtp_sink,
    ensure_venv,
    log,
    machine_facts,
    make_home,
    sink_messages,
    smtp_sink,
)
from drain import Drain, daemon_env, enqueue, mb, queue_file, run_daemon

DEFAULT_DEPTHS = (10_000, 100_000, 1_000_000)
DEFAULT_RUNS = 3
LIST_TIMEOUT = 120.0  # seconds for one `queue list` of the deepest queue
TARGET_RATE = 3_000.0
TARGET_RSS_MB = 80.0
TARGET_STATUS_S = 1.0
TARGET_FIRST_LINE_S = 0.5
TARGET_LIST_S = 12.0
COPY_BATCH = 50_000
# Columns copied from the one stored message; `queue_id` is the new one, the row id is new.
COPIED = (
    "state, account, config_file, overrides, sender, size, needs_smtputf8, needs_8bitmime,"
    " created_at, next_attempt_at, attempts, submitted_uid, submitted_user, network_failure,"
    " lease_lost, delay_notified"
)


def fill(db: Path, total: int) -> None:
    """Copy the queue's one message (row id 1) until it holds `total`: envelope, recipients
    and body rows alike. Queue ids keep the first one's 6 time digits and count in the other 6
    (digits are in the id alphabet), so they are distinct and valid."""
    conn = sqlite3.connect(db)
    # Gigabytes of copies through the WAL would be written twice and fsynced: the fill is
    # untimed set-up, so it writes the file directly, then the queue goes back to WAL mode.
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    try:
        (first,) = conn.execute("SELECT queue_id FROM messages WHERE id = 1").fetchone()
        prefix = first[:6]
        for start in range(1, total, COPY_BATCH):
            stop = min(total, start + COPY_BATCH)
            with conn:
                conn.executemany(
                    f"INSERT INTO messages (queue_id, {COPIED}) SELECT ?, {COPIED}"
                    " FROM messages WHERE id = 1",
                    ((f"{prefix}{n:06d}",) for n in range(start, stop)),
                )
        with conn:
            for table, columns in (
                ("recipients", "position, address, state, reply_code, reply_text"),
                ("bodies", "seq, data"),
            ):
                copied = ", ".join(f"t.{name.strip()}" for name in columns.split(","))
                conn.execute(
                    f"INSERT INTO {table} (message_id, {columns}) SELECT m.id, {copied}"
                    f" FROM messages AS m, {table} AS t WHERE t.message_id = 1 AND m.id > 1"
                )
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def time_status(relayd: Path, env: dict[str, str]) -> float:
    """Seconds from spawn to exit of `relayd status`."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(relayd), "status"], env=env, cwd=env["HOME"], capture_output=True, timeout=60
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SetupError(f"relayd status exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed


def time_list(relayd: Path, env: dict[str, str], depth: int) -> tuple[float, float, int]:
    """`relayd queue list` to a pipe: seconds to its first message line and to its end, and
    the lines it printed."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(relayd), "queue", "list"],
        env=env,
        cwd=env["HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the headings
    proc.stdout.readline()  # the first message
    first = time.perf_counter() - start
    lines = 2
    deadline = start + LIST_TIMEOUT
    for _ in proc.stdout:
        lines += 1
        if lines % 100_000 == 0 and time.perf_counter() > deadline:
            proc.kill()
            break
    proc.wait()
    whole = time.perf_counter() - start
    if proc.returncode != 0:
        raise SetupError(f"relayd queue list exited {proc.returncode} at depth {depth}")
    return first, whole, lines


def one_depth(python: Path, sink: Path, work: Path, depth: int, runs: int) -> dict[str, Any]:
    """Fill a queue to `depth`, time status and list on it, then drain it; the figures."""
    work.mkdir()
    relayd = python.parent / "relayd"
    result: dict[str, Any] = {"depth": depth}
    counts = work / "smtp-sink.counts"
    with smtp_sink(sink, work / "smtp-sink.log", counts) as port:
        env = daemon_env(make_home(work, port))
        log(f"depth {depth:,}: filling the queue (untimed) ...")
        started = time.perf_counter()
        enqueue(python, env, work, 1)
        fill(queue_file(env), depth)
        result["fill_s"] = round(time.perf_counter() - started, 1)
        log(f"depth {depth:,}: relayd status and queue list, {runs} runs ...")
        status = [time_status(relayd, env) for _ in range(runs)]
        listed = [time_list(relayd, env, depth) for _ in range(runs)]
        result["status_s"] = round(statistics.median(status), 3)
        result["list_first_line_s"] = round(statistics.median(x[0] for x in listed), 3)
        result["list_whole_s"] = round(statistics.median(x[1] for x in listed), 3)
        result["list_lines"] = listed[0][2]
        log(f"depth {depth:,}: relayd daemon draining ...")
        drained = Drain(messages=depth)
        run_daemon(relayd, env, work, drained)
    drained.sink_messages = sink_messages(counts)
    if drained.failure is not None:  # the work directory goes: keep the daemon's log
        kept = CACHE / f"depth-{depth}-daemon.log"
        shutil.copyfile(work / "daemon.log", kept)
        log(f"depth {depth:,}: the drain failed; the daemon's log is kept in {kept}")
    summary = drained.summary()
    summary.pop("series", None)
    result["drain"] = summary
    return result


def report(results: Sequence[dict[str, Any]]) -> None:
    print(
        "queue depth: drain rate and daemon CPU s per 10,000 (from READY=1), daemon peak RSS,"
        " status, queue list"
    )
    print(
        f"  {'depth':>9} {'rate/s':>8} {'CPU/10k':>8} {'VmHWM':>9} {'status s':>9}"
        f" {'list 1st s':>10} {'list all s':>10} {'fill s':>7}"
    )
    for r in results:
        drain = r["drain"]
        rate, cpu = drain.get("rate_after_ready"), drain.get("cpu_per_10k")
        print(
            f"  {r['depth']:>9,} {'FAILED' if rate is None else f'{rate:,.0f}':>8}"
            f" {'?' if cpu is None else f'{cpu:.2f}':>8}"
            f" {mb(drain.get('hwm_kb')):>9} {r['status_s']:>9.3f}"
            f" {r['list_first_line_s']:>10.3f} {r['list_whole_s']:>10.2f} {r['fill_s']:>7.1f}"
        )
        if drain.get("failure"):
            print(f"    drain failed: {drain['failure']}")
    deepest = max(results, key=lambda r: r["depth"])
    drain = deepest["drain"]
    hwm = drain.get("hwm_kb")
    checks = [
        (
            f"drain >= {TARGET_RATE:,.0f}/s at every depth",
            all((r["drain"].get("rate_after_ready") or 0) >= TARGET_RATE for r in results),
        ),
        (
            f"daemon RSS <= {TARGET_RSS_MB:g} MiB at {deepest['depth']:,}",
            hwm is not None and hwm / 1024 <= TARGET_RSS_MB,
        ),
        (f"status <= {TARGET_STATUS_S:g} s", deepest["status_s"] <= TARGET_STATUS_S),
        (
            f"queue list first line < {TARGET_FIRST_LINE_S:g} s",
            deepest["list_first_line_s"] < TARGET_FIRST_LINE_S,
        ),
        (f"queue list whole <= {TARGET_LIST_S:g} s", deepest["list_whole_s"] <= TARGET_LIST_S),
    ]
    print(f"SPEC §6 at {deepest['depth']:,} queued (wall clock: noisy on a shared machine):")
    for name, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/depth.py")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS))
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the benchmark venv")
    args = parser.parse_args(argv)
    if not all(2 <= d <= 1_000_000 for d in args.depths) or not 1 <= args.runs <= 20:
        parser.error("--depths must be 2..1000000 and --runs 1..20")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(given)
    try:
        python, sink = ensure_venv(args.rebuild), ensure_smtp_sink()
    except (SetupError, Skip) as exc:
        log(f"cannot run: {exc}")
        return 1
    command = command_line(__file__, given)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    facts: dict[str, str] = {}
    for depth in args.depths:
        work = Path(tempfile.mkdtemp(prefix="depth-", dir=CACHE))
        try:
            facts = facts or machine_facts(python, work)
            results.append(one_depth(python, sink, work / "run", depth, args.runs))
        except SetupError as exc:
            log(f"depth {depth:,}: {exc}")
            return 1
        finally:
            shutil.rmtree(work, ignore_errors=True)  # a million 10 KB bodies: ~11 GB
    report(results)
    for key, value in facts.items():
        print(f"  {key}: {value}")
    print(f"  command: {command}")
    if args.json:
        out = {"command": command, "machine": facts, "depths": results}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
