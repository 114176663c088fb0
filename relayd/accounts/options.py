"""Account settings given as msmtp command-line options: each option's converter and the replay.

relayd-sendmail applies them at submission; the daemon replays the stored (option, value) pairs
when it rebuilds a queued message's account, so both share this one table.
"""

from __future__ import annotations

from relayd.accounts import values
from relayd.accounts.account import Account
from relayd.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds at import: this is on the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _opt_on_off(value: str | None) -> bool:
    return True if value is None else values.on_off(value, empty_is_on=False)


def _opt_text(value: str | None) -> str | None:
    return value or None


def _opt_file(value: str | None) -> str | None:
    return values.expand_tilde(value) if value else None


def _opt_header(allow_on: bool) -> Callable[[str | None], str]:
    def convert(value: str | None) -> str:
        if value is None:
            return "auto"
        if value == "":
            raise values.BadValue(value)
        return values.header_mode(value, allow_on=allow_on)

    return convert


def _opt_missing_header(value: str | None) -> str:
    return "auto" if _opt_on_off(value) else "off"


def _opt_syslog(value: str | None) -> str | None:
    if value == "":
        raise values.BadValue(value)
    return values.syslog(value or "")


def _opt_auth(value: str | None) -> str | None:
    return values.auth(value or "")


def _opt_dsn_return(value: str | None) -> str | None:
    return values.dsn_return("headers" if value == "hdrs" else value or "")


def _req(convert: Callable[[str], object]) -> Callable[[str | None], object]:
    return lambda value: convert(value or "")


def _optional(convert: Callable[[str], object], empty: object) -> Callable[[str | None], object]:
    return lambda value: convert(value) if value else empty


# Long option → (account field, converter). The converter raises BadValue for a bad argument.
ACCOUNT_OPTIONS: dict[str, tuple[str, Callable[[str | None], object]]] = {
    "host": ("host", lambda v: v or ""),
    "port": ("port", _req(values.port)),
    "timeout": ("timeout", _req(values.timeout)),
    "connect-timeout": ("timeout", _req(values.timeout)),
    "protocol": ("protocol", _req(values.protocol)),
    "domain": ("domain", lambda v: v or ""),
    "auth": ("auth", _opt_auth),
    "user": ("user", _opt_text),
    "passwordeval": ("passwordeval", _opt_text),
    "tls": ("tls", _opt_on_off),
    "tls-starttls": ("tls_starttls", _opt_on_off),
    "tls-trust-file": ("tls_trust_file", _opt_file),
    "tls-crl-file": ("tls_crl_file", _opt_file),
    "tls-fingerprint": ("tls_fingerprint", _optional(values.fingerprint, None)),
    "tls-key-file": ("tls_key_file", _opt_file),
    "tls-cert-file": ("tls_cert_file", _opt_file),
    "tls-certcheck": ("tls_certcheck", _opt_on_off),
    "tls-min-dh-prime-bits": ("tls_min_dh_prime_bits", _optional(values.pos_int, None)),
    "tls-priorities": ("tls_priorities", _opt_text),
    "tls-host-override": ("tls_host_override", _opt_text),
    "auto-from": ("auto_from", _opt_on_off),
    "maildomain": ("maildomain", _opt_text),
    "dsn-notify": ("dsn_notify", _req(values.dsn_notify)),
    "dsn-return": ("dsn_return", _opt_dsn_return),
    "keepbcc": ("remove_bcc_headers", lambda v: not _opt_on_off(v)),
    "logfile": ("logfile", _opt_file),
    "logfile-time-format": ("logfile_time_format", _opt_text),
    "syslog": ("syslog", _opt_syslog),
    "aliases": ("aliases", _opt_file),
    "proxy-host": ("proxy_host", _opt_text),
    "proxy-port": ("proxy_port", _optional(values.port, 0)),
    "add-missing-from-header": ("set_from_header", _opt_missing_header),
    "add-missing-date-header": ("set_date_header", _opt_missing_header),
    "set-from-header": ("set_from_header", _opt_header(allow_on=True)),
    "set-date-header": ("set_date_header", _opt_header(allow_on=False)),
    "set-msgid-header": ("set_msgid_header", _opt_header(allow_on=False)),
    "remove-bcc-headers": ("remove_bcc_headers", _opt_on_off),
    "undisclosed-recipients": ("undisclosed_recipients", _opt_on_off),
    "source-ip": ("source_ip", _opt_text),
    "socket": ("socket", _opt_text),
}
# msmtp names the timeout option the same way whichever spelling was used.
_ERROR_NAMES = {"connect-timeout": "timeout"}


def apply_account_option(account: Account, option: str, value: str | None) -> None:
    """Apply one account option (long name without dashes) to the command-line account."""
    name, convert = ACCOUNT_OPTIONS[option]
    try:
        converted = convert(value)
    except values.BadValue:
        label = _ERROR_NAMES.get(option, option)
        raise UsageError(f"invalid argument {value or ''} for --{label}") from None
    account.set(name, converted)


def replay_overrides(overrides: Sequence[tuple[str, str | None]]) -> Account:
    """Rebuild the command-line account from stored overrides (at delivery time)."""
    account = Account(id=None, conffile=None)
    for option, value in overrides:
        apply_account_option(account, option, value)
    return account
