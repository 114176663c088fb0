"""A py-spy profile of a running process during a benchmark's timed part, and its summary.

Only the thread holding the GIL is sampled (`--gil`): a Python process does one thing at a
time, and what it does then is what limits its rate; threads waiting in a system call (an
fsync) or for the GIL do not show.

`listen.py --profile FILE` uses it: py-spy (`pip install py-spy`; found beside the running
interpreter or on PATH) samples the daemon and its child processes (`--subprocesses`: the
listener's workers) while smtp-source runs and writes collapsed stacks
("raw" format: one line per distinct stack, `frame;frame;... count`) to FILE; the summary
prints the functions where the samples were taken (self) and those on the stack (inclusive).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

RATE = 200  # samples a second
# Leaf frames where a thread waits (py-spy does not always see those threads as idle).
WAITING = ("_worker (futures/thread.py)", "EpollSelector.select (selectors.py)", "Condition.wait")
# Frames on nearly every stack (thread and event loop machinery, the CLI): not worth listing.
PLUMBING = ("threading.py", "futures/thread.py", "asyncio/", "typer/", "click/", "(relayd)")
STOP_TIMEOUT = 30.0  # seconds for py-spy to write its file after SIGINT


def binary() -> str | None:
    """py-spy beside this interpreter, else on PATH; None when it is not installed."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, output: Path) -> Iterator[None]:
    """Sample `pid` (all its threads, idle ones left out) into `output` while the body runs."""
    spy = binary()
    if spy is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--gil",
        "--subprocesses",
    ]
    proc = subprocess.Popen(
        [*argv, "--nonblocking", "--output", str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _frame(text: str) -> str:
    """`function (file.py:line)` -> `function (file.py)`: one entry per function."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def summary(path: Path, top: int = 5) -> list[str]:
    """The `top` functions by self samples and by inclusive samples (without the plumbing),
    as printable lines; samples whose leaf is a wait are counted apart."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1].startswith(WAITING):
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(part in frame for part in PLUMBING):
                inclusive[frame] += count
    if not total:
        return ["  no samples"]
    lines = [f"  {total} busy samples ({waiting} more waiting); self:"]
    lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive (on the stack):")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top * 3)]
    return lines
