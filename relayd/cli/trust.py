"""Whether only root can change an installation of relayd: what root's cron would run as sendmail.

A path is trusted when it and every directory above it is owned by root and writable by nobody
else: not by its group (unless the group is root's) and not by others, except a directory with
the sticky bit (such as /tmp), where others cannot rename or remove root's entries.
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import relayd

SENDMAIL_SCRIPT = "relayd-sendmail"
RELAYD_SCRIPT = "relayd"


def scripts_dir() -> Path:
    """The directory holding this installation's `relayd` and `relayd-sendmail` scripts.

    The directory of the running `relayd` script when that is how we were started, else the
    interpreter's scripts directory (a virtualenv's bin/, /usr/local/bin for pip as root).
    """
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is not None and started.name == RELAYD_SCRIPT and started.is_file():
        return started.absolute().parent
    return Path(sysconfig.get_path("scripts"))


def _interpreter(script: Path) -> Path | None:
    """The program a script's `#!` line runs, if it names an absolute path."""
    try:
        with open(script, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return Path(words[0]) if words and words[0].startswith("/") else None


def installation_paths(bin_dir: Path) -> tuple[list[Path], list[Path]]:
    """(paths checked with their ancestors, directory trees checked through and through).

    The scripts and the interpreter they run; every directory Python imports from (a writable
    one could shadow any module, or hold a `.pth` file run at start-up); relayd's package.
    """
    scripts = [bin_dir / SENDMAIL_SCRIPT, bin_dir / RELAYD_SCRIPT]
    shallow = list(scripts)
    for script in scripts:
        interpreter = _interpreter(script)
        if interpreter is not None:
            shallow.append(interpreter)
    shallow.append(Path(sys.executable))
    shallow.extend(Path(entry) for entry in sys.path if entry and os.path.isabs(entry))
    return shallow, [Path(relayd.__file__).parent]


def _problem(path: Path, info: os.stat_result) -> str | None:
    """Why a user other than root could change `path`, or None."""
    mode = info.st_mode
    if info.st_uid != 0:
        return f"{path} is owned by uid {info.st_uid}, not root"
    sticky_dir = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
    if mode & stat.S_IWOTH and not sticky_dir:
        return f"{path} is writable by every user (mode {stat.filemode(mode)})"
    if mode & stat.S_IWGRP and info.st_gid != 0 and not sticky_dir:
        return f"{path} is writable by group {info.st_gid} (mode {stat.filemode(mode)})"
    return None


def _with_ancestors(path: Path) -> Iterator[Path]:
    real = Path(os.path.realpath(path))
    yield real
    yield from real.parents


def _tree(top: Path) -> Iterator[Path]:
    for directory, _subdirs, files in os.walk(os.path.realpath(top)):
        yield Path(directory)
        yield from (Path(directory, name) for name in files)


def untrusted(shallow: Iterable[Path], deep: Iterable[Path]) -> str | None:
    """The first reason another user could change what these paths run, or None."""
    seen: set[Path] = set()
    candidates: list[Iterator[Path]] = [_with_ancestors(p) for p in shallow if p.exists()]
    candidates += [_tree(p) for p in deep]
    candidates += [_with_ancestors(p) for p in deep]
    for group in candidates:
        for path in group:
            if path in seen:
                continue
            seen.add(path)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):  # only inside a tree: realpath resolved the others
                continue
            reason = _problem(path, info)
            if reason:
                return reason
    return None
