"""`relayd setup --system`, always under `--root` with a temporary directory (never / for real)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from relayd.cli import app, setup, trust
from relayd.sysexits import ExitCode

NOBODY = 65534
SHIPPED = Path(setup.DATA)


@pytest.fixture(autouse=True)
def _as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command checks for root; these tests also pass when run by a user."""
    monkeypatch.setattr(setup, "geteuid", lambda: 0)


def make_installation(base: Path) -> Path:
    """A fake relayd installation (bin/ with both scripts), as `pip install` into a venv makes."""
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True)
    for name in (trust.SENDMAIL_SCRIPT, trust.RELAYD_SCRIPT):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n", encoding="utf-8")
        script.chmod(0o755)
    return bin_dir


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root-owned installation under the (sticky, root-owned) temporary directory."""
    made = make_installation(tmp_path / "opt" / "relayd")
    monkeypatch.setattr(trust, "scripts_dir", lambda: made)
    package = tmp_path / "opt" / "relayd" / "lib" / "relayd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    scripts = [made / trust.SENDMAIL_SCRIPT, made / trust.RELAYD_SCRIPT]
    monkeypatch.setattr(trust, "installation_paths", lambda _: (scripts, [package]))
    return made


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "root"
    made.mkdir()
    return made


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["setup", "--system", "--root", str(root), *args])


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root: (inode, mtime_ns, link target or content)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = path.read_text(encoding="utf-8")
        else:
            what = "dir"
        found[str(path.relative_to(root))] = (info.st_ino, info.st_mtime_ns, what)
    return found


def test_installs_the_links_units_and_files(root: Path, bin_dir: Path) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    result = run(root)
    assert result.exit_code == 0, result.output
    sendmail = str(bin_dir / trust.SENDMAIL_SCRIPT)
    for name in ("usr/sbin/sendmail", "usr/bin/mailq", "usr/lib/sendmail"):
        assert os.readlink(root / name) == sendmail, name
        assert f"link {root / name} -> {sendmail}" in result.stdout.splitlines()
    for source, target in setup.FILES:
        installed = root / target
        assert oct(installed.stat().st_mode & 0o7777) == oct(0o644)
        assert f"install {installed}" in result.stdout.splitlines()
        if not source.endswith(".service"):
            assert installed.read_bytes() == (SHIPPED / source).read_bytes()
    service = (root / "etc/systemd/system/relayd.service").read_text(encoding="utf-8")
    exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={bin_dir / 'relayd'} daemon"]
    shipped = (SHIPPED / "system/relayd.service").read_text(encoding="utf-8")
    assert service.replace(exec_start[0], "") == shipped.replace(
        "ExecStart=/usr/bin/relayd daemon", ""
    )
    assert "not run with --root" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("next: ")


def test_usr_lib_sendmail_only_where_usr_lib_exists(root: Path, bin_dir: Path) -> None:
    assert run(root).exit_code == 0
    assert not os.path.lexists(root / "usr/lib/sendmail")


def test_a_second_run_changes_nothing(root: Path, bin_dir: Path) -> None:
    assert run(root).exit_code == 0
    before = snapshot(root)
    again = run(root)
    assert again.exit_code == 0, again.output
    assert snapshot(root) == before
    changes = [line for line in again.stdout.splitlines() if line.startswith(("link", "install"))]
    assert changes == []
    assert sum(line.startswith("unchanged ") for line in again.stdout.splitlines()) == 7


def test_dry_run_changes_nothing_and_says_what_it_would_do(root: Path, bin_dir: Path) -> None:
    result = run(root, "--dry-run")
    assert result.exit_code == 0, result.output
    assert list(root.iterdir()) == []
    lines = result.stdout.splitlines()
    assert f"would link {root / 'usr/sbin/sendmail'} -> {bin_dir / 'relayd-sendmail'}" in lines
    assert f"would install {root / 'etc/tmpfiles.d/relayd.conf'}" in lines
    assert len([line for line in lines if line.startswith("would ")]) == 7


def test_a_foreign_sendmail_is_kept_without_force(root: Path, bin_dir: Path) -> None:
    exim = root / "usr/sbin/sendmail"
    exim.parent.mkdir(parents=True)
    exim.write_text("#!/bin/sh\necho exim\n")
    result = run(root)
    assert result.exit_code == ExitCode.CANTCREAT
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert str(exim) in line and "--force" in line
    assert exim.read_text() == "#!/bin/sh\necho exim\n"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "usr",
        "usr/sbin",
        "usr/sbin/sendmail",
    ]


def test_force_replaces_a_foreign_sendmail_and_keeps_a_backup(root: Path, bin_dir: Path) -> None:
    exim = root / "usr/sbin/sendmail"
    exim.parent.mkdir(parents=True)
    exim.write_text("#!/bin/sh\necho exim\n")
    exim.chmod(0o4755)
    result = run(root, "--force")
    assert result.exit_code == 0, result.output
    backup = root / "usr/sbin/sendmail.relayd-backup"
    assert f"keep {exim} as {backup}" in result.stdout.splitlines()
    assert backup.read_text() == "#!/bin/sh\necho exim\n"
    assert backup.stat().st_mode & 0o7777 == 0o4755
    assert os.readlink(exim) == str(bin_dir / "relayd-sendmail")
    # Now relayd's own: later runs need no --force and keep the first backup.
    assert run(root).exit_code == 0
    assert backup.read_text() == "#!/bin/sh\necho exim\n"


def test_a_foreign_link_is_kept_too(root: Path, bin_dir: Path) -> None:
    (root / "usr/sbin").mkdir(parents=True)
    os.symlink("/usr/sbin/exim4", root / "usr/sbin/sendmail")
    result = run(root)
    assert result.exit_code == ExitCode.CANTCREAT
    assert "a link to /usr/sbin/exim4" in result.stderr
    assert os.readlink(root / "usr/sbin/sendmail") == "/usr/sbin/exim4"


def test_another_relayds_link_is_replaced(root: Path, bin_dir: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/usr/local/bin/relayd-sendmail", root / "usr/bin/mailq")
    result = run(root)
    assert result.exit_code == 0, result.output
    assert os.readlink(root / "usr/bin/mailq") == str(bin_dir / "relayd-sendmail")
    assert f"relink {root / 'usr/bin/mailq'} -> {bin_dir / 'relayd-sendmail'}" in result.stdout
    assert not os.path.lexists(root / "usr/bin/mailq.relayd-backup")


def test_a_changed_unit_is_updated_and_the_old_one_kept(root: Path, bin_dir: Path) -> None:
    assert run(root).exit_code == 0
    unit = root / "etc/systemd/system/relayd-submit.socket"
    unit.write_text("# edited\n")
    result = run(root)
    assert result.exit_code == 0, result.output
    previous = unit.with_name("relayd-submit.socket.relayd-old")
    assert f"update {unit} (the previous one kept as {previous})" in result.stdout.splitlines()
    assert previous.read_text() == "# edited\n"
    assert unit.read_bytes() == (SHIPPED / "system/relayd-submit.socket").read_bytes()


def test_not_root(root: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "geteuid", lambda: 1000)
    result = run(root)
    assert result.exit_code == ExitCode.NOPERM
    assert result.stdout == ""
    assert (
        result.stderr
        == "relayd: `relayd setup --system` must run as root: it writes /usr and /etc\n"
    )
    assert list(root.iterdir()) == []


def test_without_system_is_a_usage_error(root: Path) -> None:
    result = CliRunner().invoke(app, ["setup", "--root", str(root)])
    assert result.exit_code == ExitCode.USAGE
    assert len(result.stderr.splitlines()) == 1


def test_no_relayd_sendmail_next_to_relayd(
    root: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bin_dir / trust.SENDMAIL_SCRIPT).unlink()
    result = run(root)
    assert result.exit_code == ExitCode.OSFILE
    assert len(result.stderr.splitlines()) == 1


# --- refusing an installation another user could change ----------------------------------------


def untrusted_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A venv in a temporary "home" directory; returns (home, bin)."""
    home = tmp_path / "home" / "alice"
    made = make_installation(home / "venv")
    monkeypatch.setattr(trust, "scripts_dir", lambda: made)
    return home, made


def refused(result: Result) -> str:
    assert result.exit_code == ExitCode.NOPERM, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "refusing" in line and "cron" in line
    return line


def test_refuses_a_venv_in_a_users_home(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = untrusted_venv(tmp_path, monkeypatch)
    os.chown(home, NOBODY, NOBODY)
    line = refused(run(root))
    assert f"{home} is owned by uid {NOBODY}, not root" in line
    assert list(root.iterdir()) == []
    refused(run(root, "--dry-run"))  # a dry run says no too


@pytest.mark.parametrize(("mode", "why"), [(0o777, "every user"), (0o775, "group")])
def test_refuses_a_directory_others_can_write(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, mode: int, why: str
) -> None:
    _, made = untrusted_venv(tmp_path, monkeypatch)
    venv = made.parent
    os.chown(venv, 0, NOBODY)
    venv.chmod(mode)
    assert f"{venv} is writable by {why}" in refused(run(root))


def test_a_sticky_world_writable_directory_is_fine(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    made = make_installation(shared / "relayd")
    assert trust.untrusted([made / trust.SENDMAIL_SCRIPT], []) is None


def test_refuses_a_file_inside_relayds_package_owned_by_a_user(
    tmp_path: Path, root: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "relayd"
    (package / "cli").mkdir(parents=True)
    planted = package / "cli" / "setup.py"
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    monkeypatch.setattr(trust, "installation_paths", lambda _: ([], [package]))
    assert f"{planted} is owned by uid {NOBODY}" in refused(run(root))


def test_the_interpreter_and_import_path_are_checked(tmp_path: Path) -> None:
    made = make_installation(tmp_path / "venv")
    shallow, deep = trust.installation_paths(made)
    assert made / trust.SENDMAIL_SCRIPT in shallow
    assert Path(sys.executable) in shallow  # the #! line and this interpreter
    assert next(Path(p) for p in sys.path if p and os.path.isabs(p)) in shallow
    assert deep == [Path(setup.DATA).parent.parent]
