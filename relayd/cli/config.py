"""`relayd config check`: every problem in the msmtprc and relayd.toml, with file:line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from relayd.cli.output import json_line, on_terminal, run
from relayd.sysexits import ExitCode
from relayd.text import sanitize

if TYPE_CHECKING:
    from relayd.cli import configcheck

app = typer.Typer(
    name="config", help="Check the configuration; hash a password.", no_args_is_help=True
)


def _summary(report: configcheck.Report) -> list[str]:
    lines = [f"checked {path}" for path in report.msmtprc]
    lines += [f"ignored {path}: {why}" for path, why in report.ignored]
    # in msmtp's order: the user file's accounts, then the system file's it does not redefine
    lines.append(f"accounts: {', '.join(report.accounts) or '(none)'}")
    if report.settings_file is not None:
        lines.append(f"checked {report.settings_file}")
    else:
        lines.append("no relayd.toml: the defaults apply")
    from relayd.cli.configcheck import NO_DEFAULT

    lines.append(f"default account: {report.default or NO_DEFAULT}")
    lines.append(f"queue database: {report.database}")
    return lines


def _check(conffile: str | None, as_json: bool) -> int:
    from relayd.cli import configcheck  # parses everything: only when asked to

    report = configcheck.check(conffile)
    colour = on_terminal() and not as_json
    for problem in report.problems:
        if as_json:
            typer.echo(json_line(problem.as_dict()))
        elif colour and problem.file:
            # Messages quote the files, which may hold anything: shown escaped, as everywhere.
            where = typer.style(sanitize(problem.location(), "terminal"), bold=True)
            message = typer.style(sanitize(problem.message, "terminal"), fg="red")
            typer.echo(f"{where} {message}")
        else:
            typer.echo(sanitize(str(problem), "terminal"))
    if report.problems:
        if not as_json:
            count = len(report.problems)
            typer.echo(f"relayd: {count} problem{'s' if count > 1 else ''} found", err=True)
        return ExitCode.CONFIG
    if not as_json:
        for line in _summary(report):
            typer.echo(sanitize(line, "terminal"))
        ok = "configuration OK"
        typer.echo(typer.style(ok, fg="green", bold=True) if colour else ok)
    return ExitCode.OK


@app.command("check")
def check_command(
    conffile: str | None = typer.Option(
        None,
        "--file",
        "-C",
        metavar="FILE",
        help="Check this msmtprc instead of ~/.msmtprc (as msmtp -C / relayd-sendmail -C).",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='One JSON object a line per problem: {"file", "line", "message"} (file and line '
        "may be null); nothing at all for a clean configuration.",
    ),
) -> None:
    """Report every problem in the msmtprc and relayd.toml; exit 78 if there is any.

    The msmtprc is found as msmtp finds it (-C FILE, ~/.msmtprc, $XDG_CONFIG_HOME/msmtp/config,
    and the system /etc/msmtprc), relayd.toml as every relayd command finds it ($RELAYD_CONFIG,
    $XDG_CONFIG_HOME/relayd/relayd.toml, /etc/relayd/relayd.toml). Each problem is one line
    `FILE: line N: message` on stdout, with msmtp's texts; a count follows on stderr. A clean
    configuration prints a short summary (files, accounts, default account, queue) and exits 0.
    `eval` lines run as msmtp runs them; `passwordeval` never runs, and no password is printed.
    """
    run(lambda: _check(conffile, as_json))


def _read_password() -> str:
    """The password: asked twice on a terminal, else the first line of stdin."""
    import getpass
    import sys

    from relayd.errors import RelaydError

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise RelaydError("the passwords differ", ExitCode.DATAERR)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise RelaydError("empty password", ExitCode.DATAERR)
    return password


def _hash_password(user: str | None) -> int:
    import json
    import re

    from relayd.submission.smtp_auth import hash_password

    hashed = hash_password(_read_password())
    if user is None:
        typer.echo(hashed)
    else:
        key = user if re.fullmatch(r"[A-Za-z0-9_-]+", user) else json.dumps(user)
        typer.echo(f'{key} = "{hashed}"')
    return ExitCode.OK


@app.command("hash-password")
def hash_password_command(
    user: str | None = typer.Argument(
        None, help='Print a line `USER = "HASH"` for [listen] users instead of the hash alone.'
    ),
) -> None:
    """Hash a password for relayd.toml's [listen] users (scrypt; the SMTP listener's AUTH).

    On a terminal the password is asked twice without echo; otherwise it is the first line of
    standard input. The hash goes to stdout, e.g. `users = { alice = "scrypt$n=…" }`.
    """
    run(lambda: _hash_password(user))
