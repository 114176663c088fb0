"""After selection: command-line overrides, msmtp's defaults and %-expansion, and the checks."""

from __future__ import annotations

import os

from relayd.accounts import msmtprc
from relayd.accounts.account import Account
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

MAILNAME = "/etc/mailname"


def apply_overrides(
    account: Account,
    cmdline: Account,
    *,
    envelope_from: str | None,
    read_envelope_from: bool,
    header_from: str | None,
) -> None:
    """Command-line settings win; -f/--read-envelope-from only where allow_from_override is on."""
    account.override(cmdline)
    if not account.allow_from_override:
        return
    if envelope_from is not None:
        account.set("from_", envelope_from)
    elif read_envelope_from:
        account.set("from_", header_from)


def run_passwordeval(account: Account) -> None:
    """msmtp runs passwordeval when auth is on and no password is set; no output → 78."""
    if account.passwordeval and account.auth is not None and account.password is None:
        output = msmtprc.run_eval(account.passwordeval)
        if output is None:
            raise ConfigError(f"cannot read output of '{account.passwordeval}'")
        account.password = output


def hostname() -> str:
    """%H: $HOSTNAME, else gethostname()."""
    env = os.environ.get("HOSTNAME")
    if env is not None:
        return env
    import socket  # only when a value uses %H or %C

    return socket.gethostname()


def canonical_hostname(name: str) -> str:
    """%C: the canonical name of %H (getaddrinfo AI_CANONNAME), else %H itself."""
    import socket

    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except OSError:
        return name
    return next((info[3] for info in infos if info[3]), name)


def mailname() -> str:
    """%M: the first line of /etc/mailname."""
    try:
        with open(MAILNAME, "rb") as handle:
            first = handle.readline()
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ConfigError(f"{MAILNAME}: {reason}") from None
    return first.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "surrogateescape")


def login_name() -> str:
    """%U: $USER, else $LOGNAME, else the password database's name for this uid."""
    for var in ("USER", "LOGNAME"):
        value = os.environ.get(var)
        if value is not None:
            return value
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def expand(text: str, *, user: bool) -> str:
    """Replace %U (when `user`), %H, %C and %M literally, as msmtp does (no %% escape)."""
    if user and "%U" in text:
        text = text.replace("%U", login_name())
    if "%H" in text:
        text = text.replace("%H", hostname())
    if "%C" in text:
        text = text.replace("%C", canonical_hostname(hostname()))
    if "%M" in text:
        text = text.replace("%M", mailname())
    return text


def apply_defaults(account: Account) -> None:
    """Default port, trust file and proxy port; %-expansion of domain and from; auto_from."""
    if account.port == 0 and account.protocol == "smtp":
        account.port = 465 if account.tls and not account.tls_starttls else 25
    if account.tls_trust_file is None and "tls_trust_file" not in account.mask:
        account.tls_trust_file = "system"
    if account.proxy_host and account.proxy_port == 0:
        account.proxy_port = 1080
    account.domain = expand(account.domain, user=False)
    if account.from_ is not None:
        account.from_ = expand(account.from_, user=True)
    if account.auto_from:
        user = login_name()
        account.from_ = f"{user}@{account.maildomain}" if account.maildomain else user


def check(account: Account, *, sendmail_mode: bool) -> None:
    """msmtp's check_account; errors name the account and its file."""
    problem = _problem(account, sendmail_mode=sendmail_mode)
    if problem is None:
        return
    if account.id is not None and account.conffile is not None:
        problem = f"account {account.id} from {account.conffile}: {problem}"
    raise ConfigError(problem, ExitCode.CONFIG)


def _problem(account: Account, *, sendmail_mode: bool) -> str | None:
    if account.host is None and account.socket is None:
        return "host not set"
    if account.port == 0 and account.socket is None:
        return "port not set"
    if sendmail_mode and account.from_ is None:
        return "envelope-from address is missing"
    if account.tls_key_file and not account.tls_cert_file:
        return "tls_key_file requires tls_cert_file"
    if account.tls_cert_file and not account.tls_key_file:
        return "tls_cert_file requires tls_key_file"
    if (
        account.tls
        and not account.tls_trust_file
        and not account.tls_fingerprint
        and account.tls_certcheck
    ):
        return (
            "tls requires either tls_trust_file (highly recommended) "
            "or tls_fingerprint or a disabled tls_certcheck"
        )
    if account.tls_crl_file and not account.tls_trust_file:
        return "tls_crl_file requires tls_trust_file"
    return None
