"""msmtprc parsing: msmtp 1.8.23's line syntax, commands, inheritance and errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.accounts import msmtprc
from relayd.accounts.account import COMMANDS
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode


def parse(text: str, evaluate: Callable[[str], str | None] | None = None) -> msmtprc.ConfFile:
    if evaluate is None:
        return msmtprc.parse("/rc", text.encode())
    return msmtprc.parse("/rc", text.encode(), evaluate)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_outer_quotes_removed_inner_kept_and_no_inline_comments() -> None:
    conf = parse(
        'account a\nhost "  spaced "\nuser "unbalanced\npassword pa\\"ss\\nword\n'
        "from x@y # not a comment\n"
    )
    a = conf.accounts[0]
    assert a.host == "  spaced "
    assert a.user == '"unbalanced'
    assert a.password == 'pa\\"ss\\nword'
    assert a.from_ == "x@y # not a comment"
    assert conf.contains_secrets


def test_crlf_lines_comments_and_blank_lines() -> None:
    conf = parse("# c\r\n\r\n   \t# indented\r\naccount a\r\nhost h\r\n")
    assert [(a.id, a.host) for a in conf.accounts] == [("a", "h")]


def test_numbers_use_base_zero() -> None:
    for text, port in (("0x19", 25), ("031", 25), ("25", 25), (" 25", 25)):
        assert parse(f"account a\nport {text}\n").accounts[0].port == port
    for bad in ("0", "70000", "25x", "08", "-5", "0x"):
        assert "invalid argument" in error_of(f"account a\nport {bad}\n").message


def test_commands_before_any_account_make_the_default_account() -> None:
    conf = parse("host h0\nfrom f@x\naccount a\nhost h\n")
    assert [(a.id, a.host) for a in conf.accounts] == [("default", "h0"), ("a", "h")]


def test_inheritance_takes_only_explicit_settings() -> None:
    conf = parse(
        "defaults\nport 99\naccount a\nhost ha\nfrom a@x\n"
        "defaults\nhost hd2\ntls on\naccount b : a\naccount c : b\n"
    )
    a, b, c = conf.accounts
    assert (a.port, a.host, a.tls) == (99, "ha", False)
    # b starts from the current defaults, then takes what a set explicitly
    assert (b.port, b.host, b.from_, b.tls) == (99, "ha", "a@x", True)
    assert (c.host, c.from_) == ("ha", "a@x")


def test_defaults_values_are_not_inherited_through_account_lists() -> None:
    conf = parse("defaults\ntls on\naccount a\nhost ha\ndefaults\ntls off\naccount b : a\n")
    assert conf.accounts[1].tls is False


def test_tilde_only_for_file_commands(isolated_home: object) -> None:
    import os

    home = os.environ["HOME"]
    a = parse("account a\nlogfile ~/log\naliases ~x\nuser ~u\npasswordeval ~/p\n").accounts[0]
    assert a.logfile == f"{home}/log"
    assert a.aliases == f"{home}x"
    assert a.user == "~u"
    assert a.passwordeval == "~/p"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("account a\nfrobnicate x\n", "/rc: line 2: unknown command frobnicate"),
        ("account a\nHost h\n", "/rc: line 2: unknown command Host"),
        ("account a\nhost\n", "/rc: line 2: command host needs an argument"),
        ("account a\ntls maybe\n", "/rc: line 2: invalid argument maybe for command tls"),
        ("account a\naccount a\n", "/rc: line 2: account a was already defined"),
        ("account b : a\n", "/rc: line 1: account a not (yet) defined"),
        ("account a,b\n", "/rc: line 1: an account name must not contain colons or commas"),
        ("account\n", "/rc: line 1: missing account name"),
        ("account a\naccount b :\n", "/rc: line 2: missing account name"),
        ("defaults x\n", "/rc: line 1: command defaults does not take an argument"),
        (
            "account a\ntls_nocertcheck on\n",
            "/rc: line 2: command tls_nocertcheck does not take an argument",
        ),
        (
            "account a\nset_date_header on\n",
            "/rc: line 2: invalid argument on for command set_date_header",
        ),
        (
            "account a\nallow_from_override\n",
            "/rc: line 2: invalid argument  for command allow_from_override",
        ),
        (
            "account a\ndsn_notify delay,delay\n",
            "/rc: line 2: invalid argument delay,delay for command dsn_notify",
        ),
        (
            "account a\ntls_fingerprint aa:bb\n",
            "/rc: line 2: invalid argument aa:bb for command tls_fingerprint",
        ),
    ],
)
def test_error_messages(text: str, message: str) -> None:
    err = error_of(text)
    assert err.message == message
    assert err.exit_code == ExitCode.CONFIG


def test_line_length_limit_counts_bytes_including_cr() -> None:
    ok = "host " + "a" * 494
    assert parse(f"account a\n{ok}\n").accounts[0].host == "a" * 494
    for bad in ("host " + "a" * 495 + "\n", "host " + "a" * 494 + "\r\n", "host " + "a" * 495):
        err = error_of("account a\n" + bad)
        assert err.message == "/rc: line longer than 500 characters"


def test_values_of_every_kind() -> None:
    a = parse(
        "account a\nauth\ntls\ntls_starttls off\nsyslog\nset_from_header\ntimeout 1\n"
        "dsn_notify failure,delay\ndsn_return headers\nkeepbcc\nadd_missing_date_header off\n"
        "tls_fingerprint " + ":".join(["ab"] * 32) + "\n"
    ).accounts[0]
    assert (a.auth, a.tls, a.tls_starttls, a.syslog) == ("", True, False, "LOG_USER")
    assert (a.set_from_header, a.timeout, a.dsn_notify, a.dsn_return) == (
        "auto",
        1,
        "FAILURE,DELAY",
        "HDRS",
    )
    assert (a.remove_bcc_headers, a.set_date_header) == (False, "off")
    assert a.tls_fingerprint == ":".join(["AB"] * 32)


def test_eval_replaces_the_line() -> None:
    outputs = {
        "gethost": "host fromeval",
        "nothing": None,
        "again": "eval echo x",
        "comment": "  # c",
    }
    conf = parse("account a\neval gethost\neval comment\n", outputs.get)
    assert conf.accounts[0].host == "fromeval"
    with pytest.raises(ConfigError) as info:
        parse("account a\neval nothing\n", outputs.get)
    assert (info.value.message, info.value.exit_code) == (
        "/rc: cannot read output of 'nothing'",
        ExitCode.IOERR,
    )
    with pytest.raises(ConfigError) as info:
        parse("account a\neval again\n", outputs.get)
    assert info.value.message == "/rc: line 2: unknown command eval"


def test_eval_runs_a_shell_command() -> None:
    conf = msmtprc.parse("/rc", b"account a\neval printf 'host h1\\r\\nhost h2'\n")
    assert conf.accounts[0].host == "h1"


def test_password_from_eval_does_not_mark_secrets() -> None:
    conf = parse("account a\neval pw\n", {"pw": "password x"}.get)
    assert conf.accounts[0].password == "x"
    assert not conf.contains_secrets


_line = st.one_of(
    st.sampled_from(["account a", "account b : a", "defaults", "account c : a,b", "# x", ""]),
    st.builds(
        lambda cmd, arg: f"{cmd} {arg}",
        st.sampled_from([*COMMANDS, "account", "defaults", "bogus"]),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=12),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=12))
def test_property_only_config_errors_with_file_and_line(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        msmtprc.parse("/rc", text.encode(), lambda _: None)
    except ConfigError as err:
        assert err.message.startswith("/rc: ")
        assert err.path == "/rc"
        assert isinstance(err.line, int) and 1 <= err.line <= len(lines)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_property_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        msmtprc.parse("/rc", data, lambda _: None)
    except ConfigError as err:
        assert err.message.startswith("/rc: ")
        assert err.path == "/rc"
        assert isinstance(err.line, int) and err.line >= 1
