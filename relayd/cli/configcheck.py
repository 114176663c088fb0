"""`relayd config check`'s findings: every problem in the msmtprc files and relayd.toml."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from relayd import paths, settings
from relayd.accounts import files, msmtprc, resolve
from relayd.accounts.account import Account
from relayd.delivery import tls
from relayd.delivery.classify import Failure
from relayd.errors import ConfigError, RelaydError
from relayd.settings_values import KEYRING

SCRUB_MIN = 3  # shorter passwords are not scrubbed: they would blot out ordinary words
NO_DEFAULT = "none (mail needs -a ACCOUNT or an envelope-from that matches an account's from)"


@dataclass(frozen=True)
class Problem:
    """One problem: its file (None: the environment), its line when known, and what is wrong."""

    file: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.location()} {self.message}" if self.file else self.message

    def location(self) -> str:
        """`FILE: line N:`, or `FILE:` for a problem with the whole file."""
        if self.line is None:
            return f"{self.file}:"
        return f"{self.file}: line {self.line}:"

    def as_dict(self) -> dict[str, str | int | None]:
        """The JSON object of `relayd config check --json`."""
        return {"file": self.file, "line": self.line, "message": self.message}


@dataclass
class Report:
    """What the check found, and what it read (for the summary of a clean configuration)."""

    problems: list[Problem] = field(default_factory=list)
    msmtprc: list[str] = field(default_factory=list)  # the files read, user file first
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, why), as msmtp does
    accounts: list[str] = field(default_factory=list)  # in msmtp's selection order
    default: str | None = None  # the account used without -a or a matching -f
    settings_file: str | None = None  # None: no relayd.toml, the defaults apply
    database: str | None = None  # the queue, its password hidden
    secrets: set[str] = field(default_factory=set, repr=False)  # the passwords seen, to scrub


def _strip_location(message: str, path: str, line: int | None) -> str:
    """A ConfigError's text without the `FILE: [line N: ]` that the Problem already holds."""
    for prefix in (f"{path}: line {line}: ", f"{path}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _from_error(err: ConfigError, path: str) -> Problem:
    where = err.path or path
    return Problem(where, err.line, _strip_location(err.message, where, err.line))


def _read(path: str) -> tuple[bytes, os.stat_result]:
    with open(path, "rb") as handle:
        return handle.read(), os.fstat(handle.fileno())


def _load(path: str, *, user: bool, required: bool, report: Report) -> msmtprc.ConfFile | None:
    """Parse one msmtprc collecting every error; None when it cannot be read.

    msmtp ignores a system file it cannot open, and a user file that does not exist; any other
    failure to read is a problem (the user file would be skipped without a word).
    """
    try:
        data, st = _read(path)
    except OSError as err:
        reason = files.strerror(err)
        if required or (user and not isinstance(err, FileNotFoundError)):
            report.problems.append(Problem(path, None, reason))
        else:
            report.ignored.append((path, reason))
        return None
    errors: list[ConfigError] = []
    conf = msmtprc.parse(path, data, problems=errors)
    report.problems += [_from_error(err, path) for err in errors]
    report.secrets.update(a.password for a in conf.accounts if a.password)
    # Also the passwords of blocks that failed to define an account: read off the lines.
    for raw in data.split(b"\n"):
        command, argument = msmtprc.split_line(raw.decode("utf-8", "surrogateescape"))
        if command == "password" and argument:
            report.secrets.add(argument)
    report.msmtprc.append(path)
    if user and conf.contains_secrets and os.geteuid() != 0:
        try:
            files.check_permissions(path, st)
        except ConfigError as err:
            report.problems.append(_from_error(err, path))
    return conf


def _account_problem(account: Account) -> str | None:
    """What would make every delivery through `account` fail before any server answers."""
    resolved = account.copy()
    try:
        resolve.apply_defaults(resolved)
        resolve.check(resolved, sendmail_mode=False)
    except ConfigError as err:
        # resolve names the account and its file: the Problem holds both already
        return err.message.removeprefix(f"account {account.id} from {account.conffile}: ")
    if not resolved.tls:
        return None
    context = tls.client_context(resolved)  # loads the key, certificate, trust and CRL files
    if not isinstance(context, Failure):
        return None
    # msmtp's text gives GnuTLS's vague reason: add the system's for the files it cannot open
    reasons = [f" ({path}: {why})" for path in _tls_files(resolved) if (why := _unopenable(path))]
    return context.error + "".join(reasons)


def _tls_files(account: Account) -> list[str]:
    trust = account.tls_trust_file if account.tls_trust_file != "system" else None
    named = (trust, account.tls_crl_file, account.tls_cert_file, account.tls_key_file)
    return [path for path in named if path]


def _unopenable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as err:
        return files.strerror(err)


def check_accounts(conffile: str | None, report: Report) -> None:
    """The msmtprc files, found as msmtp finds them (`conffile`: its -C), and their accounts."""
    user = _load(
        conffile or files.user_file(), user=True, required=conffile is not None, report=report
    )
    system = _load(files.system_file(), user=False, required=False, report=report)
    used: list[tuple[msmtprc.ConfFile, Account]] = []
    if user is not None:
        used += [(user, account) for account in user.accounts]
    if system is not None:
        shadowed = {account.id for account in user.accounts} if user is not None else set()
        used += [(system, a) for a in system.accounts if a.id not in shadowed]
    for conf, account in used:
        problem = _account_problem(account)
        if problem is not None:
            line = conf.lines.get(account.id or "")
            report.problems.append(Problem(conf.path, line, f"account {account.id}: {problem}"))
    report.accounts = [account.id or "" for _, account in used]
    report.default = "default" if "default" in report.accounts else None
    # a file that could not be read already explains the missing accounts
    unread = any(p.line is None and p.file not in report.msmtprc for p in report.problems)
    if not used and not unread and not os.environ.get("SMTPSERVER"):
        where = " and ".join(report.msmtprc)
        if where:
            text = f" in {where}"
        else:
            # (a -C file that is missing is a problem of its own: `unread`)
            dot, xdg = files.user_candidates()
            text = (
                ": no configuration file available (looked for"
                f" {dot} or {xdg}, and {files.system_file()})"
            )
        report.problems.append(Problem(None, None, f"no account defined{text}"))


_TABLE = re.compile(r"\s*\[\s*([\w.\-\" @+]+?)\s*\]")
_KEY = re.compile(r"\s*([\w.\-\" @+]+?)\s*=")


def key_line(text: str, key: str) -> int | None:
    """The line that sets dotted `key` in TOML `text` (or the nearest enclosing table), if seen.

    tomllib reports no positions for values: this is a best-effort scan of `[table]` headers
    and `key =` lines, good for the files people write by hand.
    """
    table = ""
    best: tuple[int, int] | None = None  # (length of the matched prefix, line)
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header is not None and not line.lstrip().startswith("[["):
            table = _dotted(header.group(1))
            name = table
        else:
            found = _KEY.match(line)
            if found is None:
                continue
            name = _dotted(f"{table}.{found.group(1)}" if table else found.group(1))
        if name == key:
            return lineno
        if key.startswith(name + ".") and (best is None or len(name) > best[0]):
            best = (len(name), lineno)
    return best[1] if best is not None else None


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip('"') for part in text.split("."))


def _database_problem(url: str) -> str | None:
    """Why SQLAlchemy could not open `url` (no such dialect, driver not installed), or None."""
    if paths.sqlite_path(url) is not None:
        return None
    import sqlalchemy as sa  # only for a server database

    try:
        sa.make_url(url).get_dialect().import_dbapi()
    except sa.exc.NoSuchModuleError:
        return f"no database dialect {url.partition('://')[0]!r}"
    except sa.exc.ArgumentError:
        return "not a database URL SQLAlchemy can read"
    except ImportError as err:
        return f"the database driver is not installed ({err})"
    return None


def _listen_users(text: str) -> set[str]:
    """The `[listen] users` values as written (hashes; plaintext that failed the check), to
    scrub from every message; "keyring" is not a secret."""
    import tomllib

    try:
        listen = tomllib.loads(text).get("listen")
    except tomllib.TOMLDecodeError:
        return set()
    users = listen.get("users") if isinstance(listen, dict) else None
    if not isinstance(users, dict):
        return set()
    return {value for value in users.values() if isinstance(value, str) and value != KEYRING}


def _listen_tls(listen: settings.Listen, path: str, text: str, report: Report) -> None:
    """The daemon's start-up error for `[listen] tls_cert`/`tls_key` it could not load."""
    if listen.tls_cert is None or listen.tls_key is None:
        return
    from relayd.submission.listener import tls_context  # aiosmtpd: only with TLS files set

    try:
        tls_context(listen.tls_cert, listen.tls_key)
    except RelaydError as err:
        report.problems.append(Problem(path, key_line(text, "listen.tls_cert"), err.message))


def check_settings(environ: Mapping[str, str], report: Report) -> None:
    """relayd.toml, found as `settings.load` finds it, and $RELAYD_DATABASE_URL."""
    path = paths.settings_file(environ)[0]
    default_database = paths.default_database_url(environ)
    found = settings.Settings(database=default_database)
    if path is not None:
        report.settings_file = path
        try:
            text = settings.read(path)
        except ConfigError as err:
            report.problems.append(_from_error(err, path))
        else:
            found, mistakes = settings.check(text, path, default_database=default_database)
            report.secrets.update(_listen_users(text))
            for mistake in mistakes:
                line = mistake.line
                if line is None and mistake.key is not None:
                    line = key_line(text, mistake.key)
                report.problems.append(Problem(path, line, mistake.message))
            _listen_tls(found.listen, path, text, report)
            for name in found.oauth2 if report.accounts else ():  # none: already reported
                if name not in report.accounts:
                    line = key_line(text, f"oauth2.{name}")
                    message = f"oauth2.{name}: no msmtprc account {name}"
                    report.problems.append(Problem(path, line, message))
            why = _database_problem(found.database)
            if why is not None:
                line = key_line(text, "database")
                report.problems.append(Problem(path, line, f"database: {why}"))
    database = found.database
    override = environ.get("RELAYD_DATABASE_URL")
    if override:
        try:
            database = settings.database_override(override)
        except ConfigError as err:
            report.problems.append(Problem(None, None, err.message))
            return
        why = _database_problem(database)
        if why is not None:
            report.problems.append(Problem(None, None, f"RELAYD_DATABASE_URL: {why}"))
            return
    from relayd.store.dialects import describe  # SQLAlchemy: only for the summary

    report.database = describe(database)


def check(conffile: str | None = None) -> Report:
    """Every problem in the msmtprc files and relayd.toml, by file and line.

    Runs the files' `eval` lines as msmtp does, never `passwordeval`; no message holds a
    password. Problems of the environment (file None) come last.
    """
    report = Report()
    check_accounts(conffile, report)
    check_settings(os.environ, report)
    files_read = [*report.msmtprc, *([report.settings_file] if report.settings_file else [])]
    order = {path: n for n, path in enumerate(files_read)}
    report.problems.sort(key=lambda p: (order.get(p.file or "", len(order)), p.line or 0))
    report.problems = [_scrub(problem, report.secrets) for problem in report.problems]
    return report


def _scrub(problem: Problem, secrets: set[str]) -> Problem:
    """No message names a password, even one pasted where another value belongs."""
    message = problem.message
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= SCRUB_MIN:
            message = message.replace(secret, "*")
    return Problem(problem.file, problem.line, message)
