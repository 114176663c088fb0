"""The systemd files in systemd/: the properties relayd's daemon relies on, and systemd's verify.

Over 400 lines: one place for every shipped unit, sysusers.d and tmpfiles.d file, since they
must agree with each other (user, directories, the submit socket).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from relayd import paths, settings
from relayd.daemon import sdnotify
from relayd.sysexits import ExitCode

ROOT = Path(__file__).resolve().parent.parent
USER_UNIT = ROOT / "systemd" / "relayd.service"
SYSTEM_UNIT = ROOT / "systemd" / "system" / "relayd.service"
SOCKET_UNIT = ROOT / "systemd" / "system" / "relayd-submit.socket"
BOTH = pytest.mark.parametrize("unit_file", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])

SIGTERM_BUDGET = 10.0  # SPEC §4: SIGTERM ends or abandons transactions within 10 s
SOME_SYSTEM_UID = 4242  # any non-root uid: the system unit runs as the relayd user
REQUIRED_FAMILIES = {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
# Options that need privileges or a mount/UTS/user namespace, which an unprivileged user
# manager sets up only with PrivateUsers= (systemd.exec(5)); PrivateUsers= itself fails to start
# the unit where unprivileged user namespaces are off.
USER_MANAGER_UNSUPPORTED = (
    "PrivateUsers",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "PrivateMounts",
    "PrivateIPC",
    "ProtectSystem",
    "ProtectHome",
    "ProtectHostname",
    "ProtectClock",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "RemoveIPC",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "User",
    "Group",
    "DynamicUser",
)
# verify names a setting it does not know, wherever it is; a clean unit gets no line at all.
UNKNOWN_SETTING = re.compile(r"unknown (key|lvalue|section)", re.IGNORECASE)
_TIMESPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}
_TIMESPAN_UNITS |= {"h": 3600.0, "hr": 3600.0}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value assigned, in order (systemd allows repeated keys)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"not an assignment inside a section: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(unit_file: Path) -> Unit:
    return parse_unit(unit_file.read_text(encoding="utf-8"))


def one(unit: Unit, key: str, section: str = "Service") -> str:
    """The single value of `key`; a missing or repeated key fails the test."""
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values!r}"
    return values[0]


def timespan(value: str) -> float:
    """Seconds in a systemd time span such as `20s`, `1min 30s` or a bare `30`."""
    text = value.strip().lower()
    assert re.fullmatch(r"(\d+(\.\d+)?\s*[a-z]*\s*)+", text), f"not a time span: {value!r}"
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    return sum(float(number) * _TIMESPAN_UNITS[unit or "s"] for number, unit in parts)


def environment(unit: Unit) -> dict[str, str]:
    """Environment= assignments (space-separated, quotes allowed) as a mapping."""
    env: dict[str, str] = {}
    for line in unit.get("Service", {}).get("Environment", []):
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            assert sep, f"Environment= word without '=': {word!r}"
            env[name] = value
    return env


def exec_words(unit: Unit, key: str) -> list[str]:
    return shlex.split(one(unit, key))


@BOTH
def test_notify_type_and_access(unit_file: Path) -> None:
    unit = load(unit_file)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"


@BOTH
def test_exec_start_runs_relayd_daemon(unit_file: Path) -> None:
    words = exec_words(load(unit_file), "ExecStart")
    assert len(words) == 2, words
    program, command = words
    assert os.path.basename(program) == "relayd"
    assert command == "daemon"
    assert program.startswith(("/", "%h/")), f"systemd needs an absolute path: {program}"


@BOTH
def test_reload_sends_sighup_to_the_main_process(unit_file: Path) -> None:
    words = exec_words(load(unit_file), "ExecReload")
    assert os.path.isabs(words[0]) and os.path.basename(words[0]) == "kill"
    args = words[1:]
    assert "-HUP" in args or args[:2] == ["-s", "HUP"], args
    assert args[-1] == "$MAINPID"


@BOTH
def test_restarts_on_failure_but_not_on_a_permanent_start_up_error(unit_file: Path) -> None:
    """A bad relayd.toml (78), a queue or runtime directory that cannot be created (73) or one
    owned by another user (77) stay until someone acts: no restart every RestartSec forever."""
    unit = load(unit_file)
    assert one(unit, "Restart") == "on-failure"
    assert timespan(one(unit, "RestartSec")) > 0
    prevented = one(unit, "RestartPreventExitStatus").split()
    for code in (ExitCode.CONFIG, ExitCode.CANTCREAT, ExitCode.NOPERM):
        assert str(int(code)) in prevented, code
    assert str(int(ExitCode.TEMPFAIL)) not in prevented  # another daemon may go away


@BOTH
def test_watchdog_is_pinged_well_within_its_timeout(unit_file: Path) -> None:
    watchdog = timespan(one(load(unit_file), "WatchdogSec"))
    assert watchdog > 0
    env = {"NOTIFY_SOCKET": "@relayd-test", "WATCHDOG_USEC": str(int(watchdog * 1_000_000))}
    interval = sdnotify.watchdog_interval(env)
    assert interval is not None and interval < watchdog


@BOTH
def test_stop_timeout_exceeds_the_sigterm_budget(unit_file: Path) -> None:
    unit = load(unit_file)
    assert timespan(one(unit, "TimeoutStopSec")) > SIGTERM_BUDGET
    # SIGTERM for the daemon alone: a passwordeval child killed mid-lookup would hold its mail.
    assert one(unit, "KillMode") == "mixed"


@BOTH
def test_common_hardening(unit_file: Path) -> None:
    unit = load(unit_file)
    for key in ("NoNewPrivileges", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID"):
        assert one(unit, key) == "yes", key
    assert one(unit, "SystemCallArchitectures") == "native"
    families = one(unit, "RestrictAddressFamilies")
    assert not families.startswith("~"), "an allow list is expected, not a deny list"
    assert set(families.split()) == REQUIRED_FAMILIES


def test_user_unit_uses_no_option_a_user_manager_cannot_apply() -> None:
    service = load(USER_UNIT)["Service"]
    assert sorted(set(service) & set(USER_MANAGER_UNSUPPORTED)) == []


def test_user_unit_is_wanted_by_default_target() -> None:
    assert one(load(USER_UNIT), "WantedBy", "Install") == "default.target"


def test_system_unit_runs_as_the_relayd_user() -> None:
    unit = load(SYSTEM_UNIT)
    assert one(unit, "User") == "relayd"
    assert one(unit, "Group") == "relayd"
    assert "DynamicUser" not in unit["Service"]
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_system_unit_environment_names_the_system_queue_and_socket(isolated_home: Path) -> None:
    """As a non-root user relayd would use XDG paths; the unit's variables must override them."""
    env = environment(load(SYSTEM_UNIT))
    daemon_env: Mapping[str, str] = {**env, "HOME": str(isolated_home)}
    database = settings.load(daemon_env, uid=SOME_SYSTEM_UID).database
    assert database == env["RELAYD_DATABASE_URL"]
    root_default = paths.default_database_url({}, uid=0)
    assert paths.sqlite_path(database) == paths.sqlite_path(root_default)
    assert paths.runtime_dir(daemon_env, uid=SOME_SYSTEM_UID) == paths.SYSTEM_RUNTIME_DIR
    assert paths.wake_socket(daemon_env, uid=SOME_SYSTEM_UID) == paths.wake_socket({}, uid=0)


def test_system_unit_directories_are_private_and_writable() -> None:
    unit = load(SYSTEM_UNIT)
    env = environment(unit)
    runtime = one(unit, "RuntimeDirectory")
    assert os.path.join("/run", runtime) == env["RELAYD_RUNTIME_DIR"]
    # Every user reaches the submit socket in it; it stays while the socket unit listens.
    assert int(one(unit, "RuntimeDirectoryMode"), 8) == 0o755
    assert one(unit, "RuntimeDirectoryPreserve") == "yes"
    spool = os.path.dirname(paths.sqlite_path(env["RELAYD_DATABASE_URL"]) or "")
    assert spool == paths.SYSTEM_STATE_DIR
    assert spool in one(unit, "ReadWritePaths").split()
    # StateDirectory= only reaches /var/lib: the spool is made by a privileged ExecStartPre.
    prepare = exec_words(unit, "ExecStartPre")
    assert prepare[0].startswith("+") and os.path.basename(prepare[0]) == "install"
    assert "-d" in prepare and prepare[-1] == spool
    owner = {flag: prepare[i + 1] for i, flag in enumerate(prepare) if flag in ("-o", "-g")}
    assert owner == {"-o": one(unit, "User"), "-g": one(unit, "Group")}
    assert int(prepare[prepare.index("-m") + 1], 8) == 0o700


def test_system_unit_full_hardening() -> None:
    unit = load(SYSTEM_UNIT)
    assert one(unit, "ProtectSystem") == "strict"
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "MemoryDenyWriteExecute",
        "RestrictNamespaces",
    ):
        assert one(unit, key) == "yes", key
    assert one(unit, "CapabilityBoundingSet") == ""


# systemd-analyze verify


def verify_complaints(output: str, unit_file: Path) -> list[str]:
    """Lines of verify's output about `unit_file`, or naming an unknown setting anywhere."""
    return [
        line
        for line in output.splitlines()
        if str(unit_file) in line
        or line.startswith(f"{unit_file.name}:")
        or UNKNOWN_SETTING.search(line)
    ]


def run_verify(unit_file: Path, *, user: bool) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: cannot run `systemd-analyze verify`")
    # `--user` needs $XDG_RUNTIME_DIR and expands %h from $HOME: the fixture's temporary ones.
    argv = [analyze, *(["--user"] if user else []), "verify", str(unit_file)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=dict(os.environ), check=False
    )
    if "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run a manager here: {result.stderr.strip()}")
    return result


def fake_executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(0o755)


def assert_verified(unit_file: Path, *, user: bool) -> None:
    result = run_verify(unit_file, user=user)
    output = result.stdout + result.stderr
    assert verify_complaints(output, unit_file) == [], output
    assert result.returncode == 0, output


def test_user_unit_passes_systemd_verify(isolated_home: Path) -> None:
    # %h expands to $HOME (the test's temporary home): the unit is verified unchanged.
    fake_executable(isolated_home / ".local" / "bin" / "relayd")
    assert_verified(USER_UNIT, user=True)


def system_unit_copy(tmp_path: Path) -> Path:
    """The system unit with ExecStart's program replaced by an executable that exists."""
    program = tmp_path / "bin" / "relayd"
    fake_executable(program)
    text = SYSTEM_UNIT.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={program}", text)
    assert count == 1
    copy = tmp_path / "system" / "relayd.service"
    copy.parent.mkdir()
    copy.write_text(text, encoding="utf-8")
    shutil.copy(SOCKET_UNIT, copy.parent)  # Requires= it: verify loads it from the same place
    return copy


def test_system_unit_passes_systemd_verify(tmp_path: Path) -> None:
    assert_verified(system_unit_copy(tmp_path), user=False)


def test_verify_check_reports_an_unknown_key(tmp_path: Path) -> None:
    """The verify check is not vacuous: a misspelt key in the unit is reported."""
    copy = system_unit_copy(tmp_path)
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("[Service]\n", "[Service]\nWatchDogSecs=30\n"),
        encoding="utf-8",
    )
    result = run_verify(copy, user=False)
    complaints = verify_complaints(result.stdout + result.stderr, copy)
    assert any("WatchDogSecs" in line for line in complaints), result.stderr


def test_a_supervisor_that_stops_reading_never_blocks_the_daemon(tmp_path: Path) -> None:
    # A full notify socket (the supervisor hung, or a test that read READY and went on) made
    # every STATUS= send block the daemon's event loop, SIGTERM included.
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    try:
        started = time.monotonic()
        sent = [sdnotify.notify("STATUS=" + "x" * 1000, environ={"NOTIFY_SOCKET": path})]
        while sent[-1] and len(sent) < 100_000:
            sent.append(sdnotify.notify("STATUS=" + "x" * 1000, environ={"NOTIFY_SOCKET": path}))
        assert sent[0] and not sent[-1]  # the buffer filled up: dropped, not waited for
        assert time.monotonic() - started < 5
    finally:
        receiver.close()


# The host's files: the submit socket, sysusers.d and tmpfiles.d (README: "relayd as the host's
# mail relay"; SPEC §7). The daemon's side of the socket contract is the fd named `submit`.

SYSUSERS = ROOT / "systemd" / "sysusers.d" / "relayd.conf"
TMPFILES = ROOT / "systemd" / "tmpfiles.d" / "relayd.conf"
SUBMIT_SOCKET = os.path.join(paths.SYSTEM_RUNTIME_DIR, "submit")
HOST_FILES = [SYSTEM_UNIT, SOCKET_UNIT]


@pytest.mark.parametrize("unit_file", HOST_FILES, ids=["service", "socket"])
def test_host_units_parse_as_ini(unit_file: Path) -> None:
    """What systemd reads is INI-like; configparser (repeated keys allowed) agrees with us."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(unit_file.read_text(encoding="utf-8"), source=str(unit_file))
    unit = load(unit_file)
    assert set(parser.sections()) == set(unit)
    for section, keys in unit.items():
        assert set(parser[section]) == set(keys), section


def test_socket_unit_is_the_submit_socket_contract() -> None:
    unit = load(SOCKET_UNIT)
    assert one(unit, "ListenStream", "Socket") == SUBMIT_SOCKET
    assert one(unit, "FileDescriptorName", "Socket") == "submit"
    assert int(one(unit, "SocketMode", "Socket"), 8) == 0o666
    assert int(one(unit, "DirectoryMode", "Socket"), 8) == 0o755
    assert one(unit, "Service", "Socket") == SYSTEM_UNIT.name
    assert one(unit, "WantedBy", "Install") == "sockets.target"


def test_service_and_socket_agree() -> None:
    """The socket lives in the service's runtime directory, which the service keeps and leaves
    reachable; the service waits for the socket and is enabled with it."""
    service, socket_unit = load(SYSTEM_UNIT), load(SOCKET_UNIT)
    listen = one(socket_unit, "ListenStream", "Socket")
    runtime = os.path.join("/run", one(service, "RuntimeDirectory"))
    assert os.path.dirname(listen) == runtime == environment(service)["RELAYD_RUNTIME_DIR"]
    assert int(one(service, "RuntimeDirectoryMode"), 8) == int(
        one(socket_unit, "DirectoryMode", "Socket"), 8
    )
    assert one(service, "RuntimeDirectoryPreserve") == "yes"
    assert SOCKET_UNIT.name in one(service, "Requires", "Unit").split()
    assert SOCKET_UNIT.name in one(service, "After", "Unit").split()
    assert one(service, "Also", "Install") == SOCKET_UNIT.name
    assert "AF_UNIX" in one(service, "RestrictAddressFamilies").split()


def table_lines(path: Path) -> list[list[str]]:
    """A sysusers.d/tmpfiles.d file's entries, split into fields (quotes kept together)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def test_sysusers_creates_the_services_user() -> None:
    service = load(SYSTEM_UNIT)
    [entry] = table_lines(SYSUSERS)
    assert len(entry) == 6, entry  # Type Name ID GECOS Home Shell
    kind, name, uid, _gecos, home, shell = entry
    assert (kind, name, uid) == ("u", one(service, "User"), "-")  # `u` makes the group too
    assert one(service, "Group") == name
    assert home == paths.SYSTEM_STATE_DIR
    assert os.path.basename(shell) == "nologin"


def test_tmpfiles_makes_the_services_directories() -> None:
    service = load(SYSTEM_UNIT)
    user, group = one(service, "User"), one(service, "Group")
    entries = table_lines(TMPFILES)
    assert all(len(entry) == 6 for entry in entries), entries  # Type Path Mode User Group Age
    modes = {path: int(mode, 8) for kind, path, mode, *_ in entries if kind == "d"}
    assert modes == {paths.SYSTEM_STATE_DIR: 0o700, paths.SYSTEM_RUNTIME_DIR: 0o755}
    assert {(entry[3], entry[4]) for entry in entries} == {(user, group)}
    assert paths.SYSTEM_STATE_DIR in one(service, "ReadWritePaths").split()


def test_sysusers_file_passes_systemd_sysusers(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed: cannot check relayd.conf with it")
    (tmp_path / "etc").mkdir()
    argv = [sysusers, f"--root={tmp_path}", "--dry-run", str(SYSUSERS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Creating user 'relayd'" in done.stderr + done.stdout
    assert not (tmp_path / "etc" / "passwd").exists()  # a dry run under a temporary root


def test_socket_unit_passes_systemd_verify(tmp_path: Path) -> None:
    copy = system_unit_copy(tmp_path)
    assert_verified(copy.parent / SOCKET_UNIT.name, user=False)


@pytest.mark.parametrize(
    ("unit_file", "service", "address"),
    [
        (ROOT / "systemd" / "relayd-smtp.socket", USER_UNIT, "127.0.0.1:2525"),
        (ROOT / "systemd" / "system" / "relayd-smtp.socket", SYSTEM_UNIT, "127.0.0.1:25"),
    ],
)
def test_smtp_socket_units_are_loopback_and_named_for_the_listener(
    unit_file: Path, service: Path, address: str
) -> None:
    """The daemon takes the fd named `smtp` as its listener; loopback only (not a relay)."""
    unit = load(unit_file)
    listen = one(unit, "ListenStream", "Socket")
    assert listen == address and settings.is_loopback(listen)
    assert one(unit, "FileDescriptorName", "Socket") == "smtp"
    assert one(unit, "Service", "Socket") == service.name
    assert one(unit, "WantedBy", "Install") == "sockets.target"
