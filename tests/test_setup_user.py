"""`relayd setup` for a user: HOME in a temporary directory, a fake systemctl that records its
calls (no systemd here), and a fake notify-send."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from relayd import settings
from relayd.cli import app, setup_user, trust
from relayd.daemon.notify import Notifier
from relayd.sysexits import ExitCode
from tests.sendmail_helpers import write_msmtprc
from tests.test_setup_system import make_installation

FAKE_SYSTEMCTL = """#!/bin/sh
# Records each call; keeps enabled/active in a file, as a user manager would.
echo "$*" >> "$FAKE_DIR/calls"
[ -n "$FAKE_NO_BUS" ] && { echo "Failed to connect to bus: No medium found" >&2; exit 1; }
state=
[ -f "$FAKE_DIR/state" ] && read -r state < "$FAKE_DIR/state"  # builtins: PATH is only fakes
case $2 in
show-environment) echo "HOME=$HOME" ;;
is-enabled) [ -n "$state" ] && echo enabled || { echo disabled; exit 1; } ;;
is-active) [ -n "$state" ] && echo active || { echo inactive; exit 3; } ;;
enable)
    [ -n "$FAKE_ENABLE_FAILS" ] && { echo "Failed to enable unit: Access denied" >&2; exit 1; }
    echo on > "$FAKE_DIR/state" ;;
esac
exit 0
"""
FAKE_NOTIFY_SEND = '#!/bin/sh\nprintf "%s|" "$@" >> "$FAKE_DIR/notified"\n'
QUERIES = ["--user show-environment", "--user is-enabled relayd.service"]
QUERIES.append("--user is-active relayd.service")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the fake systemctl and notify-send; their records go here."""
    fake_dir = tmp_path / "fake"
    fake_bin = fake_dir / "bin"
    fake_bin.mkdir(parents=True)
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("notify-send", FAKE_NOTIFY_SEND)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{Path.home() / '.local' / 'bin'}")
    monkeypatch.setenv("FAKE_DIR", str(fake_dir))
    return fake_dir


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: Path) -> Path:
    """A relayd installation (a virtualenv's bin/), an msmtprc, and a user who is not root."""
    made = make_installation(tmp_path / "venv")
    monkeypatch.setattr(trust, "scripts_dir", lambda: made)
    monkeypatch.setattr(setup_user, "geteuid", lambda: 1000)
    monkeypatch.setattr(setup_user, "NM_DISPATCHER", tmp_path / "etc-nm-dispatcher.d")
    monkeypatch.setenv("RELAYD_MSMTPRC_SYSTEM", str(tmp_path / "no-system-msmtprc"))
    write_msmtprc()
    return made


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["setup", *args])


def calls(fake: Path) -> list[str]:
    path = fake / "calls"
    return path.read_text().splitlines() if path.exists() else []


def home_files() -> dict[str, tuple[str, str]]:
    """Every file and link under HOME: (kind, content or target)."""
    found = {}
    for directory, _dirs, names in os.walk(Path.home()):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            else:
                found[str(path)] = ("file", path.read_text(errors="replace"))
    return found


def local_bin(name: str) -> Path:
    return Path.home() / ".local" / "bin" / name


def test_first_run_links_installs_enables_and_sets_notify(bin_dir: Path, fake: Path) -> None:
    result = run()

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    for name in ("sendmail", "mailq"):
        assert os.readlink(local_bin(name)) == str(bin_dir / trust.SENDMAIL_SCRIPT)
    unit = setup_user.unit_path()
    assert unit == Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / "relayd.service"
    assert f"ExecStart={bin_dir / 'relayd'} daemon" in unit.read_text()
    assert calls(fake) == [
        *QUERIES,
        "--user daemon-reload",
        "--user enable --now relayd.service",
    ]
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    assert toml.stat().st_mode & 0o777 == 0o600
    assert settings.load().notify_command == setup_user.NOTIFY_COMMAND


def test_second_run_changes_nothing(bin_dir: Path, fake: Path) -> None:
    assert run().exit_code == 0
    before = home_files()
    made_calls = len(calls(fake))

    result = run()

    assert result.exit_code == 0, result.output
    assert home_files() == before
    assert calls(fake)[made_calls:] == QUERIES  # only the read-only queries
    assert "unchanged relayd.service: enabled and running" in result.stdout
    assert f"unchanged [notify] command in {os.environ['XDG_CONFIG_HOME']}" in result.stdout


def test_dry_run_writes_nothing(bin_dir: Path, fake: Path) -> None:
    before = home_files()

    result = run("--dry-run")

    assert result.exit_code == 0, result.output
    assert home_files() == before
    assert calls(fake) == QUERIES
    assert f"would link {local_bin('sendmail')} -> {bin_dir / 'relayd-sendmail'}" in (result.stdout)
    assert "would run systemctl --user enable --now relayd.service" in result.stdout
    assert "would set [notify] command" in result.stdout


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_relayd_did_not_make_is_refused(bin_dir: Path, fake: Path, kind: str) -> None:
    sendmail = local_bin("sendmail")
    sendmail.parent.mkdir(parents=True)
    if kind == "file":
        sendmail.write_text('#!/bin/sh\nexec msmtp "$@"\n')
    else:
        sendmail.symlink_to("/usr/bin/msmtp")
    before = home_files()

    result = run()

    assert result.exit_code == ExitCode.CANTCREAT
    assert len(result.stderr.splitlines()) == 1
    assert f"{sendmail} is a" in result.stderr and "not relayd's: not replaced" in result.stderr
    assert home_files() == before
    assert calls(fake) == []


def test_another_relayds_link_is_relinked(bin_dir: Path, fake: Path) -> None:
    mailq = local_bin("mailq")
    mailq.parent.mkdir(parents=True)
    mailq.symlink_to("/old/venv/bin/relayd-sendmail")
    result = run()
    assert result.exit_code == 0, result.output
    assert f"relink {mailq}" in result.stdout
    assert os.readlink(mailq) == str(bin_dir / trust.SENDMAIL_SCRIPT)


def test_pips_own_mailq_script_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip install --user puts relayd's scripts, mailq among them, in ~/.local/bin itself."""
    monkeypatch.setattr(setup_user, "geteuid", lambda: 1000)
    installed = make_installation(Path.home() / ".local")
    (installed / "mailq").write_text(f"#!{sys.executable}\n")
    monkeypatch.setattr(trust, "scripts_dir", lambda: installed)
    assert [link.state for link in setup_user.plan_links(installed)] == ["create", "unchanged"]


def test_configuration_problems_stop_before_any_change(bin_dir: Path, fake: Path) -> None:
    write_msmtprc("account default\nhost 127.0.0.1\nbogus_command x\n")
    before = home_files()
    result = run()
    assert result.exit_code == ExitCode.CONFIG
    assert "bogus_command" in result.stdout
    assert "nothing was changed" in result.stderr
    assert home_files() == before
    assert calls(fake) == []


def test_without_a_user_manager_the_steps_are_printed(
    bin_dir: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_BUS", "1")
    result = run()
    assert result.exit_code == 0, result.output
    assert "no systemd user manager reachable (Failed to connect to bus" in result.stdout
    assert "systemctl --user enable --now relayd.service" in result.stdout
    assert calls(fake) == ["--user show-environment"]
    assert setup_user.unit_path().is_file()


def test_without_systemctl_the_steps_are_printed(
    bin_dir: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fake / "bin" / "systemctl").unlink()
    result = run()
    assert result.exit_code == 0, result.output
    assert "no systemctl: start the daemon yourself" in result.stdout


def test_a_failing_systemctl_is_one_line_and_71(
    bin_dir: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ENABLE_FAILS", "1")
    result = run()
    assert result.exit_code == ExitCode.OSERR
    assert result.stderr == (
        "relayd: systemctl --user enable --now relayd.service failed:"
        " Failed to enable unit: Access denied\n"
    )


def test_notify_goes_into_an_existing_relayd_toml(bin_dir: Path, fake: Path) -> None:
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text('[notify]  # mine\n\n[retry]\nfirst = "2m"\n')
    toml.chmod(0o640)
    assert run().exit_code == 0
    values = tomllib.loads(toml.read_text())
    assert values == {"notify": {"command": setup_user.NOTIFY_COMMAND}, "retry": {"first": "2m"}}
    assert toml.stat().st_mode & 0o777 == 0o640
    toml.write_text('[notify]\ncommand = "mine"\n')
    assert run().exit_code == 0
    assert toml.read_text() == '[notify]\ncommand = "mine"\n'


def test_no_notify_and_no_notify_send(bin_dir: Path, fake: Path) -> None:
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    assert run("--no-notify").exit_code == 0
    assert not toml.exists()
    (fake / "bin" / "notify-send").unlink()
    result = run()
    assert "desktop notifications skipped: no notify-send" in result.stdout
    assert not toml.exists()


def test_the_notify_command_notifies_held_and_failed_mail_only(fake: Path) -> None:
    async def events() -> None:
        notifier = Notifier(setup_user.NOTIFY_COMMAND)
        for state in ("held", "delayed", "failed"):
            notifier.notify("Q1", state, "why it is so", account="a", sender="s@x")
        await notifier.wait(20)

    asyncio.run(events())
    lines = sorted((fake / "notified").read_text().split("|")[:-1])
    assert lines == sorted(
        [
            "--app-name=relayd",
            "relayd: mail held",
            "Q1: why it is so",
            "--app-name=relayd",
            "relayd: mail failed",
            "Q1: why it is so",
        ]
    )


def test_network_hook_is_offered_where_networkmanager_runs(bin_dir: Path, fake: Path) -> None:
    assert setup_user.HOOK.is_file()  # shipped with the package (relayd/data/contrib)
    dispatcher = setup_user.NM_DISPATCHER
    assert "NetworkManager hook" not in run().stdout
    dispatcher.mkdir()
    assert f"{setup_user.HOOK} {dispatcher / '90-relayd'}" in run().stdout
    (dispatcher / "90-relayd").write_text("")
    assert f"unchanged {dispatcher / '90-relayd'}" in run().stdout


def test_root_is_sent_to_setup_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_user, "geteuid", lambda: 0)
    result = run()
    assert result.exit_code == ExitCode.USAGE
    assert "relayd setup --system" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_mailq_console_script_lists_the_queue() -> None:
    mailq = Path(sys.executable).with_name("mailq")
    done = subprocess.run(
        [str(mailq)], capture_output=True, text=True, timeout=60, check=False, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Mail queue is empty"


def test_a_running_daemon_reloads_new_notify_settings(bin_dir: Path, fake: Path) -> None:
    assert run("--no-notify").exit_code == 0
    made_calls = len(calls(fake))
    result = run()
    assert result.exit_code == 0, result.output
    assert calls(fake)[made_calls:] == [*QUERIES, "--user reload relayd.service"]


def test_notify_header_on_the_last_line(bin_dir: Path, fake: Path) -> None:
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text("[notify]")
    assert run().exit_code == 0
    assert tomllib.loads(toml.read_text()) == {"notify": {"command": setup_user.NOTIFY_COMMAND}}
