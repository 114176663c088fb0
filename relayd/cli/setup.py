"""`relayd setup --system`: make this root-owned installation the host's sendmail and its daemon
(`relayd setup` without --system is a user's setup: cli/setup_user.py).

It links /usr/sbin/sendmail, /usr/bin/mailq (and /usr/lib/sendmail) to this installation's
relayd-sendmail and installs the systemd units, sysusers.d and tmpfiles.d files shipped in
relayd/data/systemd. Everything is checked before anything is changed; each step is one line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

import relayd
from relayd.cli import trust
from relayd.cli.output import fail
from relayd.sysexits import ExitCode

geteuid = os.geteuid  # tests pretend to be root or not

DATA = Path(relayd.__file__).parent / "data" / "systemd"
# (file in DATA, where it goes on the host)
FILES = (
    ("system/relayd.service", "etc/systemd/system/relayd.service"),
    ("system/relayd-submit.socket", "etc/systemd/system/relayd-submit.socket"),
    ("system/relayd-smtp.socket", "etc/systemd/system/relayd-smtp.socket"),
    ("sysusers.d/relayd.conf", "etc/sysusers.d/relayd.conf"),
    ("tmpfiles.d/relayd.conf", "etc/tmpfiles.d/relayd.conf"),
)
LINKS = ("usr/sbin/sendmail", "usr/bin/mailq")
USR_LIB_SENDMAIL = "usr/lib/sendmail"  # only where /usr/lib exists (not merged away)
BACKUP_SUFFIX = ".relayd-backup"  # a sendmail that was not relayd's, kept by --force
PREVIOUS_SUFFIX = ".relayd-old"  # an installed file replaced by a newer one
_EXEC_START = re.compile(r"(?m)^ExecStart=\S+")


@dataclass(frozen=True)
class Link:
    """One sendmail name: `path` should be a symbolic link to `target`."""

    path: Path
    target: str
    state: str  # "unchanged", "create", "replace" (another relayd's link), "foreign"


@dataclass(frozen=True)
class File:
    """One installed file and the text it should hold."""

    path: Path
    text: str
    state: str  # "unchanged", "create", "update"


def _is_relayd_link(path: Path) -> bool:
    return path.is_symlink() and os.path.basename(os.readlink(path)) == trust.SENDMAIL_SCRIPT


def plan_links(root: Path, sendmail: Path) -> list[Link]:
    names = list(LINKS)
    if (root / "usr" / "lib").is_dir():
        names.append(USR_LIB_SENDMAIL)
    plan = []
    for name in names:
        path = root / name
        if path.is_symlink() and os.readlink(path) == str(sendmail):
            state = "unchanged"
        elif _is_relayd_link(path):
            state = "replace"
        elif os.path.lexists(path):
            state = "foreign"
        else:
            state = "create"
        plan.append(Link(path, str(sendmail), state))
    return plan


def _quoted(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if re.search(r"\s", text) else text


def unit_text(source: str, bin_dir: Path) -> str:
    """The shipped file, the service's ExecStart pointing at this installation's relayd."""
    text = (DATA / source).read_text(encoding="utf-8")
    if source.endswith(".service"):
        program = _quoted(bin_dir / trust.RELAYD_SCRIPT)
        text, count = _EXEC_START.subn(lambda _: f"ExecStart={program}", text)
        assert count == 1, f"{source}: one ExecStart= line expected"
    return text


def plan_files(root: Path, bin_dir: Path) -> list[File]:
    plan = []
    for source, target in FILES:
        path = root / target
        text = unit_text(source, bin_dir)
        if not os.path.lexists(path):
            state = "create"
        elif path.is_file() and not path.is_symlink() and path.read_bytes() == text.encode():
            state = "unchanged"
        else:
            state = "update"
        plan.append(File(path, text, state))
    return plan


def free_name(path: Path, suffix: str) -> Path:
    """`path` + `suffix`, or + `suffix.N`: a name nothing has yet."""
    candidate = path.with_name(path.name + suffix)
    number = 0
    while os.path.lexists(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}{suffix}.{number}")
    return candidate


def replace_with_link(link: Link, backup: Path | None) -> None:
    """Make `link` (through a new link renamed over the old name), copying the old to `backup`."""
    link.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    temporary = link.path.with_name(f".{link.path.name}.relayd-new")
    if os.path.lexists(temporary):
        temporary.unlink()
    os.symlink(link.target, temporary)
    if backup is not None:
        shutil.copy2(link.path, backup, follow_symlinks=False)
    os.replace(temporary, link.path)  # the old name never goes missing


def write_file(item: File, previous: Path | None, mode: int = 0o644) -> None:
    """Write `item` atomically (fsynced, then renamed over the old), keeping `previous`."""
    item.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if previous is not None:
        shutil.copy2(item.path, previous, follow_symlinks=False)
    fd, temporary = tempfile.mkstemp(prefix=f".{item.path.name}.", dir=item.path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(item.text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, item.path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


class Steps:
    """Prints each step as one line (`would …` in a dry run) and does it unless dry."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def say(self, line: str) -> bool:
        """Print the step; True when it should be carried out."""
        typer.echo(f"would {line}" if self.dry_run else line)
        return not self.dry_run


def _do_links(steps: Steps, links: list[Link]) -> None:
    for link in links:
        arrow = f"{link.path} -> {link.target}"
        if link.state == "unchanged":
            typer.echo(f"unchanged {arrow}")
            continue
        backup = free_name(link.path, BACKUP_SUFFIX) if link.state == "foreign" else None
        if backup is not None:
            steps.say(f"keep {link.path} as {backup}")  # copied as the link replaces it
        verb = "link" if link.state == "create" else "relink"
        if steps.say(f"{verb} {arrow}"):
            replace_with_link(link, backup)


def _do_files(steps: Steps, files: list[File]) -> None:
    for item in files:
        if item.state == "unchanged":
            typer.echo(f"unchanged {item.path}")
            continue
        previous = free_name(item.path, PREVIOUS_SUFFIX) if item.state == "update" else None
        if previous is not None:
            line = f"update {item.path} (the previous one kept as {previous})"
        else:
            line = f"install {item.path}"
        if steps.say(line):
            write_file(item, previous)


def _run_tools(steps: Steps, root: Path) -> bool:
    """Create the user and directories, tell systemd; False if a needed tool failed."""
    if root != Path("/"):
        typer.echo(
            "not run with --root: systemd-sysusers, systemd-tmpfiles --create and"
            " systemctl daemon-reload (the target host runs them)"
        )
        return True
    commands = (
        (["systemd-sysusers", "/etc/sysusers.d/relayd.conf"], True),
        (["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/relayd.conf"], True),
        (["systemctl", "daemon-reload"], False),  # no manager running (a container): harmless
    )
    ok = True
    for argv, needed in commands:
        if not steps.say(f"run {' '.join(argv)}"):
            continue
        if shutil.which(argv[0]) is None:
            typer.echo(f"relayd: {argv[0]} not found: run the step by hand", err=True)
            ok = ok and not needed
            continue
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            typer.echo(f"relayd: {argv[0]} failed: {why}", err=True)
            ok = ok and not needed
    return ok


def refuse_foreign(links: list[Link], advice: Callable[[Link], str]) -> bool:
    """Say in one line each link path that holds a file relayd did not make, with `advice`;
    True when there is none."""
    foreign = [link for link in links if link.state == "foreign"]
    for link in foreign:
        what = f"a link to {os.readlink(link.path)}" if link.path.is_symlink() else "a file"
        typer.echo(
            f"relayd: {link.path} is {what}, not relayd's: not replaced; {advice(link)}",
            err=True,
        )
    return not foreign


def _force_advice(link: Link) -> str:
    return f"--force replaces it and keeps it as {link.path}{BACKUP_SUFFIX}"


def setup_command(
    system: Annotated[
        bool,
        typer.Option(
            "--system", help="Set up the host: sendmail links, systemd units, user, dirs."
        ),
    ] = False,
    root: Annotated[
        Path,
        typer.Option(
            "--root", metavar="DIR", help="Install under DIR instead of / (an image, a package)."
        ),
    ] = Path("/"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps; change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --system: replace a sendmail that is not relayd's (backed up)."
        ),
    ] = False,
    notify: Annotated[
        bool,
        typer.Option(
            "--notify/--no-notify",
            help="User setup: a desktop notification (notify-send) for held and failed mail.",
        ),
    ] = True,
) -> None:
    """Set relayd up for you (sendmail and mailq in ~/.local/bin, the user service) or, with
    --system as root, for the whole host. Idempotent; --dry-run prints the steps only."""
    if not system:
        if root != Path("/") or force:
            fail("--root and --force go with --system", ExitCode.USAGE)
        from relayd.cli import setup_user

        raise typer.Exit(setup_user.setup(dry_run=dry_run, notify=notify))
    if geteuid() != 0:
        fail("`relayd setup --system` must run as root: it writes /usr and /etc", ExitCode.NOPERM)
    root = root.absolute()
    bin_dir = trust.scripts_dir()
    sendmail = bin_dir / trust.SENDMAIL_SCRIPT
    if not sendmail.is_file():
        fail(f"no {trust.SENDMAIL_SCRIPT} in {bin_dir}: is relayd installed?", ExitCode.OSFILE)
    reason = trust.untrusted(*trust.installation_paths(bin_dir))
    if reason:
        fail(
            f"refusing to make {sendmail} the host's sendmail: {reason}, so that user could"
            " change what root's cron jobs run; install relayd as root outside any home"
            " directory (e.g. python3 -m venv /opt/relayd)",
            ExitCode.NOPERM,
        )
    links = plan_links(root, sendmail)
    if not force and not refuse_foreign(links, _force_advice):
        raise typer.Exit(ExitCode.CANTCREAT)
    files = plan_files(root, bin_dir)
    steps = Steps(dry_run)
    _do_links(steps, links)
    _do_files(steps, files)
    tools_ok = _run_tools(steps, root)
    typer.echo(
        "next: /etc/msmtprc as root:relayd 0640, then"
        " systemctl enable --now relayd-submit.socket relayd.service"
        " (and relayd-smtp.socket for programs that speak SMTP to 127.0.0.1:25)"
    )
    if not tools_ok:
        raise typer.Exit(ExitCode.OSERR)
