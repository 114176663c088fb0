#!/usr/bin/env python3
"""Listing a big queue: `relayd queue list` of 100,000 messages, against the Python floor.

In one run: N 10 KB messages are put in a fresh SQLite queue (untimed), half of them marked as
deferred with a reason and one in ten held, as a queue looks after an offline stretch. Then,
round-robin, each contender is timed as a whole process with its output going to a pipe that
is read and counted:

* `relayd queue list` (Postfix's `postqueue -p` layout), `relayd queue list --json`, and
  `relayd-sendmail -bp` (mailq), all from a non-editable install in benchmarks/.cache;
* the Python floor: a fresh interpreter that reads the same columns with plain sqlite3 and
  prints one line a message (no recipients, no layout): what any Python listing pays at least.

SPEC §6: `queue list` of 100,000 messages in <= 2 s. It reports; it does not gate (exit 0).
Usage: python benchmarks/queue_list.py [--messages N] [--runs N] [--json FILE] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
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
    RUN_TIMEOUT,
    SetupError,
    ensure_venv,
    log,
    machine_facts,
    make_home,
    shown,
)
from drain import enqueue

DEFAULT_MESSAGES = 100_000
DEFAULT_RUNS = 5
TARGET_SECONDS = 2.0
REASON = "cannot connect to mx.example.org, port 25: Connection refused"
FLOOR = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
out = sys.stdout
for row in conn.execute(
    "SELECT queue_id, size, created_at, sender, reason FROM messages ORDER BY id"
):
    out.write("%s %d %f %s %s\\n" % row)
"""


def mark(db: Path, now: float) -> None:
    """Half the messages deferred once with a reason, one in ten held: a real-looking queue."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE messages SET attempts = 1, reason = ?, last_attempt_at = ?, "
            "next_attempt_at = ?, network_failure = 1 WHERE id % 2 = 0",
            (REASON, now, now + 3600),
        )
        conn.execute(
            "UPDATE messages SET state = 'held', reason = 'held by the user' WHERE id % 10 = 1"
        )
    conn.close()


def run_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds from spawn to exit with stdout read through a pipe; the bytes it printed."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=RUN_TIMEOUT * 6, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SetupError(f"{argv[-1]} exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed, len(done.stdout)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/queue_list.py")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the benchmark venv")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 1_000_000 or not 1 <= args.runs <= 100:
        parser.error("--messages must be 1..1000000 and --runs 1..100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([shown(sys.executable), shown(__file__), *given])
    try:
        python = ensure_venv(args.rebuild)
    except SetupError as exc:
        log(f"cannot build the non-editable install: {exc}")
        return 1
    bin_dir = python.parent
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="list-", dir=CACHE) as tmp:
        work = Path(tmp)
        env = make_home(work, None)
        db = work / "queue.sqlite3"
        log(f"enqueueing {args.messages:,} messages (untimed) ...")
        enqueue(python, env, work, args.messages)
        mark(db, time.time())
        contenders = {
            "relayd queue list": [str(bin_dir / "relayd"), "queue", "list"],
            "relayd queue list --json": [str(bin_dir / "relayd"), "queue", "list", "--json"],
            "relayd-sendmail -bp (mailq)": [str(bin_dir / "relayd-sendmail"), "-bp"],
            "Python floor (sqlite3, one line a message)": [str(python), "-c", FLOOR, str(db)],
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        output: dict[str, int] = {}
        try:
            for run in range(args.runs):
                log(f"round {run + 1} of {args.runs} ...")
                for name, argv_ in contenders.items():
                    seconds, size = run_once(argv_, env)
                    samples[name].append(seconds)
                    output[name] = size
        except SetupError as exc:
            log(str(exc))
            return 1
        facts = machine_facts(python, work)
    results: dict[str, Any] = {
        "command": command,
        "messages": args.messages,
        "runs": args.runs,
        "machine": facts,
        "contenders": {
            name: {
                "median_s": statistics.median(values),
                "min_s": min(values),
                "max_s": max(values),
                "output_bytes": output[name],
            }
            for name, values in samples.items()
        },
    }
    print(f"queue listing, {args.messages:,} messages ({args.runs} runs each, medians)")
    print(f"  {'contender':<46} {'median s':>9} {'min s':>7} {'max s':>7} {'output MB':>10}")
    for name, figures in results["contenders"].items():
        print(
            f"  {name:<46} {figures['median_s']:>9.2f} {figures['min_s']:>7.2f} "
            f"{figures['max_s']:>7.2f} {figures['output_bytes'] / 1e6:>10.1f}"
        )
    listed = results["contenders"]["relayd queue list"]["median_s"]
    verdict = "PASS" if listed <= TARGET_SECONDS else "FAIL"
    print(f"  SPEC §6: queue list of {args.messages:,} in <= {TARGET_SECONDS:g} s: {verdict}")
    for key, value in facts.items():
        print(f"  {key}: {value}")
    print(f"  command: {command}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
