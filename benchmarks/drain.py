#!/usr/bin/env python3
"""Drain throughput and memory: `relayd daemon` emptying its queue into Postfix's `smtp-sink`.

In one run, on 127.0.0.1:

1. throughput: N 10 KB messages are put in a fresh SQLite queue, untimed (one transaction
   through relayd's own store), then `relayd daemon` starts and is timed from its start and from
   its READY=1 until every message is `sent`; its RSS is sampled all along;
2. Debian's `msmtp`, one process per message, sending the same message to the same sink (a
   subset of N, to keep the run short);
3. Postfix's own queue manager: a private Postfix instance unpacked from the deb in
   `benchmarks/.cache` drains N messages to the same sink (when it can run here);
4. memory with a big queue: the daemon drains --queued messages (100,000 by default), RSS
   sampled throughout;
5. with --big, one 50 MB message submitted with `relayd-sendmail` and delivered by the daemon,
   with both processes' peak RSS.

It prints the figures and SPEC §6's drain and memory targets with PASS/FAIL, and exits 0
whatever they are: it reports, it does not gate. Usage: python benchmarks/drain.py
[--messages N] [--msmtp-messages N] [--queued N] [--big] [--json FILE] [--rebuild]
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import pyspy
from common import (
    CACHE,
    POSTFIX_DIR,
    RECIPIENT,
    REPO,
    RUN_TIMEOUT,
    SENDER,
    SINK_START_TIMEOUT,
    VENV,
    SetupError,
    Skip,
    accepting,
    clean_environment,
    conditions,
    ensure_smtp_sink,
    ensure_venv,
    free_port,
    log,
    machine_facts,
    make_home,
    make_message,
    process_cpu_seconds,
    shown,
    sink_messages,
    smtp_sink,
    stop,
    wait_for_exit,
)

DEFAULT_MESSAGES = 10_000
DEFAULT_MSMTP_MESSAGES = 500
DEFAULT_QUEUED = 100_000
MAX_MESSAGES = 1_000_000
BIG_SIZE = 50 * 1024 * 1024
BIG_LINE = 998  # characters before the line end: RFC 5322's limit

POLL_INTERVAL = 0.02  # seconds between samples of the daemon's RSS and the queue's states
POLL_SHARE = 0.05  # the poller backs off so that its queries take at most this share of a CPU
READY_TIMEOUT = 60.0  # seconds from spawning the daemon to READY=1
STALL_TIMEOUT = 60.0  # seconds without one more message settled before the drain is given up
DAEMON_STOP_TIMEOUT = 15.0  # SIGTERM, then this long before SIGKILL
MIN_DRAIN_RATE = 20.0  # messages/s: below it the drain's overall deadline is hit

TARGET_RATE = 3_000.0
TARGET_POSTFIX_RATIO = 2.0  # SPEC §6: at least twice Postfix's queue manager, same run
REFERENCE_POSTFIX_RATE = 2_050.0  # SPEC §6, measured on the reference 2-core machine
REFERENCE_MSMTP_RATE = 22.0
TARGET_QUEUED_RSS_MB = 80.0
TARGET_QUEUED = 100_000
TARGET_BIG_RSS_MB = 64.0
TARGET_BIG_SUBMIT_RATIO = 2.0
MILESTONES = (0.1, 0.5, 1.0)  # fractions of the queue sent at which RSS is reported

POSTFIX_ROOT = POSTFIX_DIR / "root"
# The services of the deb's master.cf.dist that a relay needs, chroot off (a chroot would need
# copies of /etc files in the queue directory); qmgr is added only for the timed step.
POSTFIX_SERVICES = """\
cleanup    unix  n - n -    0 cleanup
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
"""
QMGR_SERVICE = "qmgr       unix  n - n 300  1 qmgr\n"
QUEUE_DIRS = (
    *("active", "bounce", "corrupt", "defer", "deferred", "flush"),
    *("hold", "incoming", "private", "saved", "trace"),
)

# Runs on the benchmark venv's python, so it uses the relayd installed there; the checkout
# goes last on sys.path only for the tests' queue filler (relayd still comes from the venv).
ENQUEUE = """\
import sys, time
url, path, count, sender, recipient, repo = sys.argv[1:7]
sys.path.append(repo)
from relayd.store.records import NewMessage
from relayd.store.sql import SqlStore
from tests.queue_fill import enqueue_many
with open(path, "rb") as f:
    data = f.read()
batch = (NewMessage("default", (), sender, (recipient,), data) for _ in range(int(count)))
store = SqlStore.open(url)
try:
    print(len(enqueue_many(store, batch, time.time())))
finally:
    store.close()
"""


@dataclass
class Drain:
    """One `relayd daemon` run over a queue of `messages`; times in seconds from its spawn."""

    messages: int
    enqueue_s: float | None = None
    ready_s: float | None = None
    attempts_at_ready: int | None = None
    done_s: float | None = None
    states: dict[str, int] = field(default_factory=dict)
    attempts: int | None = None
    sink_messages: int | None = None
    ready_rss_kb: int | None = None
    ready_cpu_s: float | None = None  # the daemon's user + system CPU seconds at READY=1
    done_cpu_s: float | None = None  # and once every message was sent
    milestone_rss_kb: dict[int, int] = field(default_factory=dict)
    sampled_peak_rss_kb: int | None = None
    hwm_kb: int | None = None
    samples: int = 0
    exit_code: int | None = None
    failure: str | None = None
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (s, attempts, RSS kB)

    @property
    def rate(self) -> float | None:
        """Messages/s from the daemon's spawn until the last one was sent."""
        if self.done_s is None or self.failure is not None:
            return None
        return self.messages / self.done_s

    @property
    def rate_after_ready(self) -> float | None:
        """Messages/s from READY=1 on, over the messages not yet attempted by then."""
        if self.rate is None or self.ready_s is None or self.done_s is None:
            return None
        if self.done_s <= self.ready_s:
            return None
        return (self.messages - (self.attempts_at_ready or 0)) / (self.done_s - self.ready_s)

    @property
    def cpu_per_10k(self) -> float | None:
        """The daemon's CPU seconds (user + system, every thread) per 10,000 messages sent
        after READY=1: robust where wall-clock rates are not (a machine shared with others)."""
        if self.rate_after_ready is None or self.ready_cpu_s is None or self.done_cpu_s is None:
            return None
        drained = self.messages - (self.attempts_at_ready or 0)
        return (self.done_cpu_s - self.ready_cpu_s) / drained * 10_000

    def summary(self) -> dict[str, Any]:
        result = asdict(self)
        result["rate"] = rounded(self.rate)
        result["rate_after_ready"] = rounded(self.rate_after_ready)
        result["cpu_per_10k"] = rounded(self.cpu_per_10k, 3)
        result["milestone_rss_kb"] = {str(k): v for k, v in self.milestone_rss_kb.items()}
        return result


# --- small helpers ---------------------------------------------------------------------------


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def mb(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f} MB"


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM), None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def daemon_env(env: dict[str, str]) -> dict[str, str]:
    """make_home's environment plus relayd's runtime directory inside the throw-away HOME.

    As root relayd would otherwise put its sockets in /run/relayd, the system's.
    """
    runtime = Path(env["XDG_RUNTIME_DIR"]) / "relayd"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    return dict(env, RELAYD_RUNTIME_DIR=str(runtime))


def queue_file(env: dict[str, str]) -> Path:
    return Path(env["RELAYD_DATABASE_URL"].removeprefix("sqlite:///"))


def wire_message() -> bytes:
    """make_message()'s 10 KB message as the store keeps it: CRLF line ends."""
    return make_message().replace(b"\n", b"\r\n")


def big_message(path: Path) -> int:
    """Write a BIG_SIZE text message of BIG_LINE-character lines (LF ends) to `path`; its size."""
    head = f"From: {SENDER}\nTo: {RECIPIENT}\nSubject: relayd 50 MB benchmark\n\n".encode()
    line = b"x" * BIG_LINE + b"\n"
    with path.open("wb") as out:
        out.write(head)
        written = len(head)
        while written + len(line) <= BIG_SIZE:
            out.write(line)
            written += len(line)
    return written


def enqueue(python: Path, env: dict[str, str], work: Path, count: int) -> float:
    """Put `count` 10 KB messages in the queue, untimed for the figures; seconds it took."""
    message = work / "message.eml"
    message.write_bytes(wire_message())
    argv = [str(python), "-c", ENQUEUE, env["RELAYD_DATABASE_URL"], str(message), str(count)]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [*argv, SENDER, RECIPIENT, str(REPO)],
            env=env,
            cwd=work,  # not the checkout: `-c` puts the cwd first, and relayd must be the install
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120 + count / 100,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"enqueueing {count} messages timed out") from None
    if done.returncode != 0 or done.stdout.strip() != str(count):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SetupError(f"enqueueing {count} messages failed: " + " / ".join(tail))
    return time.perf_counter() - start


# --- watching the daemon ---------------------------------------------------------------------


class QueueReader:
    """Read-only stdlib sqlite3 view of the daemon's queue; None when it cannot be read now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def _rows(self, query: str) -> list[tuple[Any, ...]] | None:
        try:
            if self.conn is None:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
            return self.conn.execute(query).fetchall()
        except sqlite3.Error:
            self.close()
            return None

    def states(self) -> dict[str, int] | None:
        """Messages by state: an index scan, milliseconds for 100,000 rows."""
        rows = self._rows("SELECT state, count(*) FROM messages GROUP BY state")
        return None if rows is None else {str(state): int(n) for state, n in rows}

    def attempts(self) -> int | None:
        rows = self._rows("SELECT count(*) FROM attempts")
        return None if rows is None else int(rows[0][0])

    def last_attempt(self) -> int | None:
        """The newest attempt's id: the number recorded (none is deleted), in microseconds."""
        rows = self._rows("SELECT max(id) FROM attempts")
        return None if rows is None else int(rows[0][0] or 0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A bound, non-blocking datagram socket for the daemon's sd_notify messages."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()


def notified(sock: socket.socket) -> list[str]:
    states: list[str] = []
    while True:
        try:
            states.extend(sock.recv(4096).decode("utf-8", "replace").split("\n"))
        except (BlockingIOError, InterruptedError):
            return states


def spawn_daemon(
    relayd: Path, env: dict[str, str], notify_path: Path, daemon_log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """`relayd daemon` on the queue of `env`, notifying `notify_path`, its output to the log."""
    return subprocess.Popen(
        [str(relayd), "daemon"],
        env=dict(env, NOTIFY_SOCKET=str(notify_path)),
        cwd=env["HOME"],
        stdin=subprocess.DEVNULL,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )


def run_daemon(
    relayd: Path, env: dict[str, str], work: Path, result: Drain, profile: Path | None = None
) -> None:
    """Start `relayd daemon` on the queue of `env`, watch it send everything, SIGTERM it
    (with `profile`, py-spy's samples of the daemon go there)."""
    notify_path = work / "notify"
    reader = QueueReader(queue_file(env))
    with (
        notify_socket(notify_path) as sock,
        (work / "daemon.log").open("wb") as daemon_log,
    ):
        start = time.perf_counter()
        proc = spawn_daemon(relayd, env, notify_path, daemon_log)
        try:
            with pyspy.recording(proc.pid, profile) if profile else contextlib.nullcontext():
                watch(proc, sock, reader, start, result)
            result.hwm_kb = proc_status_kb(proc.pid, "VmHWM")
        finally:
            result.exit_code = stop_daemon(proc)
            reader.close()
    final = QueueReader(queue_file(env))
    try:
        result.states = final.states() or result.states
        result.attempts = final.attempts()
    finally:
        final.close()
    if result.failure is not None:
        tail = (work / "daemon.log").read_text(errors="replace").strip().splitlines()[-3:]
        if tail:
            result.failure += "; daemon log: " + " / ".join(tail)


def watch(
    proc: subprocess.Popen[bytes],
    sock: socket.socket,
    reader: QueueReader,
    start: float,
    result: Drain,
) -> None:
    """Sample until every message is sent, the daemon dies, or progress stops (result.failure).

    Every POLL_INTERVAL: the daemon's RSS and the attempts recorded so far (a cheap max(id)).
    The count by state is slower (milliseconds over 100,000 rows), so it runs at most every
    POLL_INTERVAL and backs off to take at most POLL_SHARE of a CPU from the daemon; it runs
    at once when the attempts say the drain may be over, so the end is seen within a poll.
    """
    count = result.messages
    marks = sorted({max(1, round(count * f)) for f in MILESTONES})
    deadline = start + READY_TIMEOUT + STALL_TIMEOUT + count / MIN_DRAIN_RATE
    settled_before, progress_at, next_count, done = -1, start, start, 0
    while True:
        if proc.poll() is not None:
            result.failure = f"the daemon exited with {proc.returncode} before the end"
            return
        rss = proc_status_kb(proc.pid, "VmRSS")
        done = reader.last_attempt() or done
        now = time.perf_counter()
        if result.ready_s is None and "READY=1" in notified(sock):
            result.ready_s, result.attempts_at_ready, result.ready_rss_kb = now - start, done, rss
            result.ready_cpu_s = process_cpu_seconds(proc.pid)
        if rss is not None:
            record_sample(result, now - start, done, rss, marks)
        if now >= next_count or done >= count:
            states = reader.states()
            after = time.perf_counter()
            next_count = after + max(0.0, (after - now) / POLL_SHARE - POLL_INTERVAL)
            if states is not None:
                result.states = states
        sent = result.states.get("sent", 0)
        settled = sent + result.states.get("failed", 0) + result.states.get("held", 0)
        if settled > settled_before:
            settled_before, progress_at = settled, now
        if sent >= count:
            result.done_s, result.done_cpu_s = now - start, process_cpu_seconds(proc.pid)
            return
        stuck = why_stuck(result, count, settled, now, start, progress_at, deadline)
        if stuck is not None:
            result.failure = stuck
            return
        time.sleep(max(0.0, POLL_INTERVAL - (time.perf_counter() - now)))


def why_stuck(
    result: Drain,
    count: int,
    settled: int,
    now: float,
    start: float,
    progress_at: float,
    deadline: float,
) -> str | None:
    """Why the drain cannot finish any more, or None while it still may."""
    if settled >= count:
        others = {k: v for k, v in result.states.items() if k != "sent"}
        return f"{count - result.states.get('sent', 0)} messages not sent: {others}"
    if result.ready_s is None and now - start > READY_TIMEOUT:
        return f"no READY=1 within {READY_TIMEOUT:g} s"
    if now - progress_at > STALL_TIMEOUT:
        return f"no message settled for {STALL_TIMEOUT:g} s (states {result.states})"
    if now > deadline:
        return f"not done after {now - start:.0f} s (below {MIN_DRAIN_RATE:g} messages/s)"
    return None


def record_sample(result: Drain, elapsed: float, done: int, rss: int, marks: Sequence[int]) -> None:
    """One RSS sample, `done` attempts recorded by then."""
    result.samples += 1
    result.sampled_peak_rss_kb = max(result.sampled_peak_rss_kb or 0, rss)
    for mark in marks:
        if done >= mark and mark not in result.milestone_rss_kb:
            result.milestone_rss_kb[mark] = rss
    # Two points a second are plenty for --json; the peak above sees every sample.
    if not result.series or elapsed - result.series[-1][0] >= 0.5 or done >= result.messages:
        result.series.append((round(elapsed, 3), done, rss))


def stop_daemon(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, wait, SIGKILL if need be; the exit code (negative for a signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=DAEMON_STOP_TIMEOUT)
    return proc.returncode


# --- the phases ------------------------------------------------------------------------------


def drain_phase(
    python: Path, sink: Path, work: Path, count: int, what: str, profile: Path | None = None
) -> Drain:
    """Fill a fresh queue with `count` messages and time the daemon draining it to a sink."""
    work.mkdir()
    result = Drain(messages=count)
    counts = work / "smtp-sink.counts"
    with smtp_sink(sink, work / "smtp-sink.log", counts) as port:
        env = daemon_env(make_home(work, port))
        log(f"{what}: enqueueing {count} messages of 10 KB ...")
        try:
            result.enqueue_s = round(enqueue(python, env, work, count), 3)
        except SetupError as exc:
            result.failure = str(exc)
            return result
        log(f"{what}: relayd daemon draining {count} messages ...")
        run_daemon(VENV / "bin" / "relayd", env, work, result, profile)
    result.sink_messages = sink_messages(counts)
    return result


def msmtp_phase(msmtp: str, sink: Path, work: Path, count: int) -> dict[str, Any]:
    """`msmtp you@example.org < message` `count` times in a row; messages/s over them all."""
    work.mkdir()
    message = work / "message.eml"
    message.write_bytes(make_message())
    counts = work / "smtp-sink.counts"
    log(f"msmtp: sending {count} messages, one process each ...")
    with (
        smtp_sink(sink, work / "smtp-sink.log", counts) as port,
        tempfile.TemporaryFile() as errors,
    ):
        env = make_home(work, port)
        start = time.perf_counter()
        for number in range(count):
            failure = run_msmtp(msmtp, env, message, errors)
            if failure is not None:
                return {"messages": count, "failed": f"message {number + 1}: {failure}"}
        elapsed = time.perf_counter() - start
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "rate": round(count / elapsed, 1),
        "sink_messages": sink_messages(counts),
    }


def run_msmtp(msmtp: str, env: dict[str, str], message: Path, errors: IO[bytes]) -> str | None:
    """One msmtp process; None when it exited 0, else why not."""
    errors.seek(0)
    errors.truncate()
    with message.open("rb") as stdin:
        proc = subprocess.Popen(
            [msmtp, RECIPIENT], env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=errors
        )
        if not wait_for_exit(proc, RUN_TIMEOUT):
            proc.kill()
            proc.wait()
            return f"still running after {RUN_TIMEOUT:g} s: killed"
    if proc.returncode != 0:
        errors.seek(0)
        lines = errors.read().decode("utf-8", "replace").strip().splitlines()
        return f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
    return None


def big_phase(sink: Path, work: Path) -> dict[str, Any]:
    """One 50 MB message: relayd-sendmail's peak RSS submitting it, the daemon's delivering it."""
    work.mkdir()
    message = work / "big.eml"
    size = big_message(message)
    result: dict[str, Any] = {"size": size}
    counts = work / "smtp-sink.counts"
    with smtp_sink(sink, work / "smtp-sink.log", counts) as port:
        env = daemon_env(make_home(work, port))
        log(f"big: relayd-sendmail of a {size / 2**20:.0f} MiB message ...")
        sendmail = [str(VENV / "bin" / "relayd-sendmail"), RECIPIENT]
        code, seconds, maxrss_kb, error = run_with_rusage(sendmail, env, message, 120.0)
        result.update(submit_exit=code, submit_s=round(seconds, 3), submit_maxrss_kb=maxrss_kb)
        if code != 0:
            result["failed"] = f"relayd-sendmail exited {code}: {error}"
            return result
        log("big: relayd daemon delivering it ...")
        drain = Drain(messages=1)
        run_daemon(VENV / "bin" / "relayd", env, work, drain)
    drain.sink_messages = sink_messages(counts)
    result["delivery"] = drain.summary()
    if drain.failure is not None:
        result["failed"] = f"delivery: {drain.failure}"
    return result


def run_with_rusage(
    argv: Sequence[str], env: dict[str, str], stdin: Path, timeout: float
) -> tuple[int, float, int, str]:
    """Run `argv` < `stdin`; its exit code, seconds, peak RSS (kB, from wait4) and last error.

    wait4() gives this one child's ru_maxrss; RUSAGE_CHILDREN would mix in every child so far.
    """
    with stdin.open("rb") as source, tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=env, stdin=source, stdout=subprocess.DEVNULL, stderr=errors
        )
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        # Reaped here: tell Popen, or it would try to wait for the pid again.
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        lines = errors.read().decode("utf-8", "replace").strip().splitlines()
    return proc.returncode, elapsed, usage.ru_maxrss, lines[-1] if lines else ""


# --- Postfix's own queue manager --------------------------------------------------------------


def postfix_phase(sink: Path, work: Path, count: int) -> dict[str, Any]:
    """A private Postfix instance from the unpacked deb drains `count` messages to a sink.

    Step 1, untimed: its smtpd on 127.0.0.1 takes the messages into `incoming` while no qmgr
    runs. Step 2, timed: master starts again with qmgr and without smtpd, and the clock runs
    from its spawn until incoming, active and deferred are empty. Everything lives in `work`.
    """
    if os.geteuid() != 0:
        return {"reason": "Postfix's master must run as root"}
    master = POSTFIX_ROOT / "usr" / "lib" / "postfix" / "sbin" / "master"
    if not master.exists():
        return {"reason": f"{master} not found in the unpacked deb"}
    work.mkdir()
    let_search(work, CACHE)
    counts = work / "smtp-sink.counts"
    try:
        with smtp_sink(sink, work / "smtp-sink.log", counts) as port:
            instance = PostfixInstance(master, work, port)
            log(f"postfix: enqueueing {count} messages through its smtpd (no qmgr) ...")
            instance.fill(count)
            log(f"postfix: its queue manager draining {count} messages ...")
            seconds = instance.drain(count)
    except PostfixError as exc:
        return {"reason": str(exc)}
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
        "sink_messages": sink_messages(counts),
        "setup": "Postfix from the deb, stock master.cf services without chroot, relayhost"
        " = the sink, mail_owner " + instance.owner,
    }


class PostfixError(Exception):
    """The private Postfix instance could not run or did not drain; the message says why."""


class PostfixInstance:
    """Postfix's master in the foreground with its own config and queue directories."""

    def __init__(self, master: Path, work: Path, sink_port: int) -> None:
        self.master = master
        self.work = work
        self.conf = work / "etc"
        self.queue = work / "queue"
        self.sink_port = sink_port
        self.owner, self.group, self.privs = postfix_accounts()
        self.conf.mkdir()
        (self.conf / "dynamicmaps.cf").write_text("")
        data = work / "data"
        data.mkdir(mode=0o700)
        uid, gid = pwd.getpwnam(self.owner).pw_uid, pwd.getpwnam(self.owner).pw_gid
        os.chown(data, uid, gid)
        make_queue(self.queue, uid, gid, grp.getgrnam(self.group).gr_gid)
        (self.conf / "main.cf").write_text(self.main_cf(data))

    def main_cf(self, data: Path) -> str:
        libs = POSTFIX_ROOT / "usr" / "lib" / "postfix"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(data),
            "command_directory": str(POSTFIX_ROOT / "usr" / "sbin"),
            "daemon_directory": str(libs / "sbin"),
            "shlib_directory": str(libs),
            "meta_directory": str(self.conf),
            "mail_owner": self.owner,
            "setgid_group": self.group,
            "default_privs": self.privs,
            "myhostname": "relayd-benchmark.localdomain",
            "mydomain": "localdomain",
            "mydestination": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "smtputf8_enable": "no",
            # Without a qmgr handing back flow tokens, smtpd would pause 1 s per message while
            # the queue is filled; nothing arrives while the queue manager is timed.
            "in_flow_delay": "0s",
            "biff": "no",
            "maillog_file": "/dev/stdout",  # master -d: its stdout, master.log
            # Postfix scrubs its children's environment; they need the unpacked libraries.
            "import_environment": f"MAIL_CONFIG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH={libs}",
        }
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def master_cf(self, extra: str) -> None:
        (self.conf / "master.cf").write_text(POSTFIX_SERVICES + extra)

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        env = clean_environment(os.environ)
        env.update(
            MAIL_CONFIG=str(self.conf), LD_LIBRARY_PATH=str(POSTFIX_ROOT / "usr/lib/postfix")
        )
        with (self.work / "master.log").open("ab") as out:
            proc = subprocess.Popen(
                [str(self.master), "-c", str(self.conf), "-d"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield proc
        finally:
            stop(proc)

    def fill(self, count: int) -> None:
        """`count` 10 KB messages into `incoming` through smtpd, with no qmgr to move them."""
        port = free_port()
        self.master_cf(f"127.0.0.1:{port} inet n - n - - smtpd\n")
        message = make_message()
        with self.running() as proc:
            deadline = time.monotonic() + SINK_START_TIMEOUT
            while not accepting(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise PostfixError(f"its smtpd did not listen: {self.log_tail()}")
                time.sleep(0.05)
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=RUN_TIMEOUT) as client:
                    for _ in range(count):
                        client.sendmail(SENDER, [RECIPIENT], message)
            except (OSError, smtplib.SMTPException) as exc:
                raise PostfixError(f"enqueueing through its smtpd failed: {exc}") from None
        queued = queue_files(self.queue, ("incoming",))
        if queued != count:
            raise PostfixError(f"{queued} of {count} messages in incoming: {self.log_tail()}")

    def drain(self, count: int) -> float:
        """Seconds from master's spawn (with qmgr) until the queue is empty."""
        self.master_cf(QMGR_SERVICE)
        deadline = time.perf_counter() + STALL_TIMEOUT + count / MIN_DRAIN_RATE
        left, progress_at = count, time.perf_counter()
        start = time.perf_counter()
        with self.running() as proc:
            while True:
                now = time.perf_counter()
                waiting = queue_files(self.queue, ("incoming", "active", "deferred", "hold"))
                if waiting == 0:
                    return now - start
                if queue_files(self.queue, ("deferred", "hold")):
                    raise PostfixError(f"messages deferred: {self.log_tail()}")
                if waiting < left:
                    left, progress_at = waiting, now
                if proc.poll() is not None:
                    raise PostfixError(f"master exited {proc.returncode}: {self.log_tail()}")
                if now - progress_at > STALL_TIMEOUT or now > deadline:
                    raise PostfixError(f"{waiting} messages still queued: {self.log_tail()}")
                time.sleep(POLL_INTERVAL)

    def log_tail(self) -> str:
        lines: list[str] = []
        for name in ("master.log", "postfix.log"):
            with contextlib.suppress(OSError):
                lines += (self.work / name).read_text(errors="replace").strip().splitlines()[-2:]
        return " / ".join(lines) or "no log"


def let_search(path: Path, top: Path) -> None:
    """Let every user through the directories from `path` up to `top` (mkdtemp makes them 0700).

    Postfix's daemons drop root for mail_owner and then open files in the queue and data
    directories by absolute path; without this they fail before they log anything.
    """
    for directory in (path, *path.parents):
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | 0o111)
        if directory == top:
            return


def postfix_accounts() -> tuple[str, str, str]:
    """mail_owner, setgid_group and default_privs for the private instance.

    Postfix's own `postfix` user and `postdrop` group when the machine has them; else
    `nobody` and `mail`, which exist everywhere (then default_privs, which must differ from
    mail_owner, becomes `daemon`). Nothing is added to the system's users.
    """
    owner = "postfix" if has_user("postfix") else "nobody"
    group = "postdrop" if has_group("postdrop") else "mail"
    privs = "nobody" if owner != "nobody" else "daemon"
    for user in (owner, privs):
        if not has_user(user):
            raise PostfixError(f"no user {user!r}")
    if not has_group(group):
        raise PostfixError(f"no group {group!r}")
    return owner, group, privs


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def make_queue(queue: Path, uid: int, gid: int, setgid: int) -> None:
    """The queue directory tree, owned as `postfix set-permissions` would make it."""
    queue.mkdir(mode=0o755)
    for name in QUEUE_DIRS:
        path = queue / name
        path.mkdir(mode=0o700)
        os.chown(path, uid, gid)
    for name, mode in (("maildrop", 0o730), ("public", 0o710)):
        path = queue / name
        path.mkdir()
        os.chown(path, uid, setgid)
        path.chmod(mode)
    (queue / "pid").mkdir(mode=0o755)


def queue_files(queue: Path, names: Sequence[str]) -> int:
    """Queue files in these queue directories (deferred and hold may be hashed)."""
    total = 0
    for name in names:
        for _, _, files in os.walk(queue / name):
            total += len(files)
    return total


# --- report ----------------------------------------------------------------------------------


def print_drain(title: str, drain: Drain) -> None:
    print(f"{title}:")
    if drain.enqueue_s is not None:
        print(f"  enqueued untimed in {drain.enqueue_s:.2f} s")
    if drain.ready_s is not None:
        print(
            f"  READY=1 {drain.ready_s:.2f} s after spawn"
            f" ({drain.attempts_at_ready} attempts by then)"
        )
    if drain.rate is not None and drain.done_s is not None:
        print(
            f"  all sent {drain.done_s:.2f} s after spawn: {drain.rate:,.1f} messages/s"
            f" from spawn, {fmt_rate(drain.rate_after_ready)} from READY=1"
        )
    else:
        print(f"  FAILED: {drain.failure}")
    print(
        f"  attempts recorded: {drain.attempts} for {drain.messages} messages;"
        f" smtp-sink received {drain.sink_messages}; states {drain.states}"
    )
    if drain.cpu_per_10k is not None:
        print(f"  daemon CPU (user + system) after READY=1: {drain.cpu_per_10k:.2f} s per 10,000")
    marks = ", ".join(
        f"after {mark:,} attempts {mb(kb)}" for mark, kb in drain.milestone_rss_kb.items()
    )
    print(f"  daemon RSS: at READY=1 {mb(drain.ready_rss_kb)}" + (f"; {marks}" if marks else ""))
    print(
        f"  daemon peak RSS: VmHWM {mb(drain.hwm_kb)}, largest of {drain.samples} samples"
        f" {mb(drain.sampled_peak_rss_kb)}; exit after SIGTERM {drain.exit_code}"
    )


def fmt_rate(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:,.1f} messages/s"


def print_facts(facts: dict[str, str]) -> None:
    for key, value in facts.items():
        print(f"{key + ':':18} {value}")
    print()


def target(name: str, value: float | None, limit: float | None, *, at_most: bool) -> dict[str, Any]:
    """One SPEC §6 target; pass is None when the figure or the limit is missing."""
    passed = None
    if value is not None and limit is not None:
        passed = value <= limit if at_most else value >= limit
    return {"target": name, "value": rounded(value), "limit": limit, "pass": passed}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The drain targets (from the throughput run) and the memory ones (the other runs)."""
    throughput: Drain | None = results.get("throughput_drain")
    found = [
        target(
            "drain >= 3,000 messages/s of 10 KB (from READY=1)",
            throughput.rate_after_ready if throughput else None,
            TARGET_RATE,
            at_most=False,
        )
    ]
    if throughput is not None:
        every = throughput.attempts == throughput.messages and throughput.failure is None
        recorded = target(
            "every attempt recorded (attempts == messages)",
            throughput.attempts,
            throughput.messages,
            at_most=False,
        )
        found.append(recorded | {"pass": every})
    # Postfix has no READY=1: both sides are timed from the spawn of their daemon.
    postfix = results["postfix"].get("rate")
    ratio = throughput.rate / postfix if throughput and throughput.rate and postfix else None
    found.append(
        target(
            "drain >= 2 x Postfix's queue manager in this run (both from spawn; ratio)",
            ratio,
            TARGET_POSTFIX_RATIO if postfix else None,
            at_most=False,
        )
    )
    return found + memory_targets(results)


def memory_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    queued: Drain | None = results.get("queued_drain")
    if queued is not None:
        found.append(
            target(
                f"daemon peak RSS <= 80 MB with {queued.messages:,} queued (MB)",
                None if queued.hwm_kb is None else queued.hwm_kb / 1024,
                TARGET_QUEUED_RSS_MB,
                at_most=True,
            )
        )
    big = results.get("big")
    if big is not None:
        delivery = big.get("delivery", {})
        hwm = delivery.get("hwm_kb") if delivery.get("failure") is None else None
        found.append(
            target(
                "50 MB message delivered with daemon peak RSS <= 64 MB (MB)",
                None if hwm is None else hwm / 1024,
                TARGET_BIG_RSS_MB,
                at_most=True,
            )
        )
        submitted = big.get("submit_maxrss_kb") if big.get("submit_exit") == 0 else None
        found.append(
            target(
                "50 MB message submitted with peak RSS <= 2 x its size (MB)",
                None if submitted is None else submitted / 1024,
                round(TARGET_BIG_SUBMIT_RATIO * big["size"] / 2**20, 1),
                at_most=True,
            )
        )
    return found


def print_targets(found: Sequence[dict[str, Any]], notes: Sequence[str]) -> None:
    print("SPEC §6 drain and memory targets:")
    for t in found:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        limit = "no figure to compare with" if t["limit"] is None else f"limit {t['limit']:,}"
        value = "no figure" if t["value"] is None else f"{t['value']:,}"
        print(f"  {verdict}  {t['target']}: {value} ({limit})")
    for note in notes:
        print(f"  note: {note}")


def report(
    results: dict[str, Any], facts: dict[str, str], command: str, profile: Path | None = None
) -> dict[str, Any]:
    """Print every figure and the targets; return everything as a JSON-ready dict."""
    print(f"command: {command}")
    print_facts(facts)
    throughput: Drain | None = results.get("throughput_drain")
    if throughput is not None:
        print_drain(f"relayd daemon -> smtp-sink, {throughput.messages:,} messages", throughput)
    print_msmtp(results["msmtp"], throughput.messages if throughput else None)
    print_postfix(results["postfix"])
    queued: Drain | None = results.get("queued_drain")
    notes = []
    if queued is not None:
        print_drain(f"memory: relayd daemon -> smtp-sink, {queued.messages:,} queued", queued)
        if throughput is not None and queued.hwm_kb and throughput.hwm_kb:
            print(
                f"  peak RSS {mb(queued.hwm_kb)} with {queued.messages:,} queued vs"
                f" {mb(throughput.hwm_kb)} with {throughput.messages:,}"
                f" ({(queued.hwm_kb - throughput.hwm_kb) / 1024:+.1f} MB)"
            )
        if queued.messages < TARGET_QUEUED:
            notes.append(f"the RSS target is for {TARGET_QUEUED:,} queued, not {queued.messages:,}")
    else:
        notes.append("memory with a big queue not measured (--queued 0)")
    big = results.get("big")
    if big is not None:
        print_big(big)
    if profile is not None and profile.exists():
        print("\npy-spy profile of the daemon in the throughput run:")
        print("\n".join(pyspy.summary(profile)))
    print()
    found = targets(results)
    print_targets(found, notes)
    out = {
        "command": command,
        "machine": facts,
        "targets": found,
        "reference": {
            "postfix_queue_manager_rate": REFERENCE_POSTFIX_RATE,
            "msmtp_rate": REFERENCE_MSMTP_RATE,
            "source": "SPEC §6, the reference 2-core machine, not this run",
        },
    }
    for key, value in results.items():
        out[key.removesuffix("_drain")] = value.summary() if isinstance(value, Drain) else value
    return out


def print_msmtp(msmtp: dict[str, Any], messages: int | None) -> None:
    if "skipped" in msmtp or "failed" in msmtp:
        reason = msmtp.get("skipped") or msmtp.get("failed")
        print(
            f"msmtp one process per message: {'skipped' if 'skipped' in msmtp else 'FAILED'}"
            f": {reason}"
        )
        return
    subset = f" (a subset: {msmtp['messages']:,} of the {messages:,})" if messages else ""
    print(
        f"msmtp one process per message -> smtp-sink: {msmtp['rate']:,.1f} messages/s over"
        f" {msmtp['messages']:,} messages{subset}; smtp-sink received {msmtp['sink_messages']}"
        f" (SPEC reference {REFERENCE_MSMTP_RATE:g}/s)"
    )


def print_postfix(postfix: dict[str, Any]) -> None:
    if postfix.get("rate") is None:
        print(f"postfix queue manager: not measured ({postfix.get('reason', 'unknown')})")
        print(
            f"  reference from SPEC §6 (not this run, not this machine):"
            f" {REFERENCE_POSTFIX_RATE:,.0f} messages/s"
        )
        return
    print(
        f"postfix queue manager -> smtp-sink: {postfix['rate']:,.1f} messages/s over"
        f" {postfix['messages']:,} messages ({postfix['seconds']:.2f} s from `postfix start`"
        f" to an empty queue); smtp-sink received {postfix.get('sink_messages')}"
    )


def print_big(big: dict[str, Any]) -> None:
    size = big["size"]
    print(f"50 MB message ({size:,} bytes, {BIG_LINE}-character lines):")
    if big.get("submit_maxrss_kb") is not None:
        print(
            f"  relayd-sendmail: exit {big['submit_exit']} in {big['submit_s']:.2f} s,"
            f" peak RSS {mb(big['submit_maxrss_kb'])}"
            f" ({big['submit_maxrss_kb'] * 1024 / size:.2f} x the message)"
        )
    delivery = big.get("delivery")
    if delivery is not None:
        state = "delivered" if delivery.get("failure") is None else "NOT delivered"
        done = delivery.get("done_s")
        print(
            f"  relayd daemon: {state} {'?' if done is None else f'{done:.2f}'} s after spawn;"
            f" peak RSS VmHWM {mb(delivery.get('hwm_kb'))}; smtp-sink received"
            f" {delivery.get('sink_messages')}"
        )
    if "failed" in big:
        print(f"  FAILED: {big['failed']}")


# --- main ------------------------------------------------------------------------------------


def count_arg(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= MAX_MESSAGES:
            raise argparse.ArgumentTypeError(f"must be between {low} and {MAX_MESSAGES:,}")
        return value

    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/drain.py", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--messages",
        type=count_arg(1),
        default=DEFAULT_MESSAGES,
        help=f"messages for the throughput run (default {DEFAULT_MESSAGES:,})",
    )
    parser.add_argument(
        "--msmtp-messages",
        type=count_arg(0),
        default=DEFAULT_MSMTP_MESSAGES,
        help=f"messages msmtp sends, one process each (default {DEFAULT_MSMTP_MESSAGES}; 0 skips)",
    )
    parser.add_argument(
        "--queued",
        type=count_arg(0),
        default=DEFAULT_QUEUED,
        help=f"messages for the memory run (default {DEFAULT_QUEUED:,}; 0 skips it)",
    )
    parser.add_argument(
        "--no-postfix", action="store_true", help="skip Postfix's own queue manager"
    )
    parser.add_argument(
        "--big", action="store_true", help="also submit and deliver a 50 MB message"
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile", metavar="FILE", type=Path, help="py-spy the throughput daemon into FILE"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the non-editable venv even if current"
    )
    return parser.parse_args(argv)


def run_phases(args: argparse.Namespace, python: Path, sink: Path, work: Path) -> dict[str, Any]:
    """Every phase in turn; their results by name (the daemon's as Drain)."""
    results: dict[str, Any] = {}
    results["throughput_drain"] = drain_phase(
        python, sink, work / "throughput", args.messages, "throughput", args.profile
    )
    msmtp = shutil.which("msmtp")
    if msmtp is None:
        results["msmtp"] = {"skipped": "msmtp not found (apt-get install msmtp)"}
    elif args.msmtp_messages == 0:
        results["msmtp"] = {"skipped": "--msmtp-messages 0"}
    else:
        results["msmtp"] = msmtp_phase(msmtp, sink, work / "msmtp", args.msmtp_messages)
    if args.no_postfix:
        results["postfix"] = {"reason": "--no-postfix"}
    else:
        results["postfix"] = postfix_phase(sink, work / "postfix", args.messages)
    if args.queued:
        results["queued_drain"] = drain_phase(python, sink, work / "queued", args.queued, "memory")
    if args.big:
        results["big"] = big_phase(sink, work / "big")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(arguments)
    command = " ".join([shown(sys.executable), shown(__file__), *arguments])
    try:
        python = ensure_venv(args.rebuild)
        sink = ensure_smtp_sink()
    except SetupError as exc:
        log(f"cannot build the non-editable install: {exc}")
        return 1
    except Skip as exc:
        log(f"cannot run without smtp-sink: {exc}")
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="drain-", dir=CACHE))
    try:
        facts = machine_facts(python, work)
        before = conditions(work)
        results = run_phases(args, python, sink, work)
        facts["conditions"] = f"before: {before}; after: {conditions(work)}"
        out = report(results, facts, command, args.profile)
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
            log(f"results written to {args.json}")
    except (SetupError, Skip) as exc:
        log(f"benchmark setup failed: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
