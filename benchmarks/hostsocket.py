"""submit.py's host-mode contenders (SPEC §7): `relayd-sendmail` run as `nobody` through a root
`relayd daemon`'s submit socket, and `python -c pass` as `nobody`, the floor of that switch.

The daemon is started by the benchmark as root with its own throw-away HOME (`~/.msmtprc`
pointing at the run's smtp-sink, or at port 1 without one), SQLite queue
(`RELAYD_DATABASE_URL`), `RELAYD_CONFIG` (a relayd.toml with `[submit] listen = true`) and
`RELAYD_RUNTIME_DIR` in a 0755 directory every user can reach. The submitters run as `nobody`
with `setpriv --reuid --regid --clear-groups`, with a HOME of their own and no queue:
relayd-sendmail finds no `RELAYD_DATABASE_URL` and no daemon of its own and goes through the
socket, exiting 0 once the daemon has committed the message.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import CACHE, RECIPIENT, RUN_TIMEOUT, SENDER, Skip, clean_environment, xdg_dirs

START_TIMEOUT = 15.0  # seconds for the daemon's submit socket to appear
SETTLE_QUIET = 0.005  # the daemon used no CPU for this long: it is done with a submission
SETTLE_TIMEOUT = 3.0  # seconds settle() waits at most
STOP_TIMEOUT = 15.0  # seconds for the daemon to exit after SIGTERM, before SIGKILL
TARGET_MEDIAN_MS = 25.0  # SPEC §7: the caller's median through the host socket
WARM_UPS = 2  # the readiness submission here, and submit.py's untimed warm-up

SOCKET_NAME = "relayd-sendmail via host socket"
FLOOR_NAME = "python -c pass as nobody"


class HostFailed(Exception):
    """The host daemon did not start or took no warm-up submission; the message says why."""


@dataclass
class HostDaemon:
    """The running host daemon, and what a submitter as `nobody` needs to reach it."""

    prefix: list[str]  # setpriv ... (as nobody)
    user_env: dict[str, str]
    user_home: Path
    pid: int = 0
    queue: Path | None = None
    delivers: bool = False  # a sink runs: every message is sent at once
    settle_timeouts: int = 0  # settle() calls that gave up waiting
    rows: int | None = None  # messages in the host queue after the daemon stopped
    as_nobody: int | None = None  # of which submitted by nobody's uid
    stopped: str = "not stopped"
    notes: list[str] = field(default_factory=list)


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds all threads of `pid` have run so far (/proc schedstat: exact, unlike
    the clock ticks of /proc/PID/stat); 0 once it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total


def settle(host: HostDaemon) -> None:
    """Untimed, after each submission through the socket: wait until the daemon has delivered
    what it took (no message left to send, when a sink runs) and then used no CPU for
    SETTLE_QUIET. A host relay delivers each message just after it answered its submitter:
    without this wait that work (about 6 ms of CPU and two fsyncs over 10 ms) would fall on the
    contenders timed next, always the same ones."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while host.delivers and host.queue is not None and _unsent(host.queue):
        if time.monotonic() > deadline:
            host.settle_timeouts += 1
            return
        time.sleep(0.001)
    before, quiet_since = cpu_ns(host.pid), time.monotonic()
    while time.monotonic() - quiet_since < SETTLE_QUIET:
        if time.monotonic() > deadline:
            host.settle_timeouts += 1
            return
        time.sleep(0.001)
        now = cpu_ns(host.pid)
        if now != before:
            before, quiet_since = now, time.monotonic()


def _unsent(queue: Path) -> bool:
    """Whether the host queue holds a message still queued or being sent."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{queue}?mode=ro", uri=True)) as conn:
            row = conn.execute(
                "SELECT 1 FROM messages WHERE state IN ('queued', 'sending') LIMIT 1"
            ).fetchone()
    except sqlite3.Error:
        return False
    return row is not None


def nobody_prefix() -> tuple[list[str], int, int]:
    """The setpriv prefix that runs a command as `nobody`, its uid and gid; Skip if impossible."""
    if os.geteuid() != 0:
        raise Skip("needs root: the benchmark runs the host daemon as root and submits as nobody")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise Skip("setpriv not found (util-linux): cannot submit as another user")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("there is no user 'nobody' to submit as") from None
    prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return prefix, user.pw_uid, user.pw_gid


def private_home(home: Path, uid: int, gid: int) -> dict[str, str]:
    """`home` (0700, owned by uid) with the XDG directories; the variables naming them."""
    home.mkdir(mode=0o700)
    env = xdg_dirs(home)
    for dirpath, dirnames, filenames in os.walk(home):
        for name in [*dirnames, *filenames]:
            os.chown(Path(dirpath) / name, uid, gid)
    os.chown(home, uid, gid)
    return env


@contextlib.contextmanager
def host_daemon(venv: Path, message: Path, sink_port: int | None) -> Iterator[HostDaemon]:
    """Start the root host daemon, wait for its socket and one submission as nobody; stop it
    (SIGTERM, then SIGKILL) and count its queue when the block ends. Skip when not root or
    without setpriv, HostFailed when it does not come up."""
    prefix, uid, gid = nobody_prefix()
    root = Path(tempfile.mkdtemp(prefix="host-", dir=CACHE))
    try:
        root.chmod(0o755)  # nobody must reach run/ and its own home
        run = root / "run"
        run.mkdir(mode=0o755)
        daemon_env = clean_environment(os.environ)
        daemon_env.update(private_home(root / "daemon", 0, 0))
        rc = root / "daemon" / ".msmtprc"
        rc.write_text(
            f"account default\nhost 127.0.0.1\nport {sink_port or 1}\nfrom {SENDER}\n",
            encoding="ascii",
        )
        rc.chmod(0o600)
        config = root / "daemon" / "relayd.toml"
        config.write_text("[submit]\nlisten = true\n", encoding="ascii")
        queue = root / "daemon" / "queue.sqlite3"
        daemon_env.update(
            RELAYD_DATABASE_URL=f"sqlite:///{queue}",
            RELAYD_RUNTIME_DIR=str(run),
            RELAYD_CONFIG=str(config),
            RELAYD_MSMTPRC_SYSTEM=str(root / "daemon" / "no-system-msmtprc"),
        )
        user_home = root / "nobody"
        user_env = clean_environment(os.environ)
        user_env.update(private_home(user_home, uid, gid))
        user_env.update(
            RELAYD_RUNTIME_DIR=str(run),
            RELAYD_MSMTPRC_SYSTEM=str(user_home / "no-system-msmtprc"),
        )
        host = HostDaemon(prefix, user_env, user_home)
        log_path = root / "daemon.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [str(venv / "bin" / "relayd"), "daemon"],
                env=daemon_env,
                cwd=root / "daemon",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        host.pid, host.queue, host.delivers = proc.pid, queue, sink_port is not None
        try:
            wait_for_socket(proc, run / "submit", log_path)
            warm_up(host, venv, message, log_path)
            yield host
        finally:
            host.stopped = stop_daemon(proc)
            host.rows, host.as_nobody = count_rows(queue, uid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()[-2:]
    return " / ".join(lines) or "no output"


def wait_for_socket(proc: subprocess.Popen[bytes], path: Path, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.is_socket():
        if proc.poll() is not None:
            raise HostFailed(f"the host daemon exited {proc.returncode}: {log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise HostFailed(f"no submit socket after {START_TIMEOUT:g} s: {log_tail(log_path)}")
        time.sleep(0.02)


def warm_up(host: HostDaemon, venv: Path, message: Path, log_path: Path) -> None:
    """One submission as nobody, untimed: the daemon is ready when it is committed."""
    with message.open("rb") as stdin:
        try:
            done = subprocess.run(
                [*host.prefix, str(venv / "bin" / "relayd-sendmail"), RECIPIENT],
                env=host.user_env,
                cwd=host.user_home,
                stdin=stdin,
                capture_output=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HostFailed(f"the readiness submission took over {RUN_TIMEOUT:g} s") from None
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise HostFailed(
            f"the readiness submission as nobody exited {done.returncode}: {error[0]}"
            f" (daemon: {log_tail(log_path)})"
        )


def stop_daemon(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, wait, SIGKILL on timeout; how it ended."""
    if proc.poll() is not None:
        return f"had exited by itself ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        return f"exit {proc.wait(timeout=STOP_TIMEOUT)} after SIGTERM"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        return f"killed: still running {STOP_TIMEOUT:g} s after SIGTERM"


def count_rows(queue: Path, uid: int) -> tuple[int | None, int | None]:
    """Messages in the host queue, and how many of them nobody's uid submitted."""
    if not queue.exists():
        return None, None
    try:
        with contextlib.closing(sqlite3.connect(queue)) as conn:
            total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            mine = conn.execute(
                "SELECT count(*) FROM messages WHERE submitted_uid = ?", (uid,)
            ).fetchone()[0]
    except sqlite3.Error:
        return None, None
    return int(total), int(mine)


def queue_fact(host: HostDaemon | None, runs: int, timed: int) -> str:
    """The host queue's line among the machine facts."""
    if host is None:
        return "no host daemon ran"
    expected = timed + WARM_UPS
    verdict = "all landed" if host.rows == expected else "MISMATCH"
    return (
        f"{host.rows} in the host daemon's queue, {host.as_nobody} of them from nobody"
        f" ({timed} timed of {runs} runs + {WARM_UPS} warm-ups = {expected} expected:"
        f" {verdict}); daemon {host.stopped}; waits for it to settle that timed out:"
        f" {host.settle_timeouts}"
    )


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the socket's cost beside the direct submission and SPEC §7's target; the figures."""
    sock, direct = results.get(SOCKET_NAME, {}), results.get("relayd-sendmail", {})
    floor, python = results.get(FLOOR_NAME, {}), results.get("python -c pass", {})
    out: dict[str, Any] = {}
    if "median_ms" in sock and "median_ms" in direct:
        out["socket_to_direct"] = round(sock["median_ms"] / direct["median_ms"], 3)
        print(
            f"relayd-sendmail via host socket / direct (medians): {out['socket_to_direct']:.2f}"
            f" ({sock['median_ms']:.2f} ms vs {direct['median_ms']:.2f} ms,"
            f" {sock['median_ms'] - direct['median_ms']:+.2f} ms)"
        )
    if "median_ms" in floor and "median_ms" in python:
        out["setpriv_ms"] = round(floor["median_ms"] - python["median_ms"], 3)
        print(f"setpriv to nobody adds {out['setpriv_ms']:+.2f} ms to python -c pass (medians)")
        if "median_ms" in sock:
            print(
                "via host socket less its floor (python -c pass as nobody):"
                f" {sock['median_ms'] - floor['median_ms']:.2f} ms"
            )
    print("SPEC §7 host socket target (caller's wall clock, as nobody, 10 KB message, durable):")
    target = f"Through the host socket (SPEC §7) median ≤ {TARGET_MEDIAN_MS:g} ms for the caller"
    if "median_ms" not in sock:
        why = sock.get("skipped") or sock.get("failed") or "not run"
        verdict = "N/A " if "skipped" in sock else "FAIL"
        print(f"  {verdict}  {target}: no figures ({why})")
        out["target"] = {"target": target, "pass": None if "skipped" in sock else False}
        out["target"]["reason"] = why
        return out
    passed = sock["median_ms"] <= TARGET_MEDIAN_MS
    print(
        f"  {'PASS' if passed else 'FAIL'}  {target}: {sock['median_ms']:.2f} ms"
        f" (limit {TARGET_MEDIAN_MS:.2f} ms)"
    )
    out["target"] = {
        "target": target,
        "value_ms": sock["median_ms"],
        "limit_ms": TARGET_MEDIAN_MS,
        "pass": passed,
    }
    return out
