"""`relayd setup` for a user: check the msmtprc, link `sendmail` and `mailq` in ~/.local/bin,
install and start the user service, offer the network hook and a desktop notification.

Everything is checked before anything changes; each step is one line (`would …` with
--dry-run, which writes nothing and runs only systemctl's read-only queries); a second run
changes nothing. A file that relayd did not make is never replaced: a link is relayd's when it
points at a `relayd-sendmail` (or is this installation's own `mailq` script).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import typer

import relayd
from relayd import paths
from relayd.cli import trust
from relayd.cli.setup import (
    PREVIOUS_SUFFIX,
    File,
    Link,
    Steps,
    free_name,
    refuse_foreign,
    replace_with_link,
    unit_text,
    write_file,
)
from relayd.sysexits import ExitCode
from relayd.text import sanitize

LINK_NAMES = ("sendmail", "mailq")  # both run relayd-sendmail, which lists the queue as mailq
UNIT = "relayd.service"
NM_DISPATCHER = Path("/etc/NetworkManager/dispatcher.d")
HOOK_NAME = "90-relayd"
HOOK = Path(relayd.__file__).parent / "data" / "contrib" / "networkmanager" / HOOK_NAME
# Run as `COMMAND ID STATE REASON` (daemon/notify.py): a notification for held and failed mail.
NOTIFY_COMMAND = (
    "f() { case $2 in held|failed) notify-send --app-name=relayd"
    ' "relayd: mail $2" "$1: $3" ;; esac; }; f'
)
geteuid = os.geteuid  # tests run as root and pretend not to be
_TIMEOUT = 60  # seconds for one systemctl call
_NOTIFY_HEADER = re.compile(r"(?m)^[ \t]*\[[ \t]*notify[ \t]*\][ \t]*(#.*)?$")


def local_bin() -> Path:
    """Where pip --user and pipx put scripts, and where the links go: ~/.local/bin."""
    return Path(os.path.expanduser("~/.local/bin"))


def unit_path() -> Path:
    """The user unit: $XDG_CONFIG_HOME/systemd/user/relayd.service."""
    return Path(paths.config_home()) / "systemd" / "user" / UNIT


def _state(path: Path, target: Path, bin_dir: Path) -> str:
    if path.is_symlink():
        pointed = os.readlink(path)
        if pointed == str(target):
            return "unchanged"
        return "replace" if os.path.basename(pointed) == trust.SENDMAIL_SCRIPT else "foreign"
    if path == bin_dir / path.name and path.is_file():  # pip's own `mailq` script, here
        return "unchanged"
    return "foreign" if os.path.lexists(path) else "create"


def plan_links(bin_dir: Path) -> list[Link]:
    """sendmail and mailq in ~/.local/bin, each a link to this installation's relayd-sendmail."""
    target = bin_dir / trust.SENDMAIL_SCRIPT
    links = []
    for name in LINK_NAMES:
        path = local_bin() / name
        links.append(Link(path, str(target), _state(path, target, bin_dir)))
    return links


def plan_unit(bin_dir: Path) -> File:
    """The user unit, its ExecStart at this installation's relayd."""
    path = unit_path()
    text = unit_text(UNIT, bin_dir)
    if not os.path.lexists(path):
        return File(path, text, "create")
    same = path.is_file() and not path.is_symlink() and path.read_bytes() == text.encode()
    return File(path, text, "unchanged" if same else "update")


def _check_config() -> bool:
    """`relayd config check`'s findings, one line each; True when there are none."""
    from relayd.cli import configcheck

    report = configcheck.check(None)
    for problem in report.problems:
        typer.echo(sanitize(str(problem), "terminal"))
    if report.problems:
        count = len(report.problems)
        typer.echo(
            f"relayd: {count} configuration problem(s): fix them (`relayd config check`) and run"
            " `relayd setup` again; nothing was changed",
            err=True,
        )
        return False
    typer.echo(f"checked {', '.join(report.msmtprc)}: accounts {', '.join(report.accounts)}")
    return True


def _move_away(_link: Link) -> str:
    return "move it away and run `relayd setup` again; nothing was changed"


def _do_links(steps: Steps, links: list[Link]) -> None:
    for link in links:
        if link.state == "unchanged":
            typer.echo(f"unchanged {link.path}")
            continue
        verb = "link" if link.state == "create" else "relink"
        if steps.say(f"{verb} {link.path} -> {link.target}"):
            replace_with_link(link, None)
    if str(local_bin()) not in os.environ.get("PATH", "").split(os.pathsep):
        typer.echo(f"note: {local_bin()} is not in PATH: add it, or give programs the full path")


def _do_unit(steps: Steps, unit: File) -> bool:
    """Install the unit; whether it changed (or would)."""
    if unit.state == "unchanged":
        typer.echo(f"unchanged {unit.path}")
        return False
    previous = free_name(unit.path, PREVIOUS_SUFFIX) if unit.state == "update" else None
    kept = f" (the previous one kept as {previous})" if previous else ""
    if steps.say(f"{'update' if previous else 'install'} {unit.path}{kept}"):
        write_file(unit, previous)
    return True


@dataclass(frozen=True)
class _Systemctl:
    """`systemctl --user`: queries always run; changes go through Steps."""

    program: str

    def query(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.program, "--user", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def change(self, steps: Steps, *args: str) -> bool:
        """Run a changing command as a step; False if it failed (said in one line)."""
        if not steps.say(f"run systemctl --user {' '.join(args)}"):
            return True
        done = self.query(*args)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            typer.echo(f"relayd: systemctl --user {' '.join(args)} failed: {why}", err=True)
            return False
        return True


def _by_hand(why: str) -> None:
    typer.echo(
        f"{why}: start the daemon yourself: `systemctl --user daemon-reload && systemctl --user"
        f" enable --now {UNIT}` in a systemd session, else `relayd daemon` from your session's"
        " start-up"
    )


def _do_service(steps: Steps, unit_changed: bool, settings_changed: bool) -> bool:
    """Enable and start the user service (a running one reloads changed settings); False if
    systemctl failed."""
    program = shutil.which("systemctl")
    if program is None:
        _by_hand("no systemctl")
        return True
    systemctl = _Systemctl(program)
    probe = systemctl.query("show-environment")  # needs the user manager on its bus
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        _by_hand(f"no systemd user manager reachable ({why})")
        return True
    enabled = systemctl.query("is-enabled", UNIT).stdout.strip() == "enabled"
    active = systemctl.query("is-active", UNIT).stdout.strip() == "active"
    if unit_changed and not systemctl.change(steps, "daemon-reload"):
        return False
    if not (enabled and active):
        return systemctl.change(steps, "enable", "--now", UNIT)
    if unit_changed:
        return systemctl.change(steps, "try-restart", UNIT)
    if settings_changed:  # SIGHUP: the daemon rereads relayd.toml
        return systemctl.change(steps, "reload", UNIT)
    typer.echo(f"unchanged {UNIT}: enabled and running")
    return True


def _offer_hook() -> None:
    """The NetworkManager hook needs root: say how to install it (only where NM runs)."""
    if not NM_DISPATCHER.is_dir():
        return
    installed = NM_DISPATCHER / HOOK_NAME
    if installed.exists():
        typer.echo(f"unchanged {installed}")
        return
    source = HOOK if HOOK.is_file() else Path("contrib/networkmanager") / HOOK_NAME
    typer.echo(
        "optional: the daemon sees the network come back by itself; where it cannot (a sandbox"
        f" without netlink) install the NetworkManager hook: sudo install -o root -g root -m"
        f" 0755 {source} {installed}"
    )


def _notify_target() -> Path | None:
    """The relayd.toml the daemon reads, if this user's own (or $RELAYD_CONFIG)."""
    found, named = paths.settings_file()
    user_file = Path(paths.config_home()) / "relayd" / "relayd.toml"
    if named and found:
        return Path(found)
    if found is not None and Path(found) != user_file:
        return None  # the host's file applies: a new user file would hide it
    return user_file


def _with_notify(text: str) -> str | None:
    """`text` with `[notify] command` set; None when it already is, or cannot be placed."""
    table = tomllib.loads(text).get("notify")
    line = f"command = '{NOTIFY_COMMAND}'  # by relayd setup: held and failed mail\n"
    if table is None:
        if text and not text.endswith("\n"):
            text += "\n"
        separator = "\n" if text else ""  # an empty line before the new table
        return f"{text}{separator}[notify]\n{line}"
    if not isinstance(table, dict) or "command" in table:
        return None
    header = _NOTIFY_HEADER.search(text)
    if header is None:
        return None
    at = header.end()
    return f"{text[:at]}\n{line}{text[at + 1 :]}"


def _do_notify(steps: Steps) -> bool:
    """Set `[notify] command` in relayd.toml unless one is set; whether it changed."""
    if shutil.which("notify-send") is None:
        typer.echo("desktop notifications skipped: no notify-send (Debian: libnotify-bin)")
        return False
    target = _notify_target()
    if target is None:
        typer.echo(
            f"desktop notifications: add to [notify] in relayd.toml: command = '{NOTIFY_COMMAND}'"
        )
        return False
    try:
        text = target.read_text(encoding="utf-8") if target.exists() else ""
        changed = _with_notify(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        typer.echo(
            f"relayd: {target}: not changed ({exc}); `relayd config check` says more", err=True
        )
        return False
    if changed is None:
        typer.echo(f"unchanged [notify] command in {target}")
        return False
    if steps.say(
        f"set [notify] command in {target} (a desktop notification for held and failed mail)"
    ):
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
        write_file(File(target, changed, "update"), None, mode)
    return True


def setup(*, dry_run: bool, notify: bool) -> int:
    """The user setup (see the module); its exit code."""
    if geteuid() == 0:
        typer.echo(
            "relayd: `relayd setup` sets relayd up for the user who runs it; as root, set up the"
            " host with `relayd setup --system`",
            err=True,
        )
        return ExitCode.USAGE
    bin_dir = trust.scripts_dir()
    if not (bin_dir / trust.SENDMAIL_SCRIPT).is_file():
        typer.echo(
            f"relayd: no {trust.SENDMAIL_SCRIPT} in {bin_dir}: is relayd installed?", err=True
        )
        return ExitCode.OSFILE
    if not _check_config():
        return ExitCode.CONFIG
    links = plan_links(bin_dir)
    if not refuse_foreign(links, _move_away):
        return ExitCode.CANTCREAT
    unit = plan_unit(bin_dir)
    steps = Steps(dry_run)
    _do_links(steps, links)
    settings_changed = notify and _do_notify(steps)  # before the daemon starts: it reads it
    unit_changed = _do_unit(steps, unit)
    service_ok = _do_service(steps, unit_changed, settings_changed)
    _offer_hook()
    return ExitCode.OK if service_ok else ExitCode.OSERR
