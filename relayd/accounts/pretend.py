"""msmtp's --pretend (and --debug) account listing, line for line."""

from __future__ import annotations

from relayd.accounts.account import Account

NOT_SET = "(not set)"


def _text(value: str | None) -> str:
    return NOT_SET if value is None else value


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _timeout(seconds: int) -> str:
    if seconds == 0:
        return "off"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


def _auth(auth: str | None) -> str:
    if auth is None:
        return "none"
    return auth or "choose"


def account_lines(
    account: Account,
    *,
    sendmail_mode: bool,
    read_envelope_from: bool = False,
    read_recipients: bool = False,
    rmqs: str | None = None,
) -> list[str]:
    """The `key = value` lines msmtp 1.8.23 prints for an account."""
    a = account
    lines = [
        f"host = {_text(a.host)}",
        f"port = {a.port}",
        f"source ip = {_text(a.source_ip)}",
        f"proxy host = {_text(a.proxy_host)}",
        f"proxy port = {a.proxy_port}",
        f"socket = {_text(a.socket)}",
        f"timeout = {_timeout(a.timeout)}",
        f"protocol = {a.protocol}",
        f"domain = {a.domain}",
        f"auth = {_auth(a.auth)}",
        f"user = {_text(a.user)}",
        f"password = {NOT_SET if a.password is None else '*'}",
        f"passwordeval = {_text(a.passwordeval)}",
        f"ntlmdomain = {_text(a.ntlmdomain)}",
        f"tls = {_on_off(a.tls)}",
        f"tls_starttls = {_on_off(a.tls_starttls)}",
        f"tls_trust_file = {_text(a.tls_trust_file)}",
        f"tls_crl_file = {_text(a.tls_crl_file)}",
        f"tls_fingerprint = {_text(a.tls_fingerprint)}",
        f"tls_key_file = {_text(a.tls_key_file)}",
        f"tls_cert_file = {_text(a.tls_cert_file)}",
        f"tls_certcheck = {_on_off(a.tls_certcheck)}",
        "tls_min_dh_prime_bits = "
        + (NOT_SET if a.tls_min_dh_prime_bits is None else str(a.tls_min_dh_prime_bits)),
        f"tls_priorities = {_text(a.tls_priorities)}",
        f"tls_host_override = {_text(a.tls_host_override)}",
    ]
    if sendmail_mode:
        read_from_mail = a.from_ is None and read_envelope_from
        from_text = "(read from mail)" if read_from_mail else _text(a.from_)
        lines += [
            f"auto_from = {_on_off(a.auto_from)}",
            f"maildomain = {_text(a.maildomain)}",
            f"from = {from_text}",
            f"allow_from_override = {_on_off(a.allow_from_override)}",
            f"set_from_header = {a.set_from_header}",
            f"set_date_header = {a.set_date_header}",
            f"remove_bcc_headers = {_on_off(a.remove_bcc_headers)}",
            f"undisclosed_recipients = {_on_off(a.undisclosed_recipients)}",
            f"dsn_notify = {_text(a.dsn_notify)}",
            f"dsn_return = {_text(a.dsn_return)}",
            f"logfile = {_text(a.logfile)}",
            f"logfile_time_format = {_text(a.logfile_time_format)}",
            f"syslog = {_text(a.syslog)}",
            f"aliases = {_text(a.aliases)}",
        ]
        where = "the command line and the mail" if read_recipients else "the command line"
        lines.append(f"reading recipients from {where}")
    if rmqs is not None:
        lines.append(f"RMQS argument = {rmqs}")
    return lines
