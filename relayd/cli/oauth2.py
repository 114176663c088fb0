"""`relayd oauth2`: authorize an account (device code or loopback redirect), store its secret."""

from __future__ import annotations

import sys

import typer

from relayd.cli import complete
from relayd.cli.output import run
from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

app = typer.Typer(
    name="oauth2",
    help="OAuth2 for XOAUTH2/OAUTHBEARER accounts (Gmail, Microsoft 365).",
    no_args_is_help=True,
)


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _client(account: str) -> object:
    from relayd import settings

    loaded = settings.load()
    client = loaded.oauth2.get(account)
    if client is None:
        where = loaded.file or "relayd.toml"
        raise RelaydError(f"{where}: no [oauth2.{account}] table", ExitCode.CONFIG)
    return client


def _check_account(account: str) -> None:
    """A warning when relayd would not use the token for the msmtprc account."""
    from relayd.accounts.oauth2 import BEARER_METHODS
    from relayd.accounts.stored import account_for
    from relayd.errors import ConfigError

    try:
        found = account_for(account, None, ())
    except ConfigError as exc:
        _say(f"relayd: warning: {exc.message}")
        return
    if found.auth not in BEARER_METHODS:
        _say(f"relayd: warning: account {account} does not use auth xoauth2 or oauthbearer")
    elif found.password is not None or found.passwordeval:
        _say(f"relayd: warning: account {account} has a password source, used instead")


def _authorize(account: str, device: bool, browser: bool, port: int, timeout: float) -> int:
    from relayd.accounts import oauth2, oauth2_flows
    from relayd.settings import OAuth2

    client = _client(account)
    assert isinstance(client, OAuth2)
    _check_account(account)
    if device or not client.authorize_url:
        token = oauth2_flows.device_flow(account, client, _say, timeout=timeout)
    else:

        def show(url: str) -> None:
            _say("Open this address in a browser and allow relayd to send mail:")
            typer.echo(url)  # stdout: the one thing a script may want
            if browser:
                import webbrowser

                webbrowser.open(url)

        token = oauth2_flows.redirect_flow(account, client, show, port=port, timeout=timeout)
    assert token.refresh_token is not None  # the flows check it
    backend = oauth2.store_secret(account, token.refresh_token)
    _say(
        f"relayd: account {account} authorized; its refresh token is in the keyring"
        f" (service {oauth2.SERVICE}, user {account}, {backend})"
    )
    _say(
        f"relayd: mail held for it goes out after `relayd queue release ID…`"
        f" (see `relayd queue list --state held --account {account}`)"
    )
    return ExitCode.OK


@app.command("authorize")
def authorize_command(
    account: str = typer.Argument(
        ...,
        help="The msmtprc account (relayd.toml has its oauth2.ACCOUNT table).",
        autocompletion=complete.account_name,
    ),
    device: bool = typer.Option(
        False, "--device", help="Use the device-code flow (enter a code on any device)."
    ),
    browser: bool = typer.Option(
        True, "--browser/--no-browser", help="Open the address in a browser (redirect flow)."
    ),
    port: int = typer.Option(
        0, "--port", metavar="PORT", help="Loopback port for the redirect (0: any free)."
    ),
    timeout: float = typer.Option(
        300.0, "--timeout", metavar="SECONDS", help="Seconds to wait for the answer."
    ),
) -> None:
    """Authorize ACCOUNT and store its refresh token in the keyring (service relayd-oauth2).

    The loopback-redirect flow with PKCE is used when the provider has an authorize URL (the
    browser comes back to 127.0.0.1); --device, or a provider with only a device URL, shows a
    code to enter on any device instead.
    """
    run(lambda: _authorize(account, device, browser, port, timeout))


def _set_secret(account: str) -> int:
    from relayd.accounts import oauth2

    _client(account)
    if sys.stdin.isatty():
        import getpass

        secret = getpass.getpass("Client secret: ")
    else:
        secret = sys.stdin.readline().strip()
    if not secret:
        raise RelaydError("empty client secret", ExitCode.DATAERR)
    oauth2.store_secret(oauth2.client_key(account), secret)
    where = f"service {oauth2.SERVICE}, user {oauth2.client_key(account)}"
    _say(f"relayd: client secret stored ({where})")
    return ExitCode.OK


@app.command("set-secret")
def set_secret_command(
    account: str = typer.Argument(
        ..., help="The account whose client secret to store.", autocompletion=complete.account_name
    ),
) -> None:
    """Store ACCOUNT's client secret in the keyring (for client_secret_keyring = true).

    On a terminal it is asked without echo; otherwise it is the first line of stdin.
    """
    run(lambda: _set_secret(account))
