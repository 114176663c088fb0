#!/usr/bin/env python3
"""Submission latency: `relayd-sendmail` for a 10 KB message, beside its floors and its peers.

Runs its contenders in rounds in one run, so machine load falls on all of them alike, each
round in its own seeded shuffled order (never the same predecessor every time):

1. `python -c pass` with the interpreter relayd-sendmail runs on;
2. a bare durable insert: a fresh Python process that reads the message from stdin and inserts
   it as a BLOB with stdlib sqlite3 (WAL, synchronous=FULL, BEGIN IMMEDIATE, COMMIT);
3. `relayd-sendmail you@example.org < msg`, durable, into a SQLite queue in a temporary HOME;
4. Debian's `msmtp` sending the same message to Postfix's `smtp-sink` on 127.0.0.1;
5. `python -c pass` as `nobody` through `setpriv`: the floor of 6 (hostsocket.py);
6. `relayd-sendmail` as `nobody` through a root `relayd daemon`'s submit socket (SPEC §7),
   the daemon started by the benchmark and delivering to the smtp-sink; after each run the
   benchmark waits, untimed, until the daemon has delivered and is idle again;
7. Postfix's `sendmail`, which hands the message to `postdrop` (postdrop.py);
8. `relayd-sendmail` as 3, but its queue named by a relayd.toml (`RELAYD_CONFIG`, a file with
   several sections) instead of `RELAYD_DATABASE_URL`: SPEC §6 holds "with or without a
   relayd.toml".

With `--postgresql URL` (a `postgresql+psycopg://` server URL), three more: relayd-sendmail into
a fresh schema there, its floor, and the SQLAlchemy path (pgsubmit.py); SPEC §6: <= 60 ms.

After the timing it counts the fsync and fdatasync calls of single submissions under `strace -f
-c` (load does not change counts): into the queue as it is between runs (no daemon), and with a
connection held open on it as a running daemon holds one (SPEC §6: at most 2 either way).

Contenders 1-3, 5 and 6 use a non-editable install of this checkout in `benchmarks/.cache/venv`
(an editable install's import hook slows every Python start), built once and rebuilt when the
project's files change. `smtp-sink` and Postfix's sendmail come from `apt-get download
postfix`, unpacked in `benchmarks/.cache/postfix`. A contender that cannot run here (no msmtp,
no apt, not root or no setpriv for 5 and 6) is skipped with the reason.

It reports the median and p95 of each (milliseconds, wall clock around the whole process),
SPEC §6's submission targets and SPEC §7's host socket target with PASS/FAIL, and exits 0
whatever the figures. Usage: python benchmarks/submit.py [--runs N] [--json FILE]
[--postgresql URL]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import hostsocket
import pgsubmit
import postdrop
from common import (
    CACHE,
    RECIPIENT,
    RUN_TIMEOUT,
    VENV,
    SetupError,
    Skip,
    conditions,
    ensure_smtp_sink,
    ensure_venv,
    log,
    machine_facts,
    make_home,
    make_message,
    shown,
    smtp_sink,
    wait_for_exit,
)

DEFAULT_RUNS = 60
MIN_RUNS = 50  # SPEC §6 / issue 3: at least 50 runs of each contender

TARGET_MEDIAN_MS = 25.0
TARGET_RATIO = 1.3
TARGET_FSYNCS = 2
FSYNC_SAMPLES = 5  # submissions traced for each fsync figure
TOML_NAME = "relayd-sendmail, relayd.toml"
# A relayd.toml as a user might keep it: the queue, and sections the submission does not read.
RELAYD_TOML = """\
database = "sqlite:///{queue}"

[retry]
first = "1m"
max = "1h"
lifetime = "5d"

[delivery]
connections_per_account = 2
timeout = "60s"

[bounce]
mode = "sender"

[submit]
max_size = "64MiB"
"""

BARE_INSERT = """\
import sqlite3, sys
data = sys.stdin.buffer.read()
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO messages (data) VALUES (?)", (data,))
conn.execute("COMMIT")
conn.close()
"""


@dataclass
class Contender:
    """One command timed in every round."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stdin: Path | None
    cwd: Path | None = None
    samples_ms: list[float] = field(default_factory=list)
    skipped: str | None = None
    failed: str | None = None
    settle: Callable[[], None] | None = None  # untimed, after each run: let its effects pass

    @property
    def active(self) -> bool:
        return self.skipped is None and self.failed is None


# --- small helpers ---------------------------------------------------------------------------


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with `fraction` of the samples at or below."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# --- timing ----------------------------------------------------------------------------------


def run_once(contender: Contender, errors: IO[bytes]) -> float:
    """Run the command once; its wall-clock milliseconds. RuntimeError if it fails.

    Not `subprocess.run(timeout=...)`: with a timeout, Popen.wait polls with sleeps of 1, 2,
    4 ... ms, which would round every figure up. Here a pidfd (Linux) wakes us the moment the
    process exits, and a process outliving RUN_TIMEOUT is killed. stderr goes to `errors`.
    """
    errors.seek(0)
    errors.truncate()
    with contextlib.ExitStack() as stack:
        stdin: IO[bytes] | int = subprocess.DEVNULL
        if contender.stdin is not None:
            stdin = stack.enter_context(contender.stdin.open("rb"))
        start = time.perf_counter_ns()
        proc = subprocess.Popen(
            contender.argv,
            env=contender.env,
            cwd=contender.cwd,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        exited = wait_for_exit(proc, RUN_TIMEOUT)
        elapsed = time.perf_counter_ns() - start
        if not exited:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"still running after {RUN_TIMEOUT:g} s: killed")
    if proc.returncode != 0:
        errors.seek(0)
        lines = errors.read().decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return elapsed / 1e6


def measure(
    contenders: Sequence[Contender], runs: int, progress: Callable[[int], None], seed: int = 1
) -> None:
    """One untimed warm-up each, then `runs` rounds, each in its own shuffled order (seeded:
    the same orders every run). A fixed order would give each contender the same predecessor
    every time, and what a predecessor leaves behind (CPU caches, a daemon still busy) would
    fall on the same contender each round."""
    order = random.Random(seed)
    with tempfile.TemporaryFile() as errors:
        for contender in contenders:
            if not contender.active:
                continue
            try:
                run_once(contender, errors)
            except RuntimeError as exc:
                contender.failed = f"warm-up run failed: {exc}"
            if contender.settle is not None:
                contender.settle()
        for round_number in range(runs):
            for contender in order.sample(list(contenders), len(contenders)):
                if not contender.active:
                    continue
                try:
                    contender.samples_ms.append(run_once(contender, errors))
                except RuntimeError as exc:
                    contender.failed = f"run {round_number + 1} failed: {exc}"
                if contender.settle is not None:
                    contender.settle()
            progress(round_number + 1)


# --- report ----------------------------------------------------------------------------------


def summary(contender: Contender) -> dict[str, Any]:
    if contender.skipped is not None:
        return {"skipped": contender.skipped}
    if contender.failed is not None:
        return {"failed": contender.failed, "runs": len(contender.samples_ms)}
    samples = contender.samples_ms
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 0.95), 3),
        "min_ms": round(min(samples), 3),
        "runs": len(samples),
        "samples_ms": [round(s, 3) for s in samples],
    }


def report(
    contenders: Sequence[Contender],
    runs: int,
    facts: dict[str, str],
    command: str,
    fsyncs: dict[str, Any],
) -> dict[str, Any]:
    """Print the table and the targets; return everything as a JSON-ready dict."""
    print(f"command: {command}")
    for key, value in facts.items():
        print(f"{key + ':':18} {value}")
    print()
    results = {c.name: summary(c) for c in contenders}
    width = max(len(c.name) for c in contenders)
    print(f"{'contender':{width}}  {'median ms':>9}  {'p95 ms':>8}  {'runs':>4}")
    for c in contenders:
        r = results[c.name]
        if "median_ms" in r:
            print(f"{c.name:{width}}  {r['median_ms']:9.2f}  {r['p95_ms']:8.2f}  {r['runs']:4d}")
        else:
            print(
                f"{c.name:{width}}  {'skipped' if c.skipped else 'FAILED'}: {c.skipped or c.failed}"
            )
    print()
    relayd, bare = results[contenders[2].name], results[contenders[1].name]
    targets: list[dict[str, Any]] = []
    ratio = None
    if "median_ms" in relayd and "median_ms" in bare:
        ratio = relayd["median_ms"] / bare["median_ms"]
        print(f"ratio relayd-sendmail / bare durable insert (medians): {ratio:.2f}")
        targets = [
            {
                "target": f"median <= {TARGET_MEDIAN_MS:g} ms",
                "value_ms": relayd["median_ms"],
                "limit_ms": TARGET_MEDIAN_MS,
            },
            {
                "target": f"median <= {TARGET_RATIO:g} x bare durable insert of this run",
                "value_ms": relayd["median_ms"],
                "limit_ms": round(TARGET_RATIO * bare["median_ms"], 3),
            },
        ]
    print("SPEC §6 submission targets (relayd-sendmail, 10 KB message, durable):")
    if not targets:
        print("  FAIL  relayd-sendmail or the bare insert did not run: no figures")
    report_fsyncs(fsyncs)
    for t in targets[:2]:
        t["pass"] = t["value_ms"] <= t["limit_ms"]
        verdict = "PASS" if t["pass"] else "FAIL"
        print(f"  {verdict}  {t['target']}: {t['value_ms']:.2f} ms (limit {t['limit_ms']:.2f} ms)")
    toml = results.get(TOML_NAME, {})
    if "median_ms" in toml and "median_ms" in bare:
        targets += [
            {
                "target": f"with relayd.toml: median <= {TARGET_MEDIAN_MS:g} ms",
                "value_ms": toml["median_ms"],
                "limit_ms": TARGET_MEDIAN_MS,
            },
            {
                "target": f"with relayd.toml: median <= {TARGET_RATIO:g} x bare durable insert",
                "value_ms": toml["median_ms"],
                "limit_ms": round(TARGET_RATIO * bare["median_ms"], 3),
            },
        ]
    for t in targets[2:]:
        t["pass"] = t["value_ms"] <= t["limit_ms"]
        verdict = "PASS" if t["pass"] else "FAIL"
        print(f"  {verdict}  {t['target']}: {t['value_ms']:.2f} ms (limit {t['limit_ms']:.2f} ms)")
    if runs < MIN_RUNS:
        print(f"  note: {runs} runs is fewer than the {MIN_RUNS} the targets are measured over")
    print()
    host = hostsocket.report(results)
    return {
        "command": command,
        "runs": runs,
        "machine": facts,
        "results": results,
        "ratio_relayd_to_bare_insert": None if ratio is None else round(ratio, 3),
        "targets": targets,
        "host_socket": host,
        "fsyncs": fsyncs,
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/submit.py", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        help=f"timed runs of each (default {DEFAULT_RUNS})",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the non-editable venv even if current"
    )
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="also time submissions into a fresh schema on this PostgreSQL server",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 10_000:
        parser.error("--runs must be between 1 and 10000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = " ".join(
        [shown(sys.executable), shown(__file__), *(sys.argv[1:] if argv is None else argv)]
    )
    try:
        python = ensure_venv(args.rebuild)
    except SetupError as exc:
        log(f"cannot build the non-editable install: {exc}")
        return 1
    sendmail = VENV / "bin" / "relayd-sendmail"
    msmtp = shutil.which("msmtp")
    sink: Path | None = None
    sink_skip = None
    if msmtp is None:
        sink_skip = "msmtp not found (apt-get install msmtp)"
    else:
        try:
            sink = ensure_smtp_sink()
        except Skip as exc:
            sink_skip = str(exc)
    spool_existed = os.path.exists("/var/spool/relayd")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    try:
        message = work / "message.eml"
        message.write_bytes(make_message())
        bare_db = work / "bare.sqlite3"
        with contextlib.closing(sqlite3.connect(bare_db)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
            conn.commit()
        with contextlib.ExitStack() as stack:
            port = None
            if sink is not None:
                try:
                    port = stack.enter_context(smtp_sink(sink, work / "smtp-sink.log"))
                except Skip as exc:
                    sink_skip = str(exc)
            env = make_home(work, port)
            nobody, host = host_contenders(stack, python, message, port)
            contenders = [
                Contender("python -c pass", [str(python), "-c", "pass"], env, None),
                Contender(
                    "bare sqlite3 insert",
                    [str(python), "-c", BARE_INSERT, str(bare_db)],
                    env,
                    message,
                ),
                Contender("relayd-sendmail", [str(sendmail), RECIPIENT], env, message),
                Contender("msmtp -> smtp-sink", [msmtp or "msmtp", RECIPIENT], env, message),
                *nobody,
            ]
            if sink_skip is not None:
                contenders[3].skipped = sink_skip
            maildrop: Path | None = None
            try:
                argv, postfix_env, maildrop = postdrop.setup(work)
                contenders.append(Contender(postdrop.NAME, argv, postfix_env, message))
            except Skip as exc:
                contenders.append(Contender(postdrop.NAME, [], env, None, skipped=str(exc)))
            contenders.append(toml_contender(work, env, sendmail, message))
            pg_url = None
            if args.postgresql:
                pg_url = stack.enter_context(pgsubmit.schema(args.postgresql))
                for name, argv, pg_env, skip in pgsubmit.commands(
                    pg_url, python, sendmail, env, RECIPIENT
                ):
                    contenders.append(Contender(name, argv, pg_env, message, skipped=skip))
            facts = machine_facts(python, work)
            before = conditions(work)
            log(f"timing {args.runs} rounds of {sum(c.active for c in contenders)} contenders ...")
            measure(
                contenders, args.runs, lambda n: log(f"  {n}/{args.runs}") if n % 10 == 0 else None
            )
            fsyncs = count_fsyncs([str(sendmail), RECIPIENT], env, message, work / "queue.sqlite3")
            if pg_url is not None:
                facts["postgresql rows"] = f"{pgsubmit.count(pg_url)} stored by the run"
        facts["conditions"] = f"before: {before}; after: {conditions(work)}"
        stored = count_rows(work / "queue.sqlite3")
        facts["queued messages"] = (
            f"{stored} in relayd's queue after the run (1 + runs + {2 * FSYNC_SAMPLES} traced"
            " expected)"
        )
        facts["host queue"] = hostsocket.queue_fact(host, args.runs, len(contenders[5].samples_ms))
        if maildrop is not None:
            facts["postfix maildrop"] = (
                f"{postdrop.queued(maildrop)} queue files in maildrop after the run"
                f" ({len(contenders[6].samples_ms)} timed + 1 warm-up expected)"
            )
        result = report(contenders, args.runs, facts, command, fsyncs)
        if args.postgresql:
            result["targets"] += pgsubmit.report(result["results"])
        if not spool_existed and os.path.exists("/var/spool/relayd"):
            print("warning: /var/spool/relayd appeared during the run")
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            log(f"results written to {args.json}")
    except SetupError as exc:
        log(f"benchmark setup failed: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def host_contenders(
    stack: contextlib.ExitStack, python: Path, message: Path, port: int | None
) -> tuple[list[Contender], hostsocket.HostDaemon | None]:
    """Contenders 5 and 6, the host daemon started in `stack` (and stopped when it closes)."""
    floor = Contender(hostsocket.FLOOR_NAME, [], {}, None)
    sock = Contender(hostsocket.SOCKET_NAME, [], {}, message)
    try:
        host = stack.enter_context(hostsocket.host_daemon(VENV, message, port))
    except Skip as exc:
        floor.skipped = sock.skipped = str(exc)
        return [floor, sock], None
    except hostsocket.HostFailed as exc:
        sock.failed = str(exc)
        floor.skipped = "measured only beside the host socket contender"
        return [floor, sock], None
    floor.argv = [*host.prefix, str(python), "-c", "pass"]
    sock.argv = [*host.prefix, str(VENV / "bin" / "relayd-sendmail"), RECIPIENT]
    for contender in (floor, sock):
        contender.env, contender.cwd = host.user_env, host.user_home
    sock.settle = functools.partial(hostsocket.settle, host)
    hostsocket.settle(host)  # after the readiness submission
    return [floor, sock], host


def toml_contender(work: Path, env: dict[str, str], sendmail: Path, message: Path) -> Contender:
    """Contender 8: the queue named by a relayd.toml instead of the environment."""
    config = work / "relayd.toml"
    config.write_text(RELAYD_TOML.format(queue=work / "queue-toml.sqlite3"))
    toml_env = {k: v for k, v in env.items() if k != "RELAYD_DATABASE_URL"}
    toml_env["RELAYD_CONFIG"] = str(config)
    return Contender(TOML_NAME, [str(sendmail), RECIPIENT], toml_env, message)


def count_fsyncs(
    argv: list[str], env: dict[str, str], message: Path, queue: Path
) -> dict[str, Any]:
    """fsync + fdatasync calls of FSYNC_SAMPLES submissions each, under `strace -f -c`: as the
    queue is between runs, and with a connection held open on it (as a running daemon's)."""
    strace = shutil.which("strace")
    if strace is None:
        return {"skipped": "strace not found (apt-get install strace)"}
    found: dict[str, Any] = {}
    for case in ("no daemon", "a daemon's connection open"):
        counts = []
        with contextlib.ExitStack() as stack:
            if case != "no daemon":
                held = stack.enter_context(contextlib.closing(sqlite3.connect(queue)))
                held.execute("SELECT count(*) FROM messages").fetchone()
            for _ in range(FSYNC_SAMPLES):
                with message.open("rb") as stdin:
                    done = subprocess.run(
                        [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", *argv],
                        env=env,
                        stdin=stdin,
                        capture_output=True,
                        timeout=RUN_TIMEOUT * 3,
                        check=False,
                    )
                if done.returncode != 0:
                    return {"failed": done.stderr.decode("utf-8", "replace").strip()[-300:]}
                counts.append(_strace_total(done.stderr.decode("utf-8", "replace")))
        found[case] = counts
    return found


def _strace_total(summary: str) -> int:
    """The calls column of strace -c's `total` line (0 when there were none)."""
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3] if len(fields) >= 5 else fields[2])
    return 0


def report_fsyncs(fsyncs: dict[str, Any]) -> None:
    """The fsync target's lines (strace counts, not timings)."""
    if "skipped" in fsyncs or "failed" in fsyncs:
        print(f"  N/A   fsync count: {fsyncs.get('skipped') or fsyncs.get('failed')}")
        return
    for case, counts in fsyncs.items():
        verdict = "PASS" if max(counts) <= TARGET_FSYNCS else "FAIL"
        print(
            f"  {verdict}  fsync+fdatasync calls per submission, {case}: {counts}"
            f" (limit {TARGET_FSYNCS})"
        )


def count_rows(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT count(*) FROM messages").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0])


if __name__ == "__main__":
    sys.exit(main())
