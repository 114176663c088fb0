"""relayd.toml: find it, parse it, check every key, and return frozen Settings (SPEC §2).

Stdlib only. The daemon, the CLI and `relayd config check` use it; the sendmail hot path reads
only the keys it needs through `relayd.settings_hot` and never imports this module.

Why this module is long: it holds one frozen dataclass per relayd.toml table (with
`[oauth2.ACCOUNT]` and `[limits.ACCOUNT]`) and the one parser that fills them and reports every
mistake by key; the value checks already live in `relayd.settings_values`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from relayd import paths, settings_values
from relayd.errors import ConfigError
from relayd.paths import SYSTEM_SETTINGS_FILE, settings_file
from relayd.settings_hot import database_override, read, toml_error
from relayd.settings_values import (
    Invalid,
    addresses,
    count,
    duration,
    duration_or_off,
    flag,
    is_loopback,
    path,
    rates,
    size,
    text,
    users,
)

TYPE_CHECKING = False  # typing costs milliseconds on the sendmail path; mypy still sees this
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SYSTEM_SETTINGS_FILE",
    "Mistake",
    "Settings",
    "check",
    "database_override",
    "duration",
    "is_loopback",
    "load",
    "parse",
    "read",
    "settings_file",
    "size",
]
_DAY = 86400


@dataclass(frozen=True)
class Retry:
    """[retry], in seconds: backoff bounds, lifetime, delay notice."""

    first: int = 60
    max: int = 3600
    lifetime: int = 5 * _DAY
    warn_after: int | None = None  # None: no delay notice


@dataclass(frozen=True)
class Delivery:
    """[delivery]: connections and messages per connection per account, timeout in seconds."""

    connections_per_account: int = 2
    messages_per_connection: int = 100
    timeout: int = 60


@dataclass(frozen=True)
class Bounce:
    """[bounce] mode: `none`, `sender`, or `maildir` with its directory."""

    mode: str = "none"  # none | sender | maildir
    maildir: str | None = None  # the PATH of `maildir:PATH`


@dataclass(frozen=True)
class Listen:
    """[listen]: the SMTP listener's addresses, AUTH users, TLS and limits."""

    address: tuple[str, ...] = ()  # HOST:PORT each; empty: no listener
    users: tuple[tuple[str, str], ...] | None = None  # (user, password hash); None: no AUTH
    tls_cert: str | None = None
    tls_key: str | None = None
    max_recipients: int = 1000
    max_sessions: int = 32
    require_account: bool = False
    timeout: int = 300  # seconds a client may take for a command or a DATA line
    workers: int | None = None  # processes serving sessions; 0: the daemon itself; None: auto


@dataclass(frozen=True)
class Retain:
    """[retain], in seconds: how long sent and failed messages keep their bodies."""

    sent: int = 7 * _DAY
    failed: int = 30 * _DAY


@dataclass(frozen=True)
class Submit:
    """[submit]: the size limit for every way in, and the host submit socket's limits."""

    listen: bool | None = None  # serve the host submit socket; None: when it is the host queue
    max_size: int = paths.DEFAULT_MAX_SIZE
    max_clients: int = 64
    rate: int = 600  # messages per minute per submitting uid through the socket
    timeout: int = 60  # seconds a submitter may stay silent


@dataclass(frozen=True)
class Window:
    """A budget window of `[limits.ACCOUNT]`: at most `count` per `seconds`, written `text`."""

    count: int
    seconds: int
    text: str


@dataclass(frozen=True)
class AccountLimits:
    """`[limits.ACCOUNT]`: budgets in fixed windows, and the pause after a provider's rate reply
    (`backoff`, doubled at each further one until a success, at most `backoff_max`)."""

    messages: tuple[Window, ...] = ()
    recipients: tuple[Window, ...] = ()
    backoff: int = 60
    backoff_max: int = 3600

    def windows(self) -> tuple[tuple[str, Window], ...]:
        """Every budget window with its kind (`messages` or `recipients`)."""
        kinds = (("messages", self.messages), ("recipients", self.recipients))
        return tuple((kind, window) for kind, found in kinds for window in found)


@dataclass(frozen=True)
class OAuth2:
    """One account's OAuth2 client: endpoints (a preset's or the file's), client, scopes.

    The client secret is never in the file: `client_secret_eval` runs a command (its first
    line), `client_secret_keyring` reads python keyring's `relayd-oauth2` / `ACCOUNT:client`.
    """

    client_id: str
    token_url: str
    authorize_url: str | None = None
    device_url: str | None = None
    scopes: tuple[str, ...] = ()
    provider: str | None = None
    tenant: str = "common"
    client_secret_eval: str | None = None
    client_secret_keyring: bool = False


@dataclass(frozen=True)
class Settings:
    """relayd's own settings; durations in seconds. `explicit` names the keys the file set."""

    database: str
    retry: Retry = field(default_factory=Retry)
    delivery: Delivery = field(default_factory=Delivery)
    bounce: Bounce = field(default_factory=Bounce)
    notify_command: str | None = None
    listen: Listen = field(default_factory=Listen)
    retain: Retain = field(default_factory=Retain)
    submit: Submit = field(default_factory=Submit)
    file: str | None = None  # the file read, None when only defaults apply
    explicit: frozenset[str] = frozenset()
    oauth2: Mapping[str, OAuth2] = field(default_factory=dict)  # by account
    limits: tuple[tuple[str, AccountLimits], ...] = ()  # [limits.ACCOUNT] by account

    def limits_for(self, account: str) -> AccountLimits | None:
        """The account's `[limits.ACCOUNT]`, or None when it has none."""
        return next((found for name, found in self.limits if name == account), None)


@dataclass(frozen=True)
class Mistake:
    """One problem in relayd.toml: the dotted key it is about (None: the whole file), the text
    without the file name, and the line when the TOML parser knows it."""

    key: str | None
    message: str
    line: int | None = None

    def text(self, filename: str) -> str:
        """The one-line message naming the file (and the line), as `parse` raises it."""
        if self.line is None:
            return f"{filename}: {self.message}"
        return f"{filename}: line {self.line}: {self.message}"


if TYPE_CHECKING:
    Report = Callable[[Mistake], None]


def _bounce(value: object) -> Bounce:
    mode = text(value)
    if mode in ("none", "sender"):
        return Bounce(mode=mode)
    if mode.startswith("maildir:") and mode[len("maildir:") :].strip():
        return Bounce(mode="maildir", maildir=os.path.expanduser(mode[len("maildir:") :]))
    raise Invalid(f"expected none, sender or maildir:PATH, not {mode!r}")


MAX_WORKERS = 16


def _workers(value: object) -> int | None:
    """`[listen] workers`: "auto" (None) or 0..MAX_WORKERS processes."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise Invalid(f'expected "auto" or a number of processes 0..{MAX_WORKERS}, not {value!r}')
    return value


# section -> key -> (Settings field path, validator)
_KEYS: dict[str, dict[str, tuple[str, Callable[[object], Any]]]] = {
    "retry": {
        "first": ("retry.first", duration),
        "max": ("retry.max", duration),
        "lifetime": ("retry.lifetime", duration),
        "warn_after": ("retry.warn_after", duration_or_off),
    },
    "delivery": {
        "connections_per_account": ("delivery.connections_per_account", count),
        "messages_per_connection": ("delivery.messages_per_connection", count),
        "timeout": ("delivery.timeout", duration),
    },
    "bounce": {"mode": ("bounce", _bounce)},
    "notify": {"command": ("notify_command", text)},
    "listen": {
        "address": ("listen.address", addresses),
        "users": ("listen.users", users),
        "tls_cert": ("listen.tls_cert", path),
        "tls_key": ("listen.tls_key", path),
        "max_recipients": ("listen.max_recipients", count),
        "max_sessions": ("listen.max_sessions", count),
        "require_account": ("listen.require_account", flag),
        "timeout": ("listen.timeout", duration),
        "workers": ("listen.workers", _workers),
    },
    "retain": {"sent": ("retain.sent", duration), "failed": ("retain.failed", duration)},
    "submit": {
        "listen": ("submit.listen", flag),
        "max_size": ("submit.max_size", size),
        "max_clients": ("submit.max_clients", count),
        "rate": ("submit.rate", count),
        "timeout": ("submit.timeout", duration),
    },
}


def load(environ: Mapping[str, str] | None = None, *, uid: int | None = None) -> Settings:
    """Settings from the file `settings_file()` finds (if any) and the environment."""
    env = os.environ if environ is None else environ
    path = settings_file(env)[0]
    text = None if path is None else read(path)
    settings = parse(text, path, default_database=paths.default_database_url(env, uid))
    override = env.get("RELAYD_DATABASE_URL")
    if override:
        settings = replace(settings, database=database_override(override))
    return settings


def parse(text: str | None, filename: str | None, *, default_database: str) -> Settings:
    """Settings from relayd.toml `text` (None: defaults only); errors name `filename` and key."""
    name = filename or "relayd.toml"

    def stop(mistake: Mistake) -> None:
        raise ConfigError(mistake.text(name)) from None

    return _parse(text, name, default_database, stop)


def check(
    text: str | None, filename: str | None, *, default_database: str
) -> tuple[Settings, list[Mistake]]:
    """Like `parse`, but every mistake is returned instead of the first one raised; the
    settings then hold what the file got right."""
    mistakes: list[Mistake] = []
    settings = _parse(text, filename or "relayd.toml", default_database, mistakes.append)
    return settings, mistakes


def _parse(text: str | None, name: str, default_database: str, report: Report) -> Settings:
    """The settings from `text`; each mistake goes to `report` (which may raise)."""
    if text is None:
        return Settings(database=default_database)
    import tomllib  # only when there is a file: keeps the common case light

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        report(_toml_mistake(str(exc)))
        return Settings(database=default_database, file=name)
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for key, value in document.items():
        if key == "database":
            try:
                values["database"] = settings_values.database_url(value)
                explicit.add(key)
            except Invalid as exc:
                report(Mistake(key, f"{key}: {exc}"))
        elif key == "limits":
            values["limits"] = _limits(value, report)
            explicit.update(f"limits.{account}" for account, _ in values["limits"])
        elif key == "oauth2" and isinstance(value, dict):
            values["oauth2"] = _oauth2(value, report)
            explicit.update(f"oauth2.{account}" for account in value)
        elif key not in _KEYS and key != "oauth2":
            report(Mistake(key, f"unknown key {key}"))
        elif not isinstance(value, dict):
            report(Mistake(key, f"{key}: expected a table ([{key}])"))
        else:
            explicit.update(_section(key, value, values, report))
    return _build(name, values, explicit, default_database, report)


def _section(
    section: str, table: dict[str, Any], values: dict[str, Any], report: Report
) -> set[str]:
    """Validate one [section] into `values`; return its dotted keys."""
    for key, value in table.items():
        dotted = f"{section}.{key}"
        if key not in _KEYS[section]:
            report(Mistake(dotted, f"unknown key {dotted}"))
            continue
        target, validate = _KEYS[section][key]
        try:
            values[target] = validate(value)
        except Invalid as exc:
            where = f"{dotted}.{exc.key}" if exc.key is not None else dotted
            report(Mistake(where, f"{where}: {exc}"))
    return {f"{section}.{key}" for key in table}


_LIMIT_KEYS: dict[str, Callable[[object], Any]] = {
    "messages": rates,
    "recipients": rates,
    "backoff": duration,
    "backoff_max": duration,
}


def _limits(table: object, report: Report) -> tuple[tuple[str, AccountLimits], ...]:
    """`[limits.ACCOUNT]` tables: each account's budgets and back-off, by account name."""
    if not isinstance(table, dict):
        report(Mistake("limits", "limits: expected tables [limits.ACCOUNT]"))
        return ()
    found = []
    for account, keys in table.items():
        where = f"limits.{account}"
        if not isinstance(keys, dict):
            report(Mistake(where, f"{where}: expected a table ([{where}])"))
            continue
        fields: dict[str, Any] = {}
        for key, value in keys.items():
            dotted = f"{where}.{key}"
            check = _LIMIT_KEYS.get(key)
            if check is None:
                report(Mistake(dotted, f"unknown key {dotted}"))
                continue
            try:
                fields[key] = check(value)
            except Invalid as exc:
                report(Mistake(dotted, f"{dotted}: {exc}"))
        for kind in ("messages", "recipients"):
            fields[kind] = tuple(Window(*given) for given in fields.get(kind, ()))
        limits = AccountLimits(**fields)
        if limits.backoff > limits.backoff_max:
            report(Mistake(f"{where}.backoff", f"{where}.backoff is longer than backoff_max"))
        found.append((account, limits))
    return tuple(sorted(found, key=lambda pair: pair[0]))


def _oauth2(tables: dict[str, Any], report: Report) -> dict[str, OAuth2]:
    """[oauth2.ACCOUNT] tables: each account's client (`settings_values.oauth2_table`)."""
    found: dict[str, OAuth2] = {}
    for account, table in tables.items():
        if not isinstance(table, dict):
            report(Mistake(f"oauth2.{account}", f"oauth2.{account}: expected [oauth2.{account}]"))
            continue
        fields, mistakes = settings_values.oauth2_table(table)
        for key, message in mistakes:
            dotted = f"oauth2.{account}.{key}"
            unknown = message == "unknown key"
            report(Mistake(dotted, f"unknown key {dotted}" if unknown else f"{dotted}: {message}"))
        if not mistakes:
            found[account] = OAuth2(**fields)  # type: ignore[arg-type]
    return found


def _build(
    name: str, values: dict[str, Any], explicit: set[str], database: str, report: Report
) -> Settings:
    def part(prefix: str, kind: type[Any]) -> Any:
        fields = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(prefix + ".")}
        return kind(**fields)

    listen: Listen = part("listen", Listen)
    _check_listen(listen, report)
    retry: Retry = part("retry", Retry)
    if retry.first > retry.max:
        report(Mistake("retry.first", f"retry.first ({retry.first}s) is longer than retry.max"))
    return Settings(
        database=values.get("database", database),
        retry=retry,
        delivery=part("delivery", Delivery),
        bounce=values.get("bounce", Bounce()),
        notify_command=values.get("notify_command"),
        listen=listen,
        retain=part("retain", Retain),
        submit=part("submit", Submit),
        file=name,
        explicit=frozenset(explicit),
        limits=values.get("limits", ()),
        oauth2=values.get("oauth2", {}),
    )


def _check_listen(listen: Listen, report: Report) -> None:
    """Not an open relay: a non-loopback address needs AUTH users and TLS; AUTH needs TLS."""
    tls = listen.tls_cert is not None and listen.tls_key is not None
    if (listen.tls_cert is None) != (listen.tls_key is None):
        report(Mistake("listen.tls_cert", "listen.tls_cert and listen.tls_key go together"))
    if listen.users is not None and not tls:
        report(Mistake("listen.users", "listen.users needs listen.tls_cert and listen.tls_key"))
    for address in listen.address:
        if not is_loopback(address) and (listen.users is None or not tls):
            report(
                Mistake(
                    "listen.address",
                    f"listen.address {address} is not a loopback address: it needs listen.users"
                    " (AUTH) and listen.tls_cert/tls_key (STARTTLS), or relayd would be an open"
                    " relay",
                )
            )


def _toml_mistake(message: str) -> Mistake:
    """tomllib's "… (at line 3, column 5)" as msmtp-style "line 3: …"."""
    text, line = toml_error(message)
    return Mistake(None, text, line)
