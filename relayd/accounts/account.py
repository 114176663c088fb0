"""The Account record and the msmtprc commands that set its fields, with msmtp 1.8.23's rules."""

from __future__ import annotations

from relayd.accounts import values

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Callable


class Account:
    """One msmtp account; `mask` names the fields set explicitly (what `account b : a` inherits).

    A plain class rather than a dataclass: `dataclasses` costs 5 ms to import on the hot path.
    The class attributes are the defaults; an instance holds what was set.
    """

    host: str | None = None
    port: int = 0
    source_ip: str | None = None
    proxy_host: str | None = None
    proxy_port: int = 0
    socket: str | None = None
    timeout: int = 0
    protocol: str = "smtp"
    domain: str = "localhost"
    auth: str | None = None
    user: str | None = None
    password: str | None = None
    passwordeval: str | None = None
    ntlmdomain: str | None = None
    tls: bool = False
    tls_starttls: bool = True
    tls_trust_file: str | None = None
    tls_crl_file: str | None = None
    tls_fingerprint: str | None = None
    tls_key_file: str | None = None
    tls_cert_file: str | None = None
    tls_certcheck: bool = True
    tls_min_dh_prime_bits: int | None = None
    tls_priorities: str | None = None
    tls_host_override: str | None = None
    auto_from: bool = False
    maildomain: str | None = None
    from_: str | None = None
    allow_from_override: bool = True
    set_from_header: str = "auto"
    set_date_header: str = "auto"
    set_msgid_header: str = "auto"
    remove_bcc_headers: bool = True
    undisclosed_recipients: bool = False
    dsn_notify: str | None = None
    dsn_return: str | None = None
    logfile: str | None = None
    logfile_time_format: str | None = None
    syslog: str | None = None
    aliases: str | None = None

    def __init__(self, id: str | None, conffile: str | None, **settings: object) -> None:
        self.id = id
        self.conffile = conffile
        self.mask: set[str] = set()
        for name, value in settings.items():
            if name not in FIELD_NAMES:
                raise TypeError(f"unknown account field {name}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        set_fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "mask")
        return f"Account({set_fields})"

    def copy(self) -> Account:
        """An independent copy (every field value is immutable; the mask is not)."""
        new = Account.__new__(Account)
        new.__dict__.update(self.__dict__)
        new.mask = set(self.mask)
        return new

    def set(self, name: str, value: object) -> None:
        """Set a field explicitly (it joins the mask)."""
        setattr(self, name, value)
        self.mask.add(name)

    def override(self, other: Account) -> None:
        """msmtp's override_account: take every field `other` set explicitly."""
        if other.conffile:
            self.conffile = other.conffile
        for name in other.mask:
            setattr(self, name, getattr(other, name))
        self.mask |= other.mask


FIELD_NAMES = frozenset(Account.__annotations__)


class NeedsArgument(ValueError):
    """The command was given an empty argument but requires one."""


class TakesNoArgument(ValueError):
    """The command was given an argument but takes none."""


if TYPE_CHECKING:
    Setter = Callable[[Account, str], None]


def _text(name: str, *, empty: str | None = None, tilde: bool = False) -> Setter:
    """A string field; an empty argument stores `empty` (None = unset)."""

    def setter(acc: Account, arg: str) -> None:
        if arg == "":
            acc.set(name, empty)
        else:
            acc.set(name, values.expand_tilde(arg) if tilde else arg)

    return setter


def _required(name: str, convert: Callable[[str], object]) -> Setter:
    """A field whose command needs a non-empty argument."""

    def setter(acc: Account, arg: str) -> None:
        if arg == "":
            raise NeedsArgument(arg)
        acc.set(name, convert(arg))

    return setter


def _optional(name: str, convert: Callable[[str], object], empty: object) -> Setter:
    """A field where an empty argument stores `empty`."""

    def setter(acc: Account, arg: str) -> None:
        acc.set(name, empty if arg == "" else convert(arg))

    return setter


def _flag(name: str, value: object) -> Setter:
    """A 1.2-compatibility command that takes no argument and sets `name` to `value`."""

    def setter(acc: Account, arg: str) -> None:
        if arg != "":
            raise TakesNoArgument(arg)
        acc.set(name, value)

    return setter


def _converted(name: str, convert: Callable[[str], object]) -> Setter:
    """A field whose converter handles the empty argument itself."""

    def setter(acc: Account, arg: str) -> None:
        acc.set(name, convert(arg))

    return setter


def _ignore(acc: Account, arg: str) -> None:
    """tls_force_sslv3: accepted and ignored."""


def _on_unless_off(text: str) -> str:
    return "auto" if values.on_off(text) else "off"


COMMANDS: dict[str, Setter] = {
    "host": _required("host", str),
    "port": _required("port", values.port),
    "source_ip": _text("source_ip"),
    "proxy_host": _text("proxy_host"),
    "proxy_port": _optional("proxy_port", values.port, 0),
    "socket": _text("socket"),
    "timeout": _required("timeout", values.timeout),
    "connect_timeout": _required("timeout", values.timeout),
    "protocol": _required("protocol", values.protocol),
    "domain": _text("domain", empty=""),
    "auth": _converted("auth", values.auth),
    "user": _text("user"),
    "password": _text("password"),
    "passwordeval": _text("passwordeval"),
    "ntlmdomain": _text("ntlmdomain"),
    "tls": _converted("tls", values.on_off),
    "tls_starttls": _converted("tls_starttls", values.on_off),
    "tls_nostarttls": _flag("tls_starttls", False),
    "tls_trust_file": _text("tls_trust_file", tilde=True),
    "tls_crl_file": _text("tls_crl_file", tilde=True),
    "tls_fingerprint": _optional("tls_fingerprint", values.fingerprint, None),
    "tls_key_file": _text("tls_key_file", tilde=True),
    "tls_cert_file": _text("tls_cert_file", tilde=True),
    "tls_certcheck": _converted("tls_certcheck", values.on_off),
    "tls_nocertcheck": _flag("tls_certcheck", False),
    "tls_priorities": _text("tls_priorities"),
    "tls_host_override": _text("tls_host_override"),
    "tls_min_dh_prime_bits": _optional("tls_min_dh_prime_bits", values.pos_int, None),
    "tls_force_sslv3": _ignore,
    "auto_from": _converted("auto_from", values.on_off),
    "maildomain": _text("maildomain", empty=""),
    "from": _text("from_", empty=""),
    "allow_from_override": _converted(
        "allow_from_override", lambda s: values.on_off(s, empty_is_on=False)
    ),
    "set_from_header": _converted(
        "set_from_header", lambda s: values.header_mode(s, allow_on=True)
    ),
    "set_date_header": _converted(
        "set_date_header", lambda s: values.header_mode(s, allow_on=False)
    ),
    "set_msgid_header": _converted(
        "set_msgid_header", lambda s: values.header_mode(s, allow_on=False)
    ),
    "add_missing_from_header": _converted("set_from_header", _on_unless_off),
    "add_missing_date_header": _converted("set_date_header", _on_unless_off),
    "remove_bcc_headers": _converted("remove_bcc_headers", values.on_off),
    "keepbcc": _converted("remove_bcc_headers", lambda s: not values.on_off(s)),
    "undisclosed_recipients": _converted("undisclosed_recipients", values.on_off),
    "dsn_notify": _required("dsn_notify", values.dsn_notify),
    "dsn_return": _required("dsn_return", values.dsn_return),
    "logfile": _text("logfile", tilde=True),
    "logfile_time_format": _text("logfile_time_format"),
    "syslog": _converted("syslog", values.syslog),
    "aliases": _text("aliases", tilde=True),
}
