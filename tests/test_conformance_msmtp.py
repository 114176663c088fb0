"""Side-by-side conformance with Debian's msmtp 1.8.23 (issue 2, item 6).

Every case of ``tests/msmtp_cases.py`` is run with ``msmtp`` and with ``relayd-sendmail``, each in
its own fresh HOME with identical files, environment and stdin. stdout, stderr and the exit code
must be identical, except for the program name at the start of a line (``msmtp: `` or
``relayd-sendmail: ``) and the HOME path of the run, which both become tokens before comparing.

No case contacts a server: they use ``--pretend`` or fail before connecting.

Without msmtp on PATH the test skips, unless RELAYD_REQUIRE_MSMTP=1 (set in CI): then it fails.

To see what msmtp (or relayd-sendmail) prints for some cases while writing them::

    .venv/bin/python -m tests.test_conformance_msmtp [--relayd] [CASE-ID-SUBSTRING ...]
"""

from __future__ import annotations

import difflib
import functools
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.msmtp_cases import CASES, HOME_TOKEN, Case, Deliberate

MSMTP_VERSION = "msmtp version 1.8.23"
RELAYD_NAME = "relayd-sendmail"
UNPRIVILEGED_ID = 65534  # nobody / nogroup
RUN_TIMEOUT = 10.0
_PROGRAM_PREFIX = re.compile(r"^(?:msmtp|relayd-sendmail): ", re.MULTILINE)


@dataclass(frozen=True)
class Program:
    """An executable and the argv[0] it is started with."""

    path: str
    argv0: str


@dataclass(frozen=True)
class Outcome:
    """What one program did for one case, normalized for comparison."""

    returncode: int
    stdout: str
    stderr: str


def _required() -> bool:
    return os.environ.get("RELAYD_REQUIRE_MSMTP") == "1"


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (RELAYD_REQUIRE_MSMTP=1)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _msmtp() -> Program | str:
    """msmtp 1.8.23 from PATH, or the reason it cannot be used."""
    path = shutil.which("msmtp")
    if path is None:
        return "msmtp is not installed (apt-get install msmtp); the conformance suite needs it"
    try:
        version = subprocess.run(
            [path, "--version"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=RUN_TIMEOUT,
            check=False,
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {path}: {exc}"
    first = version.splitlines()[0] if version else ""
    if first != MSMTP_VERSION:
        return f"{path} is {first!r}, the suite is written for {MSMTP_VERSION!r}"
    return Program(path=path, argv0="msmtp")


def _relayd_path() -> str | None:
    """The relayd-sendmail of this virtualenv (next to the interpreter), else the one on PATH."""
    candidate = Path(sys.executable).parent / RELAYD_NAME
    if candidate.exists():
        return str(candidate)
    return shutil.which(RELAYD_NAME)


def _relayd() -> Program:
    found = _relayd_path()
    if found is None:
        pytest.fail(f"{RELAYD_NAME} is neither next to {sys.executable} nor on PATH")
    return Program(path=found, argv0=RELAYD_NAME)


def _subst(text: str, home: Path) -> str:
    return text.replace(HOME_TOKEN, str(home))


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    path.chmod(mode)


def _prepare_home(case: Case, root: Path) -> Path:
    """Create root/home with the case's files; return the HOME path."""
    home = root / "home"
    home.mkdir(mode=0o700)
    for sub in (".config", ".local/state", ".local/share", ".cache", "run"):
        (home / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
    if case.config is not None:
        text = _subst(case.config, home)
        _write(home / case.config_path, text.encode("utf-8"), case.config_mode)
    for extra in case.files:
        _write(home / extra.path, _subst(extra.content, home).encode("utf-8"), extra.mode)
    return home


def _environment(case: Case, home: Path, user: str) -> dict[str, str]:
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        # Keeps relayd away from the real queue (as root it would be /var/spool/relayd).
        "RELAYD_DATABASE_URL": f"sqlite:///{home}/.local/state/relayd/queue.sqlite3",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C",
        "USER": user,
        "LOGNAME": user,
    }
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = _subst(value, home)
    return env


def _chown_tree(top: Path, uid: int, gid: int, keep: Path | None) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        os.chown(dirpath, uid, gid)
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path != keep:
                os.chown(path, uid, gid, follow_symlinks=False)


def normalize(data: bytes, home: Path) -> str:
    """The program name at line starts and the HOME path become tokens; all else is kept."""
    text = data.decode("utf-8", "surrogateescape").replace(str(home), "$HOME")
    return _PROGRAM_PREFIX.sub("PROG: ", text)


def run_case(program: Program, case: Case, root: Path) -> Outcome:
    """Run one program for one case in root (created here, must not exist)."""
    root.mkdir(mode=0o700)
    home = _prepare_home(case, root)
    command = [program.argv0, *(_subst(arg, home) for arg in case.argv)]
    executable = program.path
    drop = case.unprivileged and os.geteuid() == 0
    if case.foreign_owner and os.geteuid() != 0:
        pytest.skip("needs root to create a configuration file owned by another user")
    if drop:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop privileges")
        keep = home / case.config_path if case.foreign_owner else None
        _chown_tree(root, UNPRIVILEGED_ID, UNPRIVILEGED_ID, keep)
        user = pwd.getpwuid(UNPRIVILEGED_ID).pw_name
        command = [
            "setpriv",
            f"--reuid={UNPRIVILEGED_ID}",
            f"--regid={UNPRIVILEGED_ID}",
            "--clear-groups",
            "--",
            program.path,
            *command[1:],
        ]
        executable = setpriv
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
    proc = subprocess.run(
        command,
        executable=executable,
        input=case.stdin,
        capture_output=True,
        env=_environment(case, home, user),
        cwd=home,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Outcome(proc.returncode, normalize(proc.stdout, home), normalize(proc.stderr, home))


def describe(case: Case) -> str:
    """A readable description of the invocation."""
    parts = [f"case {case.id}", "argv: " + " ".join(repr(a) for a in case.argv)]
    if case.config is None:
        parts.append("config: none")
    else:
        parts.append(f"config ~/{case.config_path} (mode {case.config_mode:04o}):")
        parts.extend("    " + line for line in case.config.splitlines())
    for extra in case.files:
        parts.append(f"file ~/{extra.path} (mode {extra.mode:04o}): {extra.content!r}")
    if case.env:
        parts.append(f"env: {dict(case.env)!r}")
    if case.stdin:
        parts.append(f"stdin: {case.stdin!r}")
    if case.unprivileged:
        parts.append("run as an unprivileged user" + (" (file owned by root)" * case.foreign_owner))
    return "\n".join(parts)


def _show(outcome: Outcome) -> str:
    return f"exit {outcome.returncode}\n--- stdout:\n{outcome.stdout}--- stderr:\n{outcome.stderr}"


def _diff(name: str, ours: str, theirs: str) -> str:
    lines = difflib.unified_diff(
        theirs.splitlines(keepends=True),
        ours.splitlines(keepends=True),
        fromfile=f"msmtp {name}",
        tofile=f"{RELAYD_NAME} {name}",
    )
    return "".join(line if line.endswith("\n") else line + "\\ (no newline)\n" for line in lines)


def mismatch_report(case: Case, msmtp: Outcome, ours: Outcome) -> str:
    """The invocation, the exit codes, a diff of each stream that differs, both stderrs."""
    parts = [
        describe(case),
        "",
        f"exit code: msmtp {msmtp.returncode}, {RELAYD_NAME} {ours.returncode}"
        + ("" if msmtp.returncode == ours.returncode else "  <-- differs"),
    ]
    for name, theirs_text, ours_text in (
        ("stdout", msmtp.stdout, ours.stdout),
        ("stderr", msmtp.stderr, ours.stderr),
    ):
        if theirs_text != ours_text:
            parts.append(_diff(name, ours_text, theirs_text))
    parts += [
        "=== msmtp stderr:",
        msmtp.stderr,
        f"=== {RELAYD_NAME} stderr:",
        ours.stderr,
    ]
    return "\n".join(parts)


def check_expectations(case: Case, msmtp: Outcome) -> list[str]:
    """Where msmtp no longer does what the case was written to exercise."""
    problems = []
    if case.rc is not None and msmtp.returncode != case.rc:
        problems.append(f"msmtp exited {msmtp.returncode}, the case expects {case.rc}")
    both = msmtp.stdout + msmtp.stderr
    problems += [f"msmtp output lacks {text!r}" for text in case.expect if text not in both]
    return problems


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_matches_msmtp(case: Case) -> None:
    msmtp = _msmtp()
    if isinstance(msmtp, str):
        _unavailable(msmtp)
        return
    relayd = _relayd()
    with tempfile.TemporaryDirectory(prefix="relayd-msmtp-") as tmp:
        top = Path(tmp)
        top.chmod(0o711)  # an unprivileged run must be able to reach its HOME below
        theirs = run_case(msmtp, case, top / "msmtp")
        problems = check_expectations(case, theirs)
        if problems:
            pytest.fail(
                "the case no longer exercises what it was written for:\n"
                + "\n".join(problems)
                + "\n\n"
                + describe(case)
                + "\n"
                + _show(theirs),
                pytrace=False,
            )
        ours = run_case(relayd, case, top / "relayd")
    if case.differs is not None:
        problems = check_deliberate(case.differs, ours)
        if problems:
            pytest.fail("\n".join(problems) + "\n\n" + mismatch_report(case, theirs, ours))
    elif ours != theirs:
        pytest.fail(mismatch_report(case, theirs, ours), pytrace=False)


def check_deliberate(differs: Deliberate, ours: Outcome) -> list[str]:
    """Where relayd does not do what its documented difference from msmtp says."""
    problems = []
    if ours.returncode != differs.rc:
        problems.append(
            f"relayd exited {ours.returncode}, expected {differs.rc} ({differs.reason})"
        )
    both = ours.stdout + ours.stderr
    problems += [f"relayd output lacks {text!r}" for text in differs.expect if text not in both]
    return problems


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


def test_normalize_program_name_and_home() -> None:
    home = Path("/tmp/x/home")
    raw = b"msmtp: /tmp/x/home/.msmtprc: line 1: x\nrelayd-sendmail: y\nnot msmtp: z\n"
    assert normalize(raw, home) == "PROG: $HOME/.msmtprc: line 1: x\nPROG: y\nnot msmtp: z\n"


def _main(argv: list[str]) -> int:
    """Print what msmtp (or relayd-sendmail with --relayd) does for the selected cases."""
    use_relayd = "--relayd" in argv
    patterns = [arg for arg in argv if arg != "--relayd"]
    if use_relayd:
        found = _relayd_path()
        program: Program | str = (
            Program(path=found, argv0=RELAYD_NAME) if found else f"{RELAYD_NAME} not found"
        )
    else:
        program = _msmtp()
    if isinstance(program, str):
        print(program, file=sys.stderr)
        return 1
    selected = [c for c in CASES if not patterns or any(p in c.id for p in patterns)]
    with tempfile.TemporaryDirectory(prefix="relayd-msmtp-") as tmp:
        top = Path(tmp)
        top.chmod(0o711)
        for number, case in enumerate(selected):
            outcome = run_case(program, case, top / str(number))
            problems = [] if use_relayd else check_expectations(case, outcome)
            print(f"##### {case.id}  argv={list(case.argv)}")
            print(_show(outcome), end="")
            for problem in problems:
                print(f"!!!!! {problem}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
