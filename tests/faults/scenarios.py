"""The fault scenarios of issue 12: each builds a World under `root`, injects its faults, lets the
daemon drain, and returns its Figures. Shared by tests/faults/test_*.py and `python -m
tests.faults` (the README table). Every scenario is bounded (about a minute at most).

Why this module is long: ten scenarios and their shared drain step read best side by side.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.harness import Daemon, World, hold_write_lock, wait_until
from tests.faults.measure import TRACEBACK, Figures, measure, read_queue

FAST = (
    '[retry]\nfirst = "1s"\nmax = "2s"\n'
    "[delivery]\nconnections_per_account = 2\nmessages_per_connection = 4\n"
)
SEED = 0x12_5EED


def _undrained(world: World) -> bool:
    messages, _ = read_queue(world.url)
    return not any(m.state in {"queued", "sending"} for m in messages)


def drain(world: World, daemon: Daemon, deadline: float) -> int:
    """Wait (until `deadline`, monotonic) for nothing to be queued or sending; then SIGTERM the
    daemon and return its exit code. A `queue flush` now and then makes retries due."""
    flushed = time.monotonic()
    while time.monotonic() < deadline and not _undrained(world):
        assert daemon.proc.poll() is None, daemon.stderr()
        if time.monotonic() - flushed > 3:
            world.relayd("queue", "flush", timeout=20)
            flushed = time.monotonic()
        time.sleep(0.2)
    return daemon.stop()


def _finish(
    world: World,
    name: str,
    started: float,
    *,
    fault_times: list[float],
    kill_times: list[float] = (),  # type: ignore[assignment]
    server_kills: list[tuple[float, float]] = (),  # type: ignore[assignment]
    expected_unsent: set[str] | None = None,
    other: list[str] | None = None,
) -> Figures:
    figures = measure(
        name,
        keys=world.keys,
        events=world.server.events(),
        url=world.url,
        stderr=world.daemon_stderr(),
        fault_times=fault_times,
        kill_times=list(kill_times),
        server_kills=list(server_kills),
        seconds=time.monotonic() - started,
        expected_unsent=expected_unsent or set(),
    )
    figures.other.extend(other or [])
    harness = [t for t in world.server.stderr_texts() if TRACEBACK in t]
    assert not harness, f"the recording server failed: {harness[0][-2000:]}"
    return figures


def _world(root: Path, settings: str = FAST, *, url: str | None = None, rc: str = "") -> World:
    world = World(root, url=url)
    world.server.start()
    world.msmtprc(rc)
    world.settings(settings)
    return world


# -- a. the daemon SIGKILLed again and again ----------------------------------------------------


def daemon_kills(root: Path, *, messages: int = 500, kills: int = 15, seed: int = SEED) -> Figures:
    started = time.monotonic()
    world = _world(root)
    try:
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": 0.01}])
        world.enqueue(messages)
        rng = random.Random(seed)
        kill_times = []
        for _ in range(kills):
            daemon = world.daemon()
            time.sleep(rng.uniform(0.05, 0.5))
            kill_times.append(time.time())
            daemon.kill()
        code = drain(world, world.daemon(), started + 45)
        other = [] if code == 0 else [f"final daemon exit {code}"]
        return _finish(
            world,
            "daemon_sigkill",
            started,
            fault_times=kill_times,
            kill_times=kill_times,
            other=other,
        )
    finally:
        world.close()


# -- b. the server SIGKILLed while it receives a message -----------------------------------------


def _in_data(world: World) -> bool:
    """Some connection is between DATA and its final reply."""
    state: dict[str, str] = {}
    for event in world.server.events():
        if event.kind in {"data", "body"}:
            state[event.conn] = event.kind
        elif event.kind in {"accept", "refuse", "vanish", "close"}:
            state.pop(event.conn, None)
    return bool(state)


def upstream_kills(root: Path, *, messages: int = 200, kills: int = 3) -> Figures:
    started = time.monotonic()
    world = _world(root)
    try:
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": 0.05}])
        world.enqueue(messages, body_bytes=64 * 1024)
        daemon = world.daemon()
        fault_times = []
        server_kills = []
        for _ in range(kills):
            time.sleep(0.3)
            wait_until(lambda: _in_data(world), 15, "a transaction in DATA", step=0.002)
            fault_times.append(time.time())
            world.server.kill()
            server_kills.append((fault_times[-1], time.time()))
            world.server.start()  # same port
        code = drain(world, daemon, started + 45)
        return _finish(
            world,
            "upstream_sigkill_mid_data",
            started,
            fault_times=fault_times,
            server_kills=server_kills,
            other=[] if code == 0 else [f"daemon exit {code}"],
        )
    finally:
        world.close()


# -- c. the server vanishes after the final dot --------------------------------------------------


def vanish_after_data(root: Path, *, messages: int = 200, faults: int = 10) -> Figures:
    started = time.monotonic()
    world = _world(root)
    try:
        world.server.set_faults([{"stage": "END", "action": "drop", "every": 9, "limit": faults}])
        world.enqueue(messages)
        code = drain(world, world.daemon(), started + 45)
        times = [e.at for e in world.server.events() if e.detail == "END:drop"]
        return _finish(
            world,
            "vanish_after_data",
            started,
            fault_times=times,
            other=[] if code == 0 else [f"daemon exit {code}"],
        )
    finally:
        world.close()


# -- d. the disk fills up while results are recorded ---------------------------------------------


def _small_filesystem(cleanups: list[Callable[[], object]], directory: Path, size: str) -> bool:
    """A tmpfs of `size` at `directory` (unmounted at close); False when mounting fails."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        return False
    cleanups.append(
        lambda: subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)
    )
    return True


def disk_full(root: Path, *, messages: int = 300) -> Figures:
    started = time.monotonic()
    small = root / "small"
    cleanups: list[Callable[[], object]] = []
    mounted = _small_filesystem(cleanups, small, "8m")
    world = World(root, queue_dir=small / "queue" if mounted else None)
    world.cleanups.extend(cleanups)
    try:
        world.server.start()
        world.msmtprc()
        world.settings(FAST)
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": 0.05}])
        world.enqueue(messages, body_bytes=2000)
        filler = small / "filler"
        if mounted:
            # The disk fills up while the daemon delivers: results arrive and cannot be
            # recorded (claims fail too from then on).
            daemon = world.daemon()
            wait_until(
                lambda: sum(e.kind == "accept" for e in world.server.events()) >= 20, 20, "20"
            )
            with contextlib.suppress(OSError), open(filler, "wb") as out:
                while True:  # until ENOSPC (already full: the fault is there)
                    out.write(b"\0" * 4096)
                    out.flush()
        else:
            import resource  # the fallback: writes beyond the file size fail with EFBIG

            limit = world.sqlite_file.stat().st_size + 48 * 1024

            def cap() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            daemon = world.daemon(preexec=cap)
        time.sleep(6)  # deliver until the space runs out
        fault_times = [time.time()]
        first_code = daemon.stop()
        filler.unlink(missing_ok=True)
        code = drain(world, world.daemon(), started + 45)
        return _finish(
            world,
            "disk_full",
            started,
            fault_times=fault_times,
            other=[] if code == 0 else [f"daemon exit {code}"],
        ).with_extra(mounted=mounted, first_exit=first_code)
    finally:
        world.close()


# -- e. another process holds the SQLite write lock for 30 s -------------------------------------


def write_lock(root: Path, *, messages: int = 200, seconds: float = 30) -> Figures:
    started = time.monotonic()
    world = _world(root)
    try:
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": 0.02}])
        world.enqueue(messages)
        daemon = world.daemon()
        wait_until(lambda: sum(e.kind == "accept" for e in world.server.events()) >= 20, 20, "20")
        fault_times = [time.time()]
        holder = hold_write_lock(world, seconds)
        holder.wait(seconds + 15)
        code = drain(world, daemon, started + 46)
        return _finish(
            world,
            "write_lock_30s",
            started,
            fault_times=fault_times,
            other=[] if code == 0 else [f"daemon exit {code}"],
        )
    finally:
        world.close()


# -- f. read-only commands and an unwritable queue -----------------------------------------------


def _one_line_answer(
    what: str, result: subprocess.CompletedProcess[str], ok: set[int]
) -> list[str]:
    """What is wrong with a command's answer: a traceback, several error lines, a bad code."""
    wrong = []
    if TRACEBACK in result.stderr or TRACEBACK in result.stdout:
        wrong.append(f"{what}: traceback")
    if result.returncode != 0 and len(result.stderr.strip().splitlines()) != 1:
        wrong.append(f"{what}: {len(result.stderr.strip().splitlines())} error lines")
    if result.returncode not in ok:
        wrong.append(f"{what}: exit {result.returncode} {result.stderr.strip()[:200]!r}")
    return wrong


SYSEXITS = set(range(64, 79))


def read_only(root: Path) -> Figures:
    started = time.monotonic()
    world = _world(root)
    wrong: list[str] = []
    try:
        world.enqueue(5)
        holder = hold_write_lock(world, 20)
        ok = {0} | SYSEXITS  # reading may wait for the lock and give up: with one line
        for args in (("queue", "list"), ("status",)):
            result = world.relayd(*args, timeout=40)
            answer = _one_line_answer(f"{' '.join(args)} under a held write lock", result, ok)
            wrong += answer
        holder.kill()
        holder.wait(10)
        ro = root / "ro"
        if _small_filesystem(world.cleanups, ro, "1m"):
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            where = ro / "queue.sqlite3"
        else:
            (root / "a-file").write_text("")
            where = root / "a-file" / "queue.sqlite3"
        env = {"RELAYD_DATABASE_URL": f"sqlite:///{where}"}
        daemon = world.daemon(ready=False, env=env)
        try:
            code = daemon.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = daemon.stop()
            wrong.append("daemon on an unwritable queue kept running")
        err = daemon.stderr()
        fake = subprocess.CompletedProcess[str]([], code, "", err)
        wrong += _one_line_answer("daemon on an unwritable queue", fake, SYSEXITS)
        world.keys.clear()  # nothing is delivered here: no mail figures
        figures = _finish(world, "read_only", started, fault_times=[], other=wrong)
        figures.messages, figures.stuck = 0, []  # its five messages are never meant to be sent
        return figures
    finally:
        world.close()


# -- g. a final reply slower than the lease ------------------------------------------------------


def slow_final_reply(root: Path, *, delay: float = 12.0) -> Figures:
    started = time.monotonic()
    settings = FAST.replace(
        "messages_per_connection = 4", 'messages_per_connection = 1\ntimeout = "2s"'
    )
    world = _world(root, settings, rc="timeout 10\n")
    other: list[str] = []
    try:
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": delay, "limit": 1}])
        (key,) = world.enqueue(1)
        daemon = world.daemon()
        first = wait_until(
            lambda: [e for e in world.server.events() if e.kind == "body" and e.key == key],
            15,
            "the body",
        )[0]
        closed = wait_until(
            lambda: [
                e for e in world.server.events() if e.kind == "close" and e.conn == first.conn
            ],
            delay + 15,
            "the first connection to end",
        )[0]
        if "ended without a result" in daemon.stderr():
            other.append("'ended without a result' logged while the first attempt was open")
        second = [
            e
            for e in world.server.events()
            if e.kind == "mail" and e.key == key and e.conn != first.conn and e.at < closed.at
        ]
        if second:
            other.append(f"handed to a second connection {len(second)}x while the first was open")
        code = drain(world, daemon, started + 45)
        return _finish(
            world,
            "slow_final_reply",
            started,
            fault_times=[first.at],
            other=other + ([] if code == 0 else [f"daemon exit {code}"]),
        )
    finally:
        world.close()


# -- h. hold, release and delete while sending ---------------------------------------------------


def hold_while_sending(root: Path) -> Figures:
    started = time.monotonic()
    settings = FAST.replace("messages_per_connection = 4", "messages_per_connection = 1")
    world = _world(root, settings)
    other: list[str] = []
    try:
        held, deleted = world.enqueue(2)
        world.server.set_faults(
            [
                {
                    "stage": "END",
                    "action": "reply",
                    "reply": "451 4.3.0 later",
                    "delay": 4,
                    "keys": [held],
                    "limit": 1,
                },
                {"stage": "END", "action": "delay", "delay": 4, "keys": [deleted], "limit": 1},
            ]
        )
        daemon = world.daemon()
        wait_until(
            lambda: {e.key for e in world.server.events() if e.kind == "body"} >= {held, deleted},
            15,
            "both bodies",
        )
        for what, key, ok in (("hold", held, {0}), ("delete", deleted, {0} | SYSEXITS)):
            result = world.relayd(
                "queue", what, *([world.keys[key]] + (["--yes"] if what == "delete" else []))
            )
            other += _one_line_answer(f"queue {what} while sending", result, ok)
        wait_until(
            lambda: (
                {e.key for e in world.server.events() if e.kind in {"accept", "refuse"}}
                >= {held, deleted}
            ),
            15,
            "replies",
        )

        def state_of(key: str) -> str | None:
            messages, _ = read_queue(world.url)
            found = [m for m in messages if m.queue_id == world.keys[key]]
            return found[0].state if found else None

        try:
            wait_until(lambda: state_of(held) == "held", 10, "the hold after the attempt")
        except TimeoutError:
            other.append(f"after the attempt the held message is {state_of(held)}, not held")
        messages, _ = read_queue(world.url)
        for m in messages:
            if m.state == "held" and m.pending == 0:
                other.append("held with no recipient pending")
        release = world.relayd("queue", "release", world.keys[held])
        other += _one_line_answer("queue release", release, {0})
        code = drain(world, daemon, started + 45)
        if "delivery stopped by an internal error" in "".join(world.daemon_stderr()):
            other.append("'delivery stopped by an internal error' in the daemon log")
        return _finish(
            world,
            "hold_while_sending",
            started,
            fault_times=[],
            expected_unsent={deleted},
            other=other + ([] if code == 0 else [f"daemon exit {code}"]),
        )
    finally:
        world.close()


# -- i. two daemons on one PostgreSQL queue ------------------------------------------------------


def two_daemons(root: Path, url: str, *, messages: int = 300, kills: int = 3) -> Figures:
    started = time.monotonic()
    # A killed daemon's leases come back when they expire: 4 x 3 s here, not 4 x 60 s.
    world = _world(root, FAST + 'timeout = "3s"\n', url=url)
    try:
        world.server.set_faults([{"stage": "END", "action": "delay", "delay": 0.02}])
        world.enqueue(messages)
        other_env = {"RELAYD_RUNTIME_DIR": str(root / "run2")}
        rng = random.Random(SEED)
        first = world.daemon()
        kill_times = []
        for _ in range(kills):
            second = world.daemon(env=other_env)
            time.sleep(rng.uniform(0.2, 0.8))
            kill_times.append(time.time())
            second.kill()
        second = world.daemon(env=other_env)
        code = drain(world, first, started + 45)
        code2 = second.stop()
        both = {e.conn.split(".")[0] for e in world.server.events()}
        return _finish(
            world,
            "two_daemons_postgresql",
            started,
            fault_times=kill_times,
            kill_times=kill_times,
            other=[f"exit {c}" for c in (code, code2) if c != 0],
        ).with_extra(server_processes=len(both))
    finally:
        world.close()


# -- j. a server that never greets, and 10,000 due messages --------------------------------------


def silent_server(root: Path, *, messages: int = 10_000, timeout: int = 3) -> Figures:
    started = time.monotonic()
    settings = FAST.replace(
        "messages_per_connection = 4", f'messages_per_connection = 100\ntimeout = "{timeout}s"'
    )
    world = _world(root, settings)
    other: list[str] = []
    try:
        world.server.set_faults([{"stage": "GREETING", "action": "silent"}])
        world.enqueue(messages)
        daemon = world.daemon()
        time.sleep(1.0)
        first_pass = {m.queue_id for m in read_queue(world.url)[0] if m.state == "sending"}
        time.sleep(2 * timeout + 2)
        messages_now, attempts = read_queue(world.url)
        still = sum(1 for m in messages_now if m.queue_id in first_pass and m.state == "sending")
        connects = sum(1 for e in world.server.events() if e.kind == "connect")
        if still:
            other.append(
                f"{still} of {len(first_pass)} messages of the first pass still sending"
                f" after {2 * timeout + 2} s"
            )
        if len(attempts) > connects:
            other.append(f"{len(attempts)} attempt rows for {connects} connections")
        world.server.set_faults([])
        code = drain(world, daemon, started + 46)
        return _finish(
            world,
            "silent_server",
            started,
            fault_times=[],
            other=other + ([] if code == 0 else [f"daemon exit {code}"]),
        ).with_extra(connects_in_window=connects, rows_in_window=len(attempts))
    finally:
        world.close()


SCENARIOS: dict[str, Callable[[Path], Figures]] = {
    "daemon_sigkill": daemon_kills,
    "upstream_sigkill_mid_data": upstream_kills,
    "vanish_after_data": vanish_after_data,
    "disk_full": disk_full,
    "write_lock_30s": write_lock,
    "read_only": read_only,
    "slow_final_reply": slow_final_reply,
    "hold_while_sending": hold_while_sending,
    "silent_server": silent_server,
}
