"""The account of a queued message, read again from the current msmtprc at delivery time."""

from __future__ import annotations

from collections.abc import Sequence

from relayd.accounts import resolve
from relayd.accounts.account import Account
from relayd.accounts.options import replay_overrides
from relayd.accounts.select import select


def _ignore(line: str) -> None:
    """Selection notes are for --pretend; delivery does not print them."""


def account_for(
    name: str, config_file: str | None, overrides: Sequence[tuple[str, str | None]]
) -> Account:
    """The account a message was submitted with, as the msmtprc says now (SPEC §3.3).

    `name` is the account chosen at submission ('' for one built from the command line or the
    environment, which the stored `--host` override rebuilds), `config_file` the -C file if any,
    `overrides` the stored command-line options. A fixed password or host in the file applies
    to mail already queued. Raises ConfigError when the account is gone or no longer valid:
    the caller holds the message with that reason.
    """
    cmdline = replay_overrides(overrides)
    if "host" in cmdline.mask:
        account = Account(id=None, conffile=None)
    else:
        account = select(
            account_id=name or "default",
            conffile=config_file,
            envelope_from=None,
            sendmail_mode=False,
            emit=_ignore,
        ).account
    resolve.apply_overrides(
        account, cmdline, envelope_from=None, read_envelope_from=False, header_from=None
    )
    resolve.apply_defaults(account)
    resolve.check(account, sendmail_mode=False)
    return account
