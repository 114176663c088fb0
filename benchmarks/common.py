"""What the benchmarks share: the non-editable venv, Postfix's smtp-sink, a throw-away HOME, facts.

`submit.py` and `drain.py` import it (they run as scripts, so this directory is on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pwd
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache"
VENV = CACHE / "venv"
VENV_STAMP = VENV / "relayd-benchmark-stamp.json"
POSTFIX_DIR = CACHE / "postfix"
SMTP_SINK = POSTFIX_DIR / "root" / "usr" / "sbin" / "smtp-sink"
POSTFIX_LIBS = POSTFIX_DIR / "root" / "usr" / "lib" / "postfix"

RUN_TIMEOUT = 10.0  # seconds for one timed process
SETUP_TIMEOUT = 300.0  # seconds for venv creation, pip install, apt-get download
SINK_START_TIMEOUT = 5.0
SINK_STOP_TIMEOUT = 5.0
MESSAGE_SIZE = 10 * 1024
RECIPIENT = "you@example.org"
SENDER = "me@example.org"

# The project's files that go into the package; a change to any of them rebuilds the venv.
PACKAGE_FILES = ("pyproject.toml", "README.rst", "MANIFEST.in", "LICENSE", "setup.cfg")
PACKAGE_DIRS = ("relayd", "migrations", "bin")  # migrations/ installs as relayd.migrations


class SetupError(Exception):
    """The benchmark cannot run at all (for example the venv cannot be built)."""


class Skip(Exception):
    """One contender cannot run here; the message says why."""


# --- small helpers ---------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_checked(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a setup command; its stdout, or SetupError with the tail of its output."""
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{' '.join(argv)} exited {done.returncode}: " + " / ".join(tail))
    return done.stdout


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/self/mountinfo), or "unknown"."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, right.split()[0]
    return kind


def fsync_probe(directory: Path, count: int = 20) -> float:
    """Median milliseconds of `count` fsync()s after a 4 KiB write: the disk's durability price,
    which moves with other I/O on the machine (it explains a slow bare insert)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    times = []
    try:
        for n in range(count):
            os.pwrite(fd, os.urandom(4096), (n % 4) * 4096)
            start = time.perf_counter_ns()
            os.fsync(fd)
            times.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def conditions(directory: Path) -> str:
    """Load average and fsync latency now, to print beside the figures."""
    return f"load {os.getloadavg()[0]:.2f}, fsync {fsync_probe(directory):.2f} ms"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --- the non-editable install ----------------------------------------------------------------


def package_inputs() -> list[Path]:
    """The files a `pip install <repo>` builds from (bytecode caches excluded)."""
    found = [REPO / name for name in PACKAGE_FILES if (REPO / name).is_file()]
    for top in PACKAGE_DIRS:
        for dirpath, dirnames, filenames in os.walk(REPO / top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return found


def venv_python() -> Path:
    return VENV / "bin" / "python"


def venv_is_current(inputs: Sequence[Path], base: str) -> bool:
    try:
        stamp = json.loads(VENV_STAMP.read_text())
        built = VENV_STAMP.stat().st_mtime
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("base") != base:
        return False
    if not venv_python().exists() or not (VENV / "bin" / "relayd-sendmail").exists():
        return False
    return all(path.stat().st_mtime < built for path in inputs)


def ensure_venv(force: bool) -> Path:
    """A venv holding a regular (non-editable) `pip install` of this checkout; its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    inputs = package_inputs()
    if not force and venv_is_current(inputs, base):
        log(f"using cached non-editable install in {VENV}")
        return venv_python()
    log(f"building a non-editable install of {REPO} in {VENV} ...")
    CACHE.mkdir(parents=True, exist_ok=True)
    run_checked([sys.executable, "-m", "venv", "--clear", str(VENV)], timeout=SETUP_TIMEOUT)
    # Build from a copy, so that setuptools' build/ and *.egg-info land in the cache, not in
    # the checkout (and no stale build/lib from an earlier build can leak into the wheel).
    with tempfile.TemporaryDirectory(prefix="src-", dir=CACHE) as staging:
        for path in inputs:
            target = Path(staging) / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        pip = [str(venv_python()), "-m", "pip", "install", "--quiet", staging]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.pop("VIRTUAL_ENV", None)
        run_checked(pip, timeout=SETUP_TIMEOUT, env=env)
    VENV_STAMP.write_text(json.dumps({"base": base, "repo": str(REPO)}) + "\n")
    return venv_python()


# --- smtp-sink -------------------------------------------------------------------------------


def ensure_smtp_sink() -> Path:
    """Postfix's smtp-sink, unpacked from `apt-get download postfix` (cached); Skip if not."""
    if SMTP_SINK.exists():
        return SMTP_SINK
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Skip(f"{tool} not found (needed to fetch Postfix's smtp-sink)")
    POSTFIX_DIR.mkdir(parents=True, exist_ok=True)
    debs = sorted(POSTFIX_DIR.glob("postfix_*.deb"))
    if not debs:
        log("fetching smtp-sink: apt-get download postfix ...")
        try:
            run_checked(["apt-get", "download", "postfix"], cwd=POSTFIX_DIR, timeout=SETUP_TIMEOUT)
        except SetupError as exc:
            raise Skip(f"apt-get download postfix failed: {exc}") from None
        debs = sorted(POSTFIX_DIR.glob("postfix_*.deb"))
    if not debs:
        raise Skip("apt-get download postfix produced no postfix_*.deb")
    try:
        run_checked(
            ["dpkg-deb", "-x", str(debs[-1]), str(POSTFIX_DIR / "root")], timeout=SETUP_TIMEOUT
        )
    except SetupError as exc:
        raise Skip(f"cannot unpack {debs[-1].name}: {exc}") from None
    if not SMTP_SINK.exists():
        raise Skip(f"{debs[-1].name} holds no usr/sbin/smtp-sink")
    return SMTP_SINK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def smtp_sink(binary: Path, log_path: Path, counts: Path | None = None) -> Iterator[int]:
    """Run smtp-sink on an ephemeral port of 127.0.0.1 (accepting and discarding mail); the port.

    With `counts`, smtp-sink runs with -c and its running counters go to that file (read them
    with `sink_messages`). Stopped (TERM, then KILL) when the block ends, whatever happens in it.
    """
    env = dict(os.environ, LD_LIBRARY_PATH=str(POSTFIX_LIBS))
    # As root smtp-sink insists on dropping its privileges to a named user.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    if user:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            raise Skip("running as root and there is no user 'nobody' for smtp-sink -u") from None
    flags = ["-c"] if counts is not None else []
    with contextlib.ExitStack() as files:
        errors = files.enter_context(log_path.open("ab"))
        out: IO[bytes] | int = subprocess.DEVNULL
        if counts is not None:
            out = files.enter_context(counts.open("wb"))
        for _ in range(3):  # the port may be taken between free_port() and smtp-sink's bind
            port = free_port()
            proc = subprocess.Popen(
                [str(binary), *user, *flags, f"127.0.0.1:{port}", "100"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=errors,
            )
            try:
                deadline = time.monotonic() + SINK_START_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    if accepting(port):
                        break
                    time.sleep(0.02)
                else:
                    continue  # exited, or never listened: try another port
                yield port
                return
            finally:
                stop(proc)
    reason = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    raise Skip(f"smtp-sink did not start: {reason[0]}")


def sink_messages(counts: Path) -> int | None:
    """Messages smtp-sink -c received (its last "mesg=N" counter), None if it printed none.

    -c rewrites one line with carriage returns at every end of a message or session.
    """
    try:
        found = re.findall(rb"mesg=(\d+)", counts.read_bytes())
    except OSError:
        return None
    return int(found[-1]) if found else None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=SINK_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=SINK_STOP_TIMEOUT)


# --- the environment of the timed processes --------------------------------------------------


def clean_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` without what would change how Python, relayd or msmtp start or where they look."""
    drop_prefixes = ("PYTHON", "RELAYD_", "XDG_", "MSMTP")
    env = {k: v for k, v in base.items() if not k.startswith(drop_prefixes)}
    env.pop("VIRTUAL_ENV", None)
    env.pop("LD_LIBRARY_PATH", None)
    return env


def make_message() -> bytes:
    """From/To/Subject and a 10 KiB body of 128 lines of 80 characters (LF line ends)."""
    head = f"From: {SENDER}\nTo: {RECIPIENT}\nSubject: relayd submission benchmark\n\n"
    body = "".join(f"line {n:03d} ".ljust(79, "x") + "\n" for n in range(MESSAGE_SIZE // 80))
    return (head + body).encode("ascii")


def xdg_dirs(home: Path) -> dict[str, str]:
    """HOME and its XDG directories (made 0700); the variables naming them."""
    env = {"HOME": str(home)}
    for name, rel in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        (home / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(home / rel)
    return env


def make_home(work: Path, port: int | None) -> dict[str, str]:
    """A throw-away HOME with ~/.msmtprc and the XDG directories; the environment using it."""
    home = work / "home"
    env = clean_environment(os.environ)
    env.update(xdg_dirs(home))
    rc = home / ".msmtprc"
    # Without a sink, port 9 (discard) keeps the file valid; msmtp is skipped then anyway.
    rc.write_text(
        f"account default\nhost 127.0.0.1\nport {port or 9}\nfrom {SENDER}\n", encoding="ascii"
    )
    rc.chmod(0o600)
    env["RELAYD_DATABASE_URL"] = "sqlite:///" + str(work / "queue.sqlite3")
    return env


# --- timing ----------------------------------------------------------------------------------


def wait_for_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Reap `proc` as soon as it exits; False if it is still running after `timeout` seconds."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: a polling wait (1 ms steps at first)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
    finally:
        os.close(pidfd)
    proc.wait()  # it has exited: this waitpid() returns at once
    return True


def machine_facts(python: Path, work: Path) -> dict[str, str]:
    probe = (
        "import sys, sqlite3; print(sys.version.split()[0]); print(sqlite3.sqlite_version);"
        " print(getattr(sys, '_base_executable', sys.executable))"
    )
    version, sqlite_version, base = run_checked(
        [str(python), "-c", probe], timeout=RUN_TIMEOUT
    ).split("\n")[:3]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    facts = {
        "nproc": str(affinity or os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": version,
        "sqlite": sqlite_version,
        "interpreter": f"{python} (base {base})",
        "queue filesystem": f"{filesystem_type(work)} ({work.parent})",
    }
    msmtp = shutil.which("msmtp")
    if msmtp:
        with contextlib.suppress(SetupError):
            first = run_checked([msmtp, "--version"], timeout=RUN_TIMEOUT).splitlines()[:1]
            facts["msmtp"] = f"{msmtp}: {first[0] if first else '?'}"
    debs = sorted(POSTFIX_DIR.glob("postfix_*.deb"))
    if debs:
        facts["smtp-sink"] = f"from {debs[-1].name}"
    return facts


def shown(path: str) -> str:
    """`path` relative to the current directory when it is below it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


def command_line(script: str, arguments: Sequence[str]) -> str:
    """How this benchmark was run, as printed beside its figures."""
    return " ".join([shown(sys.executable), shown(script), *arguments])
