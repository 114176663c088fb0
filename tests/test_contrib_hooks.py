"""contrib/ dispatcher hooks: run with the dispatchers' arguments against stub relayd/runuser."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
NETWORKMANAGER = CONTRIB / "networkmanager" / "90-relayd"
NETWORKD = CONTRIB / "networkd-dispatcher" / "routable.d" / "relayd"
HOOKS = [NETWORKMANAGER, NETWORKD]

# Records one line per call: its arguments, the runtime directory it was given, its uid.
STUB_RELAYD = """#!/bin/sh
printf '%s|%s|%s\\n' "$*" "${RELAYD_RUNTIME_DIR:-}" "$(id -u)" >> "$STUB_LOG"
printf '%s\\n' "$$" >> "$STUB_PIDS"
case ${STUB_MODE:-ok} in
fail) echo "relayd: queue is locked" >&2; exit 75 ;;
hang) exec sleep 120 ;;
esac
exit 0
"""
# Records its arguments and runs the command after `--` (as ourselves: it is a test double).
STUB_RUNUSER = """#!/bin/sh
printf 'runuser %s\\n' "$*" >> "$STUB_LOG"
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do shift; done
shift
exec "$@"
"""

UP_CASES = [
    pytest.param(NETWORKMANAGER, ["wlan0", "up"], {}, id="nm-up"),
    pytest.param(NETWORKMANAGER, ["tun0", "vpn-up"], {}, id="nm-vpn-up"),
    pytest.param(NETWORKMANAGER, ["wlan0", "dhcp4-change"], {}, id="nm-dhcp4"),
    pytest.param(NETWORKMANAGER, ["wlan0", "dhcp6-change"], {}, id="nm-dhcp6"),
    pytest.param(
        NETWORKMANAGER,
        ["", "connectivity-change"],
        {"CONNECTIVITY_STATE": "FULL"},
        id="nm-connectivity-full",
    ),
    pytest.param(NETWORKD, [], {"IFACE": "eth0", "STATE": "routable"}, id="networkd-routable"),
]
DOWN_CASES = [
    pytest.param(NETWORKMANAGER, ["wlan0", "down"], {}, id="nm-down"),
    pytest.param(NETWORKMANAGER, ["wlan0", "pre-up"], {}, id="nm-pre-up"),
    pytest.param(NETWORKMANAGER, ["wlan0", "pre-down"], {}, id="nm-pre-down"),
    pytest.param(NETWORKMANAGER, ["tun0", "vpn-down"], {}, id="nm-vpn-down"),
    pytest.param(NETWORKMANAGER, ["none", "hostname"], {}, id="nm-hostname"),
    pytest.param(NETWORKMANAGER, ["lo", "up"], {}, id="nm-loopback-up"),
    pytest.param(
        NETWORKMANAGER,
        ["", "connectivity-change"],
        {"CONNECTIVITY_STATE": "PORTAL"},
        id="nm-connectivity-portal",
    ),
    pytest.param(
        NETWORKMANAGER,
        ["", "connectivity-change"],
        {"CONNECTIVITY_STATE": "NONE"},
        id="nm-connectivity-none",
    ),
    pytest.param(NETWORKMANAGER, ["", "connectivity-change"], {}, id="nm-connectivity-unset"),
    pytest.param(NETWORKD, [], {"IFACE": "eth0", "STATE": "degraded"}, id="networkd-degraded"),
    pytest.param(NETWORKD, [], {"IFACE": "eth0", "STATE": "no-carrier"}, id="networkd-no-carrier"),
    pytest.param(NETWORKD, [], {"IFACE": "eth0", "STATE": "off"}, id="networkd-off"),
    pytest.param(NETWORKD, [], {"IFACE": "lo", "STATE": "routable"}, id="networkd-loopback"),
    pytest.param(NETWORKD, [], {}, id="no-event"),
]


@dataclass
class Machine:
    """A fake /run/user and /run/relayd, stub programs, and what the stubs recorded."""

    bin: Path
    run_user: Path
    system: Path
    log: Path
    pids: Path

    def user_daemon(self, uid: int) -> Path:
        """A user daemon's wake-up socket; its runtime directory."""
        runtime = self.run_user / str(uid) / "relayd"
        runtime.mkdir(parents=True)
        make_socket(runtime / "wake")
        return runtime

    def system_daemon(self) -> Path:
        self.system.mkdir()
        make_socket(self.system / "wake")
        return self.system

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": os.environ["HOME"],
            "RELAYD_RUN_USER_DIR": str(self.run_user),
            "RELAYD_SYSTEM_RUNTIME_DIR": str(self.system),
            "STUB_LOG": str(self.log),
            "STUB_PIDS": str(self.pids),
        }
        env.update(extra)
        return env

    def run(
        self, hook: Path, args: list[str], env: Mapping[str, str], *, shell: str = "sh"
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [shell, str(hook), *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def flushes(self) -> list[tuple[str, str, str]]:
        """(arguments, RELAYD_RUNTIME_DIR, uid) of each relayd call, sorted."""
        found = [line.split("|") for line in self.calls() if not line.startswith("runuser ")]
        return sorted((args, runtime, uid) for args, runtime, uid in found)

    def runusers(self) -> list[str]:
        return sorted(line for line in self.calls() if line.startswith("runuser "))


def make_socket(path: Path) -> None:
    # A socket inode without binding one: no AF_UNIX path-length limit on deep tmp_paths.
    os.mknod(path, 0o600 | stat.S_IFSOCK)


def write_stub(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    bin_dir = tmp_path / "bin"
    write_stub(bin_dir / "relayd", STUB_RELAYD)
    write_stub(bin_dir / "runuser", STUB_RUNUSER)
    return Machine(
        bin=bin_dir,
        run_user=tmp_path / "run-user",
        system=tmp_path / "run-relayd",
        log=tmp_path / "calls.log",
        pids=tmp_path / "pids.log",
    )


def other_user() -> pwd.struct_passwd:
    """An account other than ours, for the runuser path."""
    mine = os.getuid()
    for entry in sorted(pwd.getpwall(), key=lambda e: e.pw_uid):
        if entry.pw_uid != mine and entry.pw_name:
            return entry
    pytest.skip("no second account in the password database")


ME = str(os.getuid())
FLUSH = "queue flush"


# --- the scripts themselves ------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS, ids=["networkmanager", "networkd"])
def test_hook_is_valid_posix_sh(hook: Path) -> None:
    assert hook.read_text().startswith("#!/bin/sh\n")
    assert os.access(hook, os.X_OK), f"{hook} must be executable"
    done = subprocess.run(["sh", "-n", str(hook)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_networkd_hook_is_the_same_script() -> None:
    assert NETWORKD.resolve() == NETWORKMANAGER.resolve()


# --- which events flush ------------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "args", "extra"), UP_CASES)
def test_network_up_flushes_each_running_daemon(
    machine: Machine, hook: Path, args: list[str], extra: dict[str, str]
) -> None:
    mine = machine.user_daemon(os.getuid())
    other = other_user()
    theirs = machine.user_daemon(other.pw_uid)
    done = machine.run(hook, args, machine.env(**extra))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # The other user's flush went through runuser (whose stub runs it as us).
    assert machine.flushes() == sorted([(FLUSH, str(mine), ME), (FLUSH, str(theirs), ME)])
    [runuser] = machine.runusers()
    assert runuser.startswith(f"runuser -u {other.pw_name} -- env RELAYD_RUNTIME_DIR={theirs} ")


@pytest.mark.parametrize(("hook", "args", "extra"), DOWN_CASES)
def test_other_events_do_nothing(
    machine: Machine, hook: Path, args: list[str], extra: dict[str, str]
) -> None:
    machine.user_daemon(os.getuid())
    machine.system_daemon()
    done = machine.run(hook, args, machine.env(**extra))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert machine.calls() == []


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
def test_works_in_every_posix_shell(machine: Machine, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    command = ["busybox", "sh"] if shell == "busybox" else [shell]
    runtime = machine.user_daemon(os.getuid())
    env = machine.env()
    if shell == "bash":
        env["POSIXLY_CORRECT"] = "1"
    done = subprocess.run(
        [*command, str(NETWORKMANAGER), "eth0", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert machine.flushes() == [(FLUSH, str(runtime), ME)]


# --- which daemons ------------------------------------------------------------------------------


def test_only_directories_with_a_wake_socket(machine: Machine) -> None:
    runtime = machine.user_daemon(os.getuid())
    # Another real user with a runtime directory but no daemon: a leftover file, not a socket.
    no_daemon = machine.run_user / str(other_user().pw_uid) / "relayd"
    no_daemon.mkdir(parents=True)
    (no_daemon / "wake").write_text("not a socket")
    (machine.run_user / "4343").mkdir()
    stray = machine.run_user / "not-a-uid" / "relayd"
    stray.mkdir(parents=True)
    make_socket(stray / "wake")
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env())
    assert (done.returncode, done.stderr) == (0, "")
    assert machine.flushes() == [(FLUSH, str(runtime), ME)]
    assert machine.runusers() == []


def test_no_daemon_no_call(machine: Machine) -> None:
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env())
    assert (done.returncode, done.stderr) == (0, "")
    assert machine.calls() == []


def test_system_daemon_flushed_as_its_socket_owner(machine: Machine) -> None:
    runtime = machine.system_daemon()
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env())
    assert done.returncode == 0, done.stderr
    assert machine.flushes() == [(FLUSH, str(runtime), ME)]
    assert machine.runusers() == []


def test_system_daemon_of_another_user_goes_through_runuser(machine: Machine) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving the socket to another user needs root")
    other = other_user()
    runtime = machine.system_daemon()
    os.chown(runtime / "wake", other.pw_uid, other.pw_gid, follow_symlinks=False)
    done = machine.run(NETWORKD, [], machine.env(STATE="routable", IFACE="eth0"))
    assert done.returncode == 0, done.stderr
    assert machine.flushes() == [(FLUSH, str(runtime), ME)]
    [runuser] = machine.runusers()
    assert runuser.startswith(f"runuser -u {other.pw_name} -- env RELAYD_RUNTIME_DIR={runtime} ")


def test_relayd_in_the_users_local_bin_is_found(machine: Machine) -> None:
    (machine.bin / "relayd").unlink()
    write_stub(Path(os.environ["HOME"]) / ".local" / "bin" / "relayd", STUB_RELAYD)
    runtime = machine.user_daemon(os.getuid())
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env())
    assert done.returncode == 0, done.stderr
    assert machine.flushes() == [(FLUSH, str(runtime), ME)]


# --- never fails, never hangs -----------------------------------------------------------------


def test_exits_0_when_the_flush_fails(machine: Machine) -> None:
    machine.user_daemon(os.getuid())
    machine.user_daemon(other_user().pw_uid)
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env(STUB_MODE="fail"))
    assert done.returncode == 0
    assert len(machine.flushes()) == 2  # one failure does not stop the other flush
    assert done.stderr.count("failed (exit status 75)") == 2, done.stderr


def test_exits_0_when_relayd_is_missing(machine: Machine) -> None:
    (machine.bin / "relayd").unlink()
    machine.user_daemon(os.getuid())
    done = machine.run(NETWORKMANAGER, ["eth0", "up"], machine.env())
    assert done.returncode == 0
    assert "failed (exit status 127)" in done.stderr


def test_a_hanging_flush_is_stopped(machine: Machine) -> None:
    machine.user_daemon(os.getuid())
    machine.user_daemon(other_user().pw_uid)
    started = time.monotonic()
    done = machine.run(
        NETWORKMANAGER, ["eth0", "up"], machine.env(STUB_MODE="hang", RELAYD_HOOK_TIMEOUT="1")
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0
    assert elapsed < 15, f"the hook took {elapsed:.1f}s"
    assert done.stderr.count("did not finish within 1s") == 2, done.stderr
    pids = [int(line) for line in machine.pids.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "the hanging flush was left running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
