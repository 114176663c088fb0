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
keyring and secretstorage are imported only when those sources are consulted.
"""

from __future__ import annotations

import enum
import os

from relayd.accounts import msmtprc, values
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # typing costs milliseconds at import
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol, TypeVar

    from relayd.accounts.account import Account

    T = TypeVar("T")

    class SecretItemLike(Protocol):
        """What relayd uses of a `secretstorage.Item`."""

        def is_locked(self) -> bool: ...

        def unlock(self, timeout: float | None = None) -> bool: ...

        def get_secret(self) -> bytes: ...

    class SecretStorageLike(Protocol):
        """What relayd uses of the `secretstorage` module (tests inject a fake)."""

        def dbus_init(self) -> Any: ...

        def search_items(
            self, connection: Any, attributes: dict[str, str]
        ) -> Iterable[SecretItemLike]: ...


SYSTEM_NETRC = "/etc/netrc"  # msmtp: SYSCONFDIR "/netrc"; Debian builds with sysconfdir=/etc
TTY = "/dev/tty"
SERVICE = "smtp"  # msmtp's password_service_smtp
NO_PASSWORD_METHODS = frozenset({"EXTERNAL", "GSSAPI"})  # these never ask for a password

_NOTE_LIMIT = 200


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


# --- deadlines ---------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """An exception for a note: its type and message, never a decoded secret's bytes."""
    if isinstance(exc, UnicodeError):
        return type(exc).__name__  # its message quotes bytes of the data it failed on
    text = str(exc)
    if len(text) > _NOTE_LIMIT:
        text = text[:_NOTE_LIMIT] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_with_deadline(func: Callable[[], T], timeout: float, name: str) -> tuple[T | None, str]:
    """`func()` in a daemon thread: (value, "") or (None, why) when it raised or overran.

    A thread that overruns is abandoned (a daemon thread does not hold up interpreter exit).
    """
    import threading

    outcome: list[tuple[T | None, BaseException | None]] = []

    def target() -> None:
        try:
            outcome.append((func(), None))
        except BaseException as exc:  # reported to the caller, who moves on
            outcome.append((None, exc))

    thread = threading.Thread(target=target, name=f"relayd-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return None, f"timed out after {timeout:g}s"
    value, error = outcome[0]
    if error is not None:
        return None, _describe(error)
    return value, ""


# --- Secret Service ----------------------------------------------------------------------------


def secret_service_queries(host: str, user: str) -> tuple[dict[str, str], ...]:
    """The attribute sets msmtp's libsecret lookups use, in order."""
    return (
        {"host": host, "service": SERVICE, "user": user},  # de.marlam.msmtp.password
        {"user": user, "protocol": SERVICE, "server": host},  # compat network schema
    )


def session_bus_address() -> str | None:
    """The session bus address jeepney (secretstorage's D-Bus library) connects to."""
    return os.environ.get("DBUS_SESSION_BUS_ADDRESS") or None


def search_secret_service(
    module: SecretStorageLike,
    host: str,
    user: str,
    *,
    unlock: bool,
    unlock_timeout: float | None,
    notes: list[str],
) -> str | None:
    """The first secret matching msmtp's attributes, or None.

    An unlocked item is preferred; a locked one is unlocked only when `unlock` (that may show
    the desktop's unlock prompt). A dismissed prompt ends the Secret Service lookup.
    """
    connection = module.dbus_init()
    try:
        for attributes in secret_service_queries(host, user):
            items = list(module.search_items(connection, attributes))
            if not items:
                continue
            item = next((i for i in items if not i.is_locked()), None)
            if item is None:
                if not unlock:
                    notes.append("secret service: matching item is locked")
                    continue
                if items[0].unlock(unlock_timeout):
                    notes.append("secret service: unlock prompt dismissed")
                    return None
                item = items[0]
            try:
                return item.get_secret().decode("utf-8")
            except UnicodeDecodeError:
                notes.append("secret service: secret is not UTF-8 text")
                continue
        return None
    finally:
        close = getattr(connection, "close", None)
        if callable(close):
            close()


def secret_service_password(
    host: str,
    user: str,
    *,
    unlock: bool,
    timeout: float,
    notes: list[str],
    module: SecretStorageLike | None = None,
) -> str | None:
    """msmtp's Secret Service lookup, skipped at once without a session bus, within `timeout`."""
    if session_bus_address() is None:
        notes.append("secret service: no session bus (DBUS_SESSION_BUS_ADDRESS unset)")
        return None

    def search() -> str | None:
        found = module
        if found is None:
            import secretstorage

            found = secretstorage
        return search_secret_service(
            found, host, user, unlock=unlock, unlock_timeout=timeout, notes=notes
        )

    password, why = run_with_deadline(search, timeout, "secret-service")
    if why:
        notes.append(f"secret service: {why}")
    return password


# --- python keyring ----------------------------------------------------------------------------

# Backends that never hold a usable password: the failing and null ones, and keyrings.alt, whose
# file backends either keep base64 "plaintext" or prompt on stdin (the mail) for a key.
_UNUSABLE_BACKENDS = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")


def usable_backend(backend: object) -> bool:
    """Whether a python keyring backend may be asked."""
    module = type(backend).__module__
    return not any(module == bad or module.startswith(bad + ".") for bad in _UNUSABLE_BACKENDS)


def _backend_name(backend: object) -> str:
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


def keyring_password(host: str, user: str, *, timeout: float, notes: list[str]) -> str | None:
    """python keyring's password for service `smtp://HOST`, username USER, within `timeout`."""

    def search() -> str | None:
        import keyring
        from keyring.backends.chainer import ChainerBackend

        chosen = keyring.get_keyring()
        backends = list(chosen.backends) if isinstance(chosen, ChainerBackend) else [chosen]
        usable = [b for b in backends if usable_backend(b)]
        if not usable:
            names = ", ".join(_backend_name(b) for b in backends) or "none"
            notes.append(f"python keyring: no usable backend ({names})")
            return None
        for backend in usable:
            try:
                password = backend.get_password(f"{SERVICE}://{host}", user)
            except Exception as exc:  # KeyringError and whatever a backend lets escape
                notes.append(f"python keyring: {_backend_name(backend)}: {_describe(exc)}")
                continue
            if password is not None:
                return password
        return None

    password, why = run_with_deadline(search, timeout, "keyring")
    if why:
        notes.append(f"python keyring: {why}")
    return password


# --- netrc (msmtp's netrc.c, from fetchmail) ---------------------------------------------------

_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale
_KEYWORDS = {
    "login": "login",
    "user": "login",
    "password": "password",
    "passwd": "password",
    "machine": "machine",
    "macdef": "macdef",
    "account": "account",
}


class NetrcEntry:
    """One `machine` (host set) or `default` (host None) entry."""

    __slots__ = ("host", "login", "password")

    def __init__(self) -> None:
        self.host: str | None = None
        self.login: str | None = None
        self.password: str | None = None

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "<hidden>"
        return f"NetrcEntry(host={self.host!r}, login={self.login!r}, password={shown})"


def _netrc_token(line: str, pos: int) -> tuple[str, int]:
    """The token starting at `pos` and the position after it: quotes (" or ') group and vanish."""
    out: list[str] = []
    quote = ""
    while pos < len(line) and (quote or line[pos] not in _SPACE):
        char = line[pos]
        if quote:
            if char == quote:
                quote = ""
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
        else:
            out.append(char)
        pos += 1
    return "".join(out), pos


def parse_netrc(text: str) -> list[NetrcEntry]:
    """The entries of a netrc file, in file order, as msmtp's parser keeps them.

    Entries without a login are dropped; `default` starts an entry with no host (never matched);
    keywords `login`/`user`, `password`/`passwd`, `account` (ignored), `macdef` (the rest of its
    line and the following lines up to a blank line are skipped); `#` at the start of a token
    ends the line; a keyword's value may be on the next line. Unknown tokens are ignored.
    """
    entries: list[NetrcEntry] = []
    current: NetrcEntry | None = None
    expecting = ""  # the keyword whose value comes next; "macdef" while skipping a macro

    def finish() -> NetrcEntry:
        if current is not None and current.login is not None:
            entries.append(current)
        return NetrcEntry()

    for raw in text.split("\n"):
        line = raw.rstrip(_SPACE)
        if not line:
            if expecting == "macdef":
                expecting = ""
            continue
        pos = 0
        while pos < len(line) and expecting != "macdef":
            while pos < len(line) and line[pos] in _SPACE:
                pos += 1
            if pos >= len(line) or line[pos] == "#":
                break
            token, pos = _netrc_token(line, pos)
            if expecting:
                if expecting == "machine":
                    current = finish()
                    current.host = token
                elif current is not None and expecting == "login":
                    current.login = token
                elif current is not None and expecting == "password":
                    current.password = token
                expecting = ""  # a value for account, or one before any machine: ignored
            elif token == "default":
                current = finish()
            else:
                expecting = _KEYWORDS.get(token, "")
    finish()
    return entries


def search_netrc(entries: Iterable[NetrcEntry], host: str, user: str) -> NetrcEntry | None:
    """The first entry for `host` with login `user` (exact, case-sensitive), as msmtp searches."""
    return next((e for e in entries if e.host == host and e.login == user), None)


def netrc_password(path: str, host: str, user: str) -> str | None:
    """The password of the first matching entry in the netrc file `path`, or None.

    An unreadable or missing file is no answer; its permissions are not checked (msmtp does
    not). A first match without a password is no answer from this file.
    """
    try:
        with open(path, "rb") as fp:
            data = fp.read()
    except OSError:
        return None
    entry = search_netrc(parse_netrc(data.decode("utf-8", "surrogateescape")), host, user)
    return entry.password if entry is not None else None


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
