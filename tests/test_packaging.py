"""The distribution: the packages pyproject.toml lists, the dependencies it declares, the wheel.

The wheel test builds relayd from a copy of the checkout, installs it alone into a new virtual
environment and lets that installed relayd-sendmail create (migrate) a new queue: the proof that
the migrations, kept at the top of the repository, ship inside the wheel.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from relayd.store import SCHEMA_REVISION
from relayd.store.tables import metadata
from tests import source_tree
from tests.sendmail_helpers import queue_db, sendmail_env, stored_messages, write_msmtprc

REPO = Path(__file__).resolve().parent.parent
# What a build reads never includes these (caches, environments, earlier builds).
NOT_SOURCE = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*cache",
    ".hypothesis",
)


def pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


# --- the package list ---------------------------------------------------------------------------


def test_pyproject_lists_every_package() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == source_tree.packages()
    assert sorted(setuptools["package-dir"]) == sorted(source_tree.MAPPED)
    for package, directory in setuptools["package-dir"].items():
        assert source_tree.package_dir(package) == REPO / directory


# --- dependencies -------------------------------------------------------------------------------


def third_party_imports() -> dict[str, set[str]]:
    """Top-level modules outside the standard library that relayd imports, each with its importers.

    Every import counts, also one inside a function or under TYPE_CHECKING.
    """
    found: dict[str, set[str]] = {}
    for module, path in source_tree.module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "relayd" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(module)
    return found


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies that apply on this machine (their markers hold)."""
    requirements = [Requirement(text) for text in pyproject()["project"]["dependencies"]]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def distributions_of(module: str) -> set[str]:
    """The installed distributions providing top-level `module`, by canonical name."""
    providers = importlib.metadata.packages_distributions().get(module, [])
    return {canonicalize_name(name) for name in providers}


def test_every_imported_package_is_declared() -> None:
    declared = {canonicalize_name(r.name) for r in runtime_requirements()}
    undeclared = [
        f"{module} (imported by {', '.join(sorted(importers))}) comes from"
        f" {sorted(distributions_of(module)) or 'no installed distribution'}"
        for module, importers in sorted(third_party_imports().items())
        if not distributions_of(module) & declared
    ]
    assert undeclared == [], "add these to pyproject.toml's dependencies"


def test_every_declared_dependency_is_imported() -> None:
    imported: set[str] = set()
    for module in third_party_imports():
        imported |= distributions_of(module)
    unused = [str(r) for r in runtime_requirements() if canonicalize_name(r.name) not in imported]
    assert unused == [], "relayd imports none of these: drop them from pyproject.toml"


def test_the_import_scan_sees_lazy_and_migration_imports() -> None:
    found = third_party_imports()
    assert "relayd.accounts.keyrings" in found["secretstorage"]  # inside a function
    assert "relayd.migrations.env" in found["alembic"]  # the migrations at the top
    assert "__future__" not in found and "relayd" not in found


# --- the wheel ----------------------------------------------------------------------------------


def _no_build_backend() -> str | None:
    """Why no wheel can be built here without fetching the build backend, or None."""
    [backend] = [Requirement(text) for text in pyproject()["build-system"]["requires"]]
    try:
        version = importlib.metadata.version(backend.name)
    except importlib.metadata.PackageNotFoundError:
        return f"{backend.name} is not installed here (pyproject's dev extra installs it)"
    if not backend.specifier.contains(version):
        return f"{backend.name} {version} is installed here; building relayd needs {backend}"
    return None


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """Build relayd's wheel from a copy of the checkout (setuptools would reuse a stale build/)."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source, cwd=source)
    [wheel] = dist.glob("relayd-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv holding only the wheel; this environment's packages serve its imports."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    _run(*pip, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # A path line in a .pth file adds the directory without running the .pth files in it, so
    # the editable install's finder stays out and the wheel's relayd is the one imported.
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run(python, "-c", code, cwd=tmp_path).strip())
    (site / "relayd-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def test_the_wheel_installs_and_migrates_a_new_queue(tmp_path: Path) -> None:
    reason = _no_build_backend()
    if reason:
        pytest.skip(reason)
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    expected = {
        name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        for name, path in source_tree.module_files().items()
    }
    assert sorted(expected - files) == []
    assert {"relayd/py.typed", "relayd/migrations/script.py.mako"} <= files
    # systemd/ ships as relayd/data/systemd/ (a link in the checkout; files in the wheel), with
    # the same bytes: `relayd setup --system` installs them.
    shipped = {
        f"relayd/data/systemd/{path.relative_to(REPO / 'systemd').as_posix()}": path
        for path in (REPO / "systemd").rglob("*")
        if path.is_file()
    }
    assert {"relayd/data/systemd/system/relayd-submit.socket"} <= set(shipped)
    assert sorted(set(shipped) - files) == []
    with zipfile.ZipFile(wheel) as archive:
        for name, path in shipped.items():
            assert archive.read(name) == path.read_bytes(), name
    assert sorted(name for name in files if not name.startswith(("relayd/", "relayd-"))) == []

    venv = fresh_venv(tmp_path, wheel)
    env = sendmail_env()
    env.pop("PYTHONPATH", None)
    # Run outside the checkout: `python -c` puts the working directory first on sys.path.
    where = "import relayd, relayd.migrations; print(relayd.__file__, relayd.migrations.__file__)"
    found = _run(venv / "bin" / "python", "-c", where, cwd=tmp_path, env=env).split()
    assert [Path(path).is_relative_to(venv) for path in found] == [True, True], found
    dry_run = subprocess.run(
        [venv / "bin" / "relayd", "setup", "--system", "--dry-run", "--root", tmp_path / "root"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    # The installed relayd finds its own unit files (or, as a user, refuses with 77).
    if os.geteuid() == 0:
        assert dry_run.returncode == 0, dry_run.stderr
        assert f"would install {tmp_path}/root/etc/systemd/system/relayd.service" in dry_run.stdout
    else:
        assert dry_run.returncode == 77, dry_run.stderr

    write_msmtprc()
    assert not queue_db().exists()

    def installed(*args: str | Path, message: bytes) -> subprocess.CompletedProcess[bytes]:
        """Run the installed venv's program with `message` on stdin, in the test's HOME."""
        return subprocess.run(
            args, input=message, capture_output=True, env=env, cwd=env["HOME"], timeout=60
        )

    sendmail = installed(
        venv / "bin" / "relayd-sendmail",
        "rcpt@example.org",
        message=b"Subject: from the wheel\n\nhello\n",
    )
    assert (sendmail.returncode, sendmail.stderr) == (0, b"")
    with sqlite3.connect(queue_db()) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert revision == SCHEMA_REVISION
    assert tables == {*metadata.tables, "alembic_version"}
    assert [m.recipients for m in stored_messages()] == [[("rcpt@example.org", "pending")]]
    # The installed launcher loads no `re` (pip's console-script wrapper would: SPEC §6 budget).
    traced = installed(
        venv / "bin" / "python",
        "-X",
        "importtime",
        venv / "bin" / "relayd-sendmail",
        "r@x.org",
        message=b"Subject: traced\n\nhello\n",
    )
    assert traced.returncode == 0, traced.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.decode().splitlines()}
    assert "relayd.submission.entry" in imported
    assert sorted(imported & {"re", "enum", "json"}) == []
