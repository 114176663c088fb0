#!/usr/bin/env python3
"""SMTP listener ingest: Postfix's `smtp-source` into `relayd daemon`'s `[listen]` listener.

Each run starts `relayd daemon` on a fresh SQLite queue with `[listen] address` on a free port
of 127.0.0.1, waits until the port accepts and a warm-up message is queued, then times
`smtp-source -s 8 -m 5000 -l 10240 -d` (8 parallel sessions, each sending many messages) by
wall clock, counts the new rows of the queue, and samples the daemon's RSS every 0.2 s. The
daemon's `~/.msmtprc` points at a port of 127.0.0.1 where nothing listens: its delivery runs
alongside (each attempt is refused and the account's due mail deferred), nothing is sent.

When it can run here, Postfix's own `smtpd` -> `cleanup` ingest (a private instance, no qmgr,
so the messages stay in `incoming`) takes the same `smtp-source` load in the same run. Medians
of --runs runs; SPEC's target with PASS/FAIL; exits 0 whatever the figures. Usage:
python benchmarks/listen.py [--runs N] [--messages N] [--no-postfix] [--json FILE] [--rebuild]
[--profile FILE] (py-spy samples the daemon during the first run, which is then slower; its
summary is printed at the end, the collapsed stacks are in FILE).

Why this module is long: it runs, checks and reports two contenders under the same load
(relayd's listener with its RSS and CPU, and Postfix's smtpd, whose instance is drain.py's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyspy
from common import (
    CACHE,
    MESSAGE_SIZE,
    POSTFIX_DIR,
    RECIPIENT,
    SENDER,
    SetupError,
    Skip,
    accepting,
    conditions,
    ensure_smtp_sink,
    ensure_venv,
    free_port,
    log,
    machine_facts,
    make_home,
    make_message,
    shown,
)
from drain import (
    POSTFIX_ROOT,
    PostfixError,
    PostfixInstance,
    daemon_env,
    let_search,
    print_facts,
    proc_status_kb,
    queue_file,
    queue_files,
    stop_daemon,
)

SMTP_SOURCE = POSTFIX_DIR / "root" / "usr" / "sbin" / "smtp-source"
SESSIONS = 8
MAX_SESSIONS = 32  # [listen] max_sessions: the 8 sessions, the warm-up and room to spare
RSS_INTERVAL = 0.2  # seconds between samples of the daemon's VmRSS
READY_TIMEOUT = 60.0  # seconds from spawning the daemon (or master) until its port accepts
MIN_RATE = 20.0  # messages/s: below it smtp-source is stopped
AFTER_PAUSE = 1.0  # seconds after smtp-source exits before the "after" RSS sample
TARGET_RATE = 1_500.0
HELO = "relayd-benchmark.localdomain"
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def source_argv(port: int, messages: int) -> list[str]:
    """The timed command: 8 sessions, each sending message after message (-d) on its connection;
    -N numbers the recipients; without -A any reply other than the expected one aborts it."""
    return [
        *(str(SMTP_SOURCE), "-4", "-c", "-d", "-N", "-s", str(SESSIONS), "-m", str(messages)),
        *("-l", str(MESSAGE_SIZE), "-M", HELO, "-f", SENDER, "-t", RECIPIENT),
        *("-S", "relayd listener benchmark", f"127.0.0.1:{port}"),
    ]


def run_source(port: int, messages: int, work: Path) -> tuple[float, int | None, str | None]:
    """Run smtp-source once: (wall-clock seconds, DATA commands completed, failure or None)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(POSTFIX_ROOT / "usr" / "lib" / "postfix"))
    out_path = work / "smtp-source.out"
    with out_path.open("wb") as out:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                source_argv(port, messages),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=READY_TIMEOUT + messages / MIN_RATE,
                check=False,
            )
            failure = None if done.returncode == 0 else f"smtp-source exited {done.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"smtp-source still running after {READY_TIMEOUT + messages / MIN_RATE:g} s"
        seconds = time.perf_counter() - start
    text = out_path.read_bytes().decode("utf-8", "replace")
    counters = re.findall(r"(\d+)\s*$", text.replace("\r", "\n"), re.MULTILINE)
    if failure is not None:
        failure += ": " + " / ".join(text.replace("\r", "\n").strip().splitlines()[-2:])
    return seconds, int(counters[-1]) if counters else None, failure


def wait_accepting(port: int, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not accepting(port):
        if not alive():
            raise SetupError(f"{what} exited before listening on 127.0.0.1:{port}")
        if time.monotonic() > deadline:
            raise SetupError(f"{what} did not listen on 127.0.0.1:{port} in {READY_TIMEOUT:g} s")
        time.sleep(0.05)


def warm_up(port: int) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=READY_TIMEOUT) as client:
            # smtplib sends bytes as they are: SMTP wants CRLF line ends.
            client.sendmail(SENDER, [RECIPIENT], make_message().replace(b"\n", b"\r\n"))
    except (OSError, smtplib.SMTPException) as exc:
        raise SetupError(f"the warm-up message over 127.0.0.1:{port} failed: {exc}") from None


def queue_rows(path: Path) -> tuple[int, dict[str, int], int]:
    """(messages, messages by state, attempts) in the queue file, read-only stdlib sqlite3."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        states = dict(
            conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()
        )
        attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
    finally:
        conn.close()
    return sum(states.values()), {str(k): int(v) for k, v in states.items()}, int(attempts)


def family(pid: int) -> list[int]:
    """`pid` and its children (the daemon and its `[listen] workers`), from /proc."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return [pid, *children]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and its children so far (/proc/PID/stat), None once
    the daemon is gone."""
    total = 0.0
    for one in family(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            if one == pid:
                return None
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pid: int, key: str = "VmRSS") -> int | None:
    """The sum of `key` (VmRSS, VmHWM) over the daemon and its workers; None once it is gone."""
    values = [proc_status_kb(one, key) for one in family(pid)]
    return None if values[0] is None else sum(v for v in values if v is not None)


class RssSampler(threading.Thread):
    """VmRSS of `pid` every RSS_INTERVAL until stopped; the largest sample seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.samples = pid, 0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            rss = rss_kb(self.pid)
            if rss is not None:
                self.peak_kb, self.samples = max(self.peak_kb, rss), self.samples + 1
            self.halt.wait(RSS_INTERVAL)


def relayd_run(
    relayd: Path, work: Path, messages: int, profile: Path | None = None, workers: str = "auto"
) -> dict[str, Any]:
    """One run of `relayd daemon` with its listener on a fresh queue; its figures (with
    `profile`, py-spy's samples of the daemon during the timed part go there)."""
    work.mkdir()
    env = daemon_env(make_home(work, free_port()))  # a free port: nothing listens there
    config = Path(env["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config.write_text(
        f'[listen]\naddress = ["127.0.0.1:{port}"]\nmax_sessions = {MAX_SESSIONS}\n'
        + (f"workers = {workers}\n" if workers != "auto" else ""),
        encoding="ascii",
    )
    env["RELAYD_CONFIG"] = str(config)
    queue = queue_file(env)
    result: dict[str, Any] = {"messages": messages}
    with (work / "daemon.log").open("wb") as daemon_log:
        proc = subprocess.Popen(
            [str(relayd), "daemon"],
            env=env,
            cwd=env["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_accepting(port, lambda: proc.poll() is None, "relayd daemon")
        warm_up(port)
        rows_before = queue_rows(queue)[0]
        rss_before, cpu_before = rss_kb(proc.pid), cpu_seconds(proc.pid)
        result["processes"] = len(family(proc.pid))
        sampler = RssSampler(proc.pid)
        sampler.start()
        with pyspy.recording(proc.pid, profile) if profile else contextlib.nullcontext():
            seconds, data_done, failure = run_source(port, messages, work)
        rows_at_exit = queue_rows(queue)[0]  # every 250 received: all of them committed by now
        cpu_after = cpu_seconds(proc.pid)
        time.sleep(AFTER_PAUSE)
        sampler.halt.set()
        sampler.join()
        result.update(
            seconds=round(seconds, 3),
            rate=round(messages / seconds, 1) if failure is None else None,
            data_completed=data_done,
            new_rows_at_exit=rows_at_exit - rows_before,
            rss_before_kb=rss_before,
            rss_peak_kb=max(sampler.peak_kb, rss_before or 0),
            rss_after_kb=rss_kb(proc.pid),
            rss_samples=sampler.samples,
            hwm_kb=rss_kb(proc.pid, "VmHWM"),
            failure=failure,
        )
        if cpu_before is not None and cpu_after is not None:
            result["daemon_cpu_share"] = round((cpu_after - cpu_before) / seconds, 2)
            result["cpu_ms_per_message"] = round((cpu_after - cpu_before) * 1000 / messages, 3)
    except SetupError as exc:
        result["failure"] = str(exc)
    finally:
        result["exit_code"] = stop_daemon(proc)
    rows, states, attempts = queue_rows(queue) if queue.exists() else (0, {}, 0)
    result.update(rows_after_stop=rows, states=states, attempts=attempts)
    if result.get("failure"):
        tail = (work / "daemon.log").read_text(errors="replace").strip().splitlines()[-3:]
        result["failure"] += "; daemon log: " + " / ".join(tail)
    return result


def postfix_run(work: Path, messages: int) -> dict[str, Any]:
    """Postfix's smtpd -> cleanup on a private instance without qmgr: the same smtp-source."""
    master = POSTFIX_ROOT / "usr" / "lib" / "postfix" / "sbin" / "master"
    if os.geteuid() != 0:
        return {"reason": "Postfix's master must run as root"}
    if not master.exists():
        return {"reason": f"{master} not found in the unpacked deb"}
    work.mkdir()
    let_search(work, CACHE)
    try:
        instance = PostfixInstance(master, work, free_port())  # relayhost: never used, no qmgr
    except (PostfixError, OSError, KeyError) as exc:
        return {"reason": f"cannot set up its directories: {exc}"}
    try:
        port = free_port()
        instance.master_cf(f"127.0.0.1:{port} inet n - n - - smtpd\n")
        with instance.running() as proc:
            wait_accepting(port, lambda: proc.poll() is None, "Postfix's master")
            warm_up(port)
            before = queue_files(instance.queue, POSTFIX_QUEUES)
            seconds, data_done, failure = run_source(port, messages, work)
            new = queue_files(instance.queue, POSTFIX_QUEUES) - before
    except (PostfixError, SetupError) as exc:
        return {"reason": f"{exc}; log: {instance.log_tail()}"}
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "rate": round(messages / seconds, 1) if failure is None else None,
        "data_completed": data_done,
        "new_queue_files": new,
        "failure": failure,
        "mail_owner": instance.owner,
    }


def median(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values and len(values) == len(runs) else None


def mb(kb: float | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f}"


def cell(value: Any, spec: str = "") -> str:
    return "?" if value is None else format(value, spec)


def relayd_line(r: dict[str, Any]) -> str:
    rss = "/".join(mb(r.get(k)) for k in ("rss_before_kb", "rss_peak_kb", "rss_after_kb"))
    return (
        f"{cell(r.get('seconds'), '8.3f'):>8} {cell(r.get('rate'), ',.1f'):>9}"
        f" {cell(r.get('new_rows_at_exit')):>8} {cell(r.get('data_completed')):>5}"
        f" {rss:>24} {cell(r.get('daemon_cpu_share'), '.2f'):>4} {cell(r.get('attempts')):>6}"
        f" {cell(r.get('cpu_ms_per_message'), '.3f'):>8}"
    )


def print_runs(
    title: str, columns: str, runs: Sequence[dict[str, Any]], line: Callable[..., str]
) -> None:
    print(title)
    print(f"{'':7}{columns}")
    for n, one in enumerate(runs, 1):
        print(f"  run {n}" + (f" not measured ({one['reason']})" if "reason" in one else line(one)))
        if one.get("failure"):
            print(f"    FAILED: {one['failure']}")


def print_report(
    results: dict[str, Any], facts: dict[str, str], command: str, messages: int
) -> list[dict[str, Any]]:
    print(f"command: {command}")
    facts["load"] = " ".join(source_argv(0, messages)[1:-1]) + " 127.0.0.1:PORT"
    facts["relayd delivery"] = "~/.msmtprc -> a closed port: runs alongside, every try refused"
    print_facts(facts)
    runs: list[dict[str, Any]] = results["relayd"]
    print_runs(
        "relayd daemon, [listen] SMTP listener:",
        "       s     msg/s new rows  DATA RSS MB before/peak/after  CPU  tries CPU ms/msg",
        runs,
        relayd_line,
    )
    rate = median(runs, "rate")
    print(f"  median{'':9} {cell(rate, ',.1f'):>9} messages/s")
    cpu = median(runs, "cpu_ms_per_message")
    print(f"  median daemon CPU per message: {cell(cpu, '.3f')} ms (load does not inflate it much)")
    postfix = results["postfix"]
    pf_rate = None
    print()
    if isinstance(postfix, dict):
        print(f"Postfix smtpd -> cleanup: not measured ({postfix['reason']})")
    else:
        print_runs(
            "Postfix smtpd -> cleanup (no qmgr):",
            "       s     msg/s new queue files  DATA",
            postfix,
            lambda p: (
                f"{p['seconds']:8.3f} {cell(p['rate'], ',.1f'):>9}"
                f" {p['new_queue_files']:>16} {cell(p['data_completed']):>5}"
            ),
        )
        pf_rate = median(postfix, "rate")
        print(f"  median{'':9} {cell(pf_rate, ',.1f'):>9} messages/s")
        print(f"  relayd / postfix: {cell(rate / pf_rate if rate and pf_rate else None, '.2f')}")
    exact = [r.get("new_rows_at_exit") == messages for r in runs]
    found: list[dict[str, Any]] = [
        {
            "target": f"listener ingest >= {TARGET_RATE:,.0f} messages/s (median)",
            "value": None if rate is None else round(rate, 1),
            "pass": None if rate is None else rate >= TARGET_RATE,
        },
        {
            "target": f"each committed before its 250: {messages} new rows once"
            " smtp-source has every 250 (per run)",
            "value": [r.get("new_rows_at_exit") for r in runs],
            "pass": all(exact),
        },
    ]
    print()
    print("SPEC targets:")
    for t in found:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        print(f"  {verdict}  {t['target']}: {t['value']}")
    return found


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/listen.py", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--messages", type=int, default=5000, help="per run (default 5000)")
    parser.add_argument("--no-postfix", action="store_true", help="skip Postfix's smtpd")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile", metavar="FILE", type=Path, help="py-spy the daemon in run 1 (into FILE)"
    )
    parser.add_argument(
        "--workers", default="auto", help="[listen] workers for relayd (default: auto)"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the non-editable venv even if current"
    )
    args = parser.parse_args(argv)
    if args.workers != "auto" and not args.workers.isdigit():
        parser.error("--workers must be auto or a number")
    if not 1 <= args.runs <= 20 or not 1 <= args.messages <= 1_000_000:
        parser.error("--runs must be 1..20 and --messages 1..1,000,000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(arguments)
    command = " ".join([shown(sys.executable), shown(__file__), *arguments])
    try:
        python = ensure_venv(args.rebuild)
        ensure_smtp_sink()  # unpacks the deb, smtp-source included
    except (SetupError, Skip) as exc:
        log(f"cannot set up: {exc}")
        return 1
    if not SMTP_SOURCE.exists():
        log(f"{SMTP_SOURCE} is not in the unpacked deb")
        return 1
    relayd = python.parent / "relayd"
    work = Path(tempfile.mkdtemp(prefix="listen-", dir=CACHE))
    try:
        facts = machine_facts(python, work)
        before = conditions(work)
        results: dict[str, Any] = {"relayd": [], "postfix": []}
        if args.no_postfix:
            results["postfix"] = {"reason": "--no-postfix"}
        for n in range(args.runs):
            # Round-robin, each round starting with the other one: a busy moment of the
            # machine falls on both alike.
            for who in ("relayd", "postfix") if n % 2 == 0 else ("postfix", "relayd"):
                if who == "relayd":
                    log(f"run {n + 1}/{args.runs}: relayd daemon ...")
                    profile = args.profile if n == 0 else None
                    one = relayd_run(
                        relayd, work / f"relayd-{n}", args.messages, profile, args.workers
                    )
                    results["relayd"].append(one)
                elif isinstance(results["postfix"], list):
                    log(f"run {n + 1}/{args.runs}: postfix smtpd ...")
                    one = postfix_run(work / f"postfix-{n}", args.messages)
                    if "reason" in one and not results["postfix"]:
                        results["postfix"] = one  # cannot run here at all: say why once
                    else:
                        results["postfix"].append(one)
        facts["conditions"] = f"before: {before}; after: {conditions(work)}"
        found = print_report(results, facts, command, args.messages)
        if args.profile is not None and args.profile.exists():
            print(f"\npy-spy profile of the daemon in relayd run 1 ({args.profile}):")
            print("\n".join(pyspy.summary(args.profile)))
        if args.json is not None:
            out = {"command": command, "machine": facts, "targets": found, **results}
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    except SetupError as exc:
        log(f"benchmark setup failed: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
