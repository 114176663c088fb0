"""Passwords for SMTP AUTH, looked up at delivery time in msmtp 1.8.23's order (SPEC §2).

`lookup_password(account)` tries, in order:

1. the account's `password`;
2. `passwordeval`: the first line the command prints, exit status ignored (msmtp's
   `password_eval`); no output at all raises `PasswordEvalError`, a `ConfigError` (EX_CONFIG, as
   msmtp exits 78) with msmtp's text `cannot read output of 'CMD'`. The daemon turns it into a
   HOLD of the message; `relayd-sendmail -odi` reports it and exits 78 like msmtp. As in msmtp
   there is no time limit: a command that never exits blocks the lookup (`msmtprc.run_eval`);
3. the Secret Service, with the attributes msmtp's libsecret schema uses (`host`, `service=smtp`,
   `user`), then the compat network schema (`user`, `protocol=smtp`, `server`), so passwords
   stored for msmtp (`secret-tool store --label=msmtp host H service smtp user U`) are found.
   python keyring cannot see those items, hence secretstorage directly;
4. python keyring: service `smtp://HOST`, username USER (relayd's own place to store one);
5. `~/.netrc`, then `/etc/netrc`, with msmtp's (fetchmail's) parser and matching rules;
6. a prompt `password for USER at HOST: ` on /dev/tty, only when the caller is interactive
   (`relayd-sendmail -odi`) and /dev/tty opens. The daemon never prompts.

Sources 3 and 4 talk to D-Bus services that can be absent, locked or waiting on a prompt: each runs
in a daemon thread with a deadline and any failure moves on to the next source. A Secret Service
item that is locked is unlocked (which shows the desktop's unlock prompt) only when interactive.

Sources 3 to 6 are consulted only when a password is needed and can be looked up: auth on, a
method other than EXTERNAL/GSSAPI, and a user. `password` and `passwordeval` follow msmtp exactly:
the literal password is used and passwordeval runs whenever auth is on.

No password ever appears in an exception message, a repr or the result's notes; nothing here logs.
keyring and secretstorage are imported only when those sources are consulted. Sources 3 and 4
live in `keyrings`, source 5 in `netrc`; their names are re-exported here.
"""

from __future__ import annotations

import enum
import os

from relayd.accounts import msmtprc, values
from relayd.accounts.keyrings import SERVICE as SERVICE
from relayd.accounts.keyrings import keyring_password as keyring_password
from relayd.accounts.keyrings import run_with_deadline as run_with_deadline
from relayd.accounts.keyrings import search_secret_service as search_secret_service
from relayd.accounts.keyrings import secret_service_password as secret_service_password
from relayd.accounts.keyrings import secret_service_queries as secret_service_queries
from relayd.accounts.keyrings import session_bus_address as session_bus_address
from relayd.accounts.keyrings import usable_backend as usable_backend
from relayd.accounts.netrc import NetrcEntry as NetrcEntry
from relayd.accounts.netrc import netrc_password as netrc_password
from relayd.accounts.netrc import parse_netrc as parse_netrc
from relayd.accounts.netrc import search_netrc as search_netrc
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # typing costs milliseconds at import
if TYPE_CHECKING:
    from relayd.accounts.account import Account
    from relayd.accounts.keyrings import SecretItemLike as SecretItemLike
    from relayd.accounts.keyrings import SecretStorageLike as SecretStorageLike


SYSTEM_NETRC = "/etc/netrc"  # msmtp: SYSCONFDIR "/netrc"; Debian builds with sysconfdir=/etc
TTY = "/dev/tty"
NO_PASSWORD_METHODS = frozenset({"EXTERNAL", "GSSAPI"})  # these never ask for a password


class Source(enum.Enum):
    """Which source answered (or why none was asked): safe to log."""

    NOT_NEEDED = "not needed"  # auth off, or a method that uses no password
    PASSWORD = "password"
    PASSWORDEVAL = "passwordeval"
    SECRET_SERVICE = "secret service"
    KEYRING = "python keyring"
    NETRC = "~/.netrc"
    SYSTEM_NETRC = "system netrc"
    PROMPT = "prompt"
    NOT_FOUND = "not found"


class PasswordResult:
    """The password (or None) and the source that answered; the repr never shows the password.

    `notes` says why sources were skipped or failed (no session bus, timed out, locked, …) for
    the log; they never contain a password.
    """

    __slots__ = ("notes", "password", "source")

    def __init__(self, password: str | None, source: Source, notes: tuple[str, ...] = ()) -> None:
        self.password = password
        self.source = source
        self.notes = notes

    @property
    def found(self) -> bool:
        """True when a source gave a password."""
        return self.password is not None

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "<hidden>"
        return f"PasswordResult(source={self.source.name}, password={shown}, notes={self.notes!r})"

    __str__ = __repr__


class PasswordEvalError(ConfigError):
    """passwordeval printed nothing: msmtp's `cannot read output of 'CMD'` (EX_CONFIG).

    The delivery engine turns it into a HOLD (only the user can fix the command).
    """

    def __init__(self, command: str) -> None:
        super().__init__(f"cannot read output of '{command}'", ExitCode.CONFIG)
        self.command = command


def needs_password(account: Account) -> bool:
    """Whether the stored sources (Secret Service, keyring, netrc, prompt) are consulted."""
    return (
        account.auth is not None
        and account.auth not in NO_PASSWORD_METHODS
        and bool(account.user)
        and bool(lookup_host(account))
    )


def lookup_host(account: Account) -> str | None:
    """The host name msmtp looks passwords up under: `host`, else the `socket` path."""
    return account.host or account.socket


def lookup_password(
    account: Account,
    *,
    interactive: bool = False,
    keyring_timeout: float = 5.0,
    system_netrc: str = SYSTEM_NETRC,
    tty: str = TTY,
    secret_service: SecretStorageLike | None = None,
) -> PasswordResult:
    """The password for `account` from the first of msmtp's sources that has one.

    `interactive` allows Secret Service unlock prompts and the /dev/tty prompt (`-odi` only).
    `keyring_timeout` bounds each of the Secret Service and python keyring lookups.
    `system_netrc`, `tty` and `secret_service` (a secretstorage-like object used instead of the
    real module, still only when a session bus is set) exist for tests.
    Raises `PasswordEvalError` when passwordeval prints nothing.
    """
    if account.auth is None:
        return PasswordResult(None, Source.NOT_NEEDED)
    if account.password is not None:
        return PasswordResult(account.password, Source.PASSWORD)
    if account.passwordeval:
        output = msmtprc.run_eval(account.passwordeval)
        if output is None:
            raise PasswordEvalError(account.passwordeval)
        return PasswordResult(output, Source.PASSWORDEVAL)
    if account.auth in NO_PASSWORD_METHODS:
        return PasswordResult(None, Source.NOT_NEEDED)
    host = lookup_host(account)
    user = account.user
    if not host or not user:
        why = "no user" if not user else "no host"
        return PasswordResult(None, Source.NOT_FOUND, (f"stored passwords not searched: {why}",))

    notes: list[str] = []
    password = secret_service_password(
        host, user, unlock=interactive, timeout=keyring_timeout, notes=notes, module=secret_service
    )
    if password is not None:
        return PasswordResult(password, Source.SECRET_SERVICE, tuple(notes))
    password = keyring_password(host, user, timeout=keyring_timeout, notes=notes)
    if password is not None:
        return PasswordResult(password, Source.KEYRING, tuple(notes))
    password = netrc_password(os.path.join(values.home_dir(), ".netrc"), host, user)
    if password is not None:
        return PasswordResult(password, Source.NETRC, tuple(notes))
    password = netrc_password(system_netrc, host, user)
    if password is not None:
        return PasswordResult(password, Source.SYSTEM_NETRC, tuple(notes))
    if interactive:
        password = prompt_password(f"password for {user} at {host}: ", tty=tty)
        if password is not None:
            return PasswordResult(password, Source.PROMPT, tuple(notes))
        notes.append(f"prompt: cannot open {tty}")
    return PasswordResult(None, Source.NOT_FOUND, tuple(notes))


# --- the prompt --------------------------------------------------------------------------------


def prompt_password(prompt: str, *, tty: str = TTY) -> str | None:
    """getpass on the terminal itself, never stdin (the mail): None when `tty` does not open.

    Echo is off while the password is typed; the line ends at a newline (removed) or EOF.
    """
    try:
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        import termios

        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            return None
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, prompt.encode("utf-8", "surrogateescape"))
            chunks: list[bytes] = []
            while True:
                byte = os.read(fd, 1)
                if not byte or byte == b"\n":
                    break
                chunks.append(byte)
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            os.write(fd, b"\n")
        return b"".join(chunks).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)
