#!/usr/bin/env python3
"""A 50 MB message out of the queue: the daemon's peak RSS delivering it, and `queue show`'s.

In one run, on 127.0.0.1, each part three times (medians printed):

* deliver: `relayd daemon` is started on an empty queue and left idle (its VmRSS is the idle
  figure); a 50 MB message is then submitted with `relayd-sendmail` and the daemon delivers it
  to Postfix's `smtp-sink`; its VmHWM once the message is `sent` is the peak. Beside it, Debian's
  msmtp sends the same file to the same sink (its VmHWM, sampled).
* show: `relayd queue show ID` and `relayd queue show --raw ID` (read through a pipe, checked
  byte for byte against the stored body) of that message, their VmHWM sampled; beside them the
  same command's floor, `relayd queue show` of a one-line message in the same queue (the CLI's
  interpreter and imports: what streaming the 50 MB body adds is the difference).

Memory is sampled from /proc/PID/status (VmHWM is the kernel's own high-water mark, so a short
peak between samples still counts); the wall-clock times are shown as well, but on a busy
machine only the memory figures are steady. It reports, it does not gate (exit 0 whatever the
figures). Usage: python benchmarks/bigmail.py [--runs N] [--rebuild] [--show-only]
(--show-only: the message is queued by relayd-sendmail with no daemon, and only `queue show` is
measured: no Postfix smtp-sink needed).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from common import (
    CACHE,
    RECIPIENT,
    VENV,
    SetupError,
    Skip,
    ensure_smtp_sink,
    ensure_venv,
    log,
    make_home,
    smtp_sink,
)
from drain import (
    big_message,
    daemon_env,
    notified,
    notify_socket,
    proc_status_kb,
    queue_file,
    spawn_daemon,
)

DELIVER_TIMEOUT = 300.0  # seconds for one 50 MB delivery
IDLE_SETTLE = 1.0  # seconds the daemon is left idle after READY=1 before its RSS is read
SAMPLE = 0.005  # seconds between /proc samples
TARGET_DELIVER_GROWTH_KB = 8 * 1024  # SPEC §6: peak ≤ idle + 8 MiB
TARGET_SHOW_KB = 40 * 1024  # SPEC §6: queue show of a 50 MB message ≤ 40 MiB


def sampled_peak(
    argv: Sequence[str], env: dict[str, str], stdin: Path | None, timeout: float
) -> tuple[int, int | None, bytes, float]:
    """Run `argv`; its exit code, VmHWM (kB, sampled until it exits), the sha256 (hex) of its
    stdout (read through a pipe as it comes), and its seconds."""
    with (
        stdin.open("rb") if stdin else open("/dev/null", "rb") as source,
        tempfile.TemporaryFile() as errors,
    ):
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=env["HOME"],
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        got: dict[str, bytes] = {}
        reader = threading.Thread(target=_drain_pipe, args=(proc.stdout, got), daemon=True)
        reader.start()
        peak: int | None = None
        deadline = start + timeout
        while proc.poll() is None and time.perf_counter() < deadline:
            hwm = proc_status_kb(proc.pid, "VmHWM")
            if hwm is not None:
                peak = max(peak or 0, hwm)
            time.sleep(SAMPLE)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout)
        seconds = time.perf_counter() - start
    return proc.returncode, peak, got.get("sha256", b""), seconds


def _drain_pipe(pipe: IO[bytes], got: dict[str, bytes]) -> None:
    """Read `pipe` to its end in 64 KiB reads; got["sha256"]: the output's sha256 (hex), to
    compare with the store's without holding 50 MB here."""
    digest = hashlib.sha256()
    while chunk := pipe.read(1 << 16):
        digest.update(chunk)
    got["sha256"] = digest.hexdigest().encode()


def stored_body(env: dict[str, str]) -> tuple[str, int, bytes]:
    """The queue id, stored size and sha256 (hex) of the biggest message in the queue."""
    with sqlite3.connect(queue_file(env)) as conn:
        (row_id, queue_id, size) = conn.execute(
            "SELECT id, queue_id, size FROM messages ORDER BY size DESC LIMIT 1"
        ).fetchone()
        digest = hashlib.sha256()
        for (chunk,) in conn.execute(
            "SELECT data FROM bodies WHERE message_id = ? ORDER BY seq", (row_id,)
        ):
            digest.update(chunk)
    return str(queue_id), int(size), digest.hexdigest().encode()


def sent(env: dict[str, str]) -> bool:
    with sqlite3.connect(queue_file(env)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM messages WHERE state = 'sent'").fetchone()
    return bool(count)


def deliver_once(sink: Path, work: Path, message: Path) -> dict[str, Any]:
    """One run: the daemon idle, then delivering the 50 MB message; msmtp sending it; and
    `queue show` / `--raw` of it."""
    work.mkdir()
    result: dict[str, Any] = {}
    relayd = str(VENV / "bin" / "relayd")
    with smtp_sink(sink, work / "smtp-sink.log") as port:
        env = daemon_env(make_home(work, port))
        notify_path = work / "notify"
        with notify_socket(notify_path) as sock, (work / "daemon.log").open("wb") as daemon_log:
            daemon = spawn_daemon(Path(relayd), env, notify_path, daemon_log)
            try:
                deadline = time.monotonic() + 30
                while "READY=1" not in notified(sock) and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(IDLE_SETTLE)
                result["idle_kb"] = proc_status_kb(daemon.pid, "VmRSS")
                sendmail = [str(VENV / "bin" / "relayd-sendmail"), RECIPIENT]
                start = time.perf_counter()
                code, _, _, _ = sampled_peak(sendmail, env, message, DELIVER_TIMEOUT)
                deadline = time.monotonic() + DELIVER_TIMEOUT
                while code == 0 and not sent(env) and time.monotonic() < deadline:
                    time.sleep(0.05)
                result["deliver_s"] = round(time.perf_counter() - start, 2)
                result["delivered"] = code == 0 and sent(env)
                result["peak_kb"] = proc_status_kb(daemon.pid, "VmHWM")
            finally:
                daemon.terminate()
                daemon.wait(30)
        msmtp = shutil.which("msmtp")
        if msmtp:
            code, peak, _, seconds = sampled_peak([msmtp, RECIPIENT], env, message, 120)
            result.update(msmtp_exit=code, msmtp_kb=peak, msmtp_s=round(seconds, 2))
    result.update(show_part(env))
    return result


def show_only(work: Path, message: Path) -> dict[str, Any]:
    """One run without a daemon: the message queued by relayd-sendmail, then `show_part`."""
    work.mkdir()
    env = daemon_env(make_home(work, None))
    sendmail = [str(VENV / "bin" / "relayd-sendmail"), RECIPIENT]
    code, _, _, _ = sampled_peak(sendmail, env, message, DELIVER_TIMEOUT)
    if code != 0:
        raise SetupError(f"relayd-sendmail could not queue the message (exit {code})")
    return show_part(env)


def show_part(env: dict[str, str]) -> dict[str, Any]:
    """`relayd queue show` and `show --raw` of the stored message: VmHWM, and --raw's bytes
    compared (length and sha256) with the store's; and the floor: `queue show` of a one-line
    message queued beside it."""
    relayd = str(VENV / "bin" / "relayd")
    queue_id, size, digest = stored_body(env)
    one_line = Path(env["HOME"]) / "one-line.eml"
    one_line.write_bytes(b"Subject: one line\n\nhello\n")
    small = sampled_peak([str(VENV / "bin" / "relayd-sendmail"), RECIPIENT], env, one_line, 60)
    with sqlite3.connect(queue_file(env)) as conn:
        (small_id,) = conn.execute("SELECT queue_id FROM messages ORDER BY id DESC").fetchone()
    floor = sampled_peak([relayd, "queue", "show", small_id], env, None, 60)
    code, peak, _, seconds = sampled_peak([relayd, "queue", "show", queue_id], env, None, 120)
    raw = sampled_peak([relayd, "queue", "show", "--raw", queue_id], env, None, 120)
    return {
        "size": size,
        "show_exit": code,
        "show_kb": peak,
        "show_s": round(seconds, 2),
        "raw_exit": raw[0],
        "raw_kb": raw[1],
        "raw_s": round(raw[3], 2),
        "raw_exact": raw[2] == digest,
        "floor_kb": floor[1] if small[0] == 0 and floor[0] == 0 else None,
    }


def median(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def mib(kb: float | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f} MiB"


def report(runs: Sequence[dict[str, Any]]) -> None:
    idle, peak = median(runs, "idle_kb"), median(runs, "peak_kb")
    growth = median([dict(g=r["peak_kb"] - r["idle_kb"]) for r in runs if r.get("idle_kb")], "g")
    size = runs[0].get("size", 0)
    print(f"bigmail: a {size / 2**20:.1f} MiB message, medians of {len(runs)} runs")
    if idle is not None:
        print(f"  relayd daemon: idle {mib(idle)}, peak {mib(peak)} delivering (+{mib(growth)});")
        print(f"    submit+deliver {median(runs, 'deliver_s')} s (under load);")
        print(f"    delivered in every run: {all(r.get('delivered') for r in runs)}")
        print(f"  msmtp, same file, same sink: peak {mib(median(runs, 'msmtp_kb'))}")
    print(
        f"  relayd queue show: peak {mib(median(runs, 'show_kb'))}"
        f" (of a one-line message, same queue: {mib(median(runs, 'floor_kb'))})"
    )
    print(
        f"  relayd queue show --raw | (pipe): peak {mib(median(runs, 'raw_kb'))},"
        f" byte-exact in every run: {all(r.get('raw_exact') for r in runs)}"
    )
    if idle is not None:
        ok = growth is not None and growth <= TARGET_DELIVER_GROWTH_KB
        print(f"  SPEC §6 daemon peak ≤ idle + 8 MiB: {'PASS' if ok else 'FAIL'}")
    show = median(runs, "show_kb")
    ok = show is not None and show <= TARGET_SHOW_KB
    print(f"  SPEC §6 queue show ≤ 40 MiB: {'PASS' if ok else 'FAIL'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--show-only", action="store_true", help="measure `queue show` alone")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ensure_venv(args.rebuild)
        sink = None if args.show_only else ensure_smtp_sink()
    except (SetupError, Skip) as exc:
        log(f"cannot run: {exc}")
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bigmail-", dir=CACHE))
    try:
        message = work / "big.eml"
        big_message(message)
        runs = []
        for number in range(args.runs):
            log(f"bigmail: run {number + 1} of {args.runs} ...")
            run = work / f"run{number}"
            runs.append(
                show_only(run, message) if sink is None else deliver_once(sink, run, message)
            )
        report(runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
