"""Queued mail is delivered with the account as the msmtprc says now, plus its stored options."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayd.accounts.stored import account_for
from relayd.errors import ConfigError


def write_rc(home: Path, text: str, name: str = ".msmtprc") -> Path:
    path = home / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_reads_the_current_file_and_replays_the_options(isolated_home: Path) -> None:
    write_rc(isolated_home, "account work\nhost old.example\nfrom w@x\n")
    assert account_for("work", None, ()).host == "old.example"
    write_rc(isolated_home, "account work\nhost new.example\nport 2525\nfrom w@x\n")
    account = account_for("work", None, (("port", "587"), ("user", "John Doe")))
    assert (account.host, account.port, account.user) == ("new.example", 587, "John Doe")


def test_the_C_file_and_the_default_account(isolated_home: Path) -> None:
    rc = write_rc(isolated_home, "account default\nhost c.example\n", name="custom.rc")
    assert account_for("default", str(rc), ()).host == "c.example"
    write_rc(isolated_home, "account default\nhost d.example\n")
    assert account_for("", None, ()).host == "d.example"


def test_command_line_and_environment_accounts_come_from_the_options() -> None:
    account = account_for("", None, (("host", "smtp.example"), ("port", "2525"), ("tls", None)))
    assert (account.host, account.port, account.tls, account.id) == (
        "smtp.example",
        2525,
        True,
        None,
    )


def test_an_account_that_is_gone_or_broken_is_a_config_error(isolated_home: Path) -> None:
    write_rc(isolated_home, "account other\nhost h\n")
    with pytest.raises(ConfigError, match="account work not found"):
        account_for("work", None, ())
    write_rc(isolated_home, "account work\nhost h\ntls on\ntls_trust_file\n")
    with pytest.raises(ConfigError, match="tls requires"):
        account_for("work", None, ())
