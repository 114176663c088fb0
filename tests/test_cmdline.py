"""relayd-sendmail's argument parser: getopt_long behaviour, msmtp's options and sendmail modes."""

from __future__ import annotations

import pytest

from relayd.accounts.options import replay_overrides
from relayd.errors import UsageError
from relayd.submission.cmdline import Delivery, Mode, parse


def usage_error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        parse(argv)
    assert info.value.exit_code == 64
    return info.value.message


def test_gnu_permutation_and_double_dash() -> None:
    inv = parse(["a@x", "-t", "b@x", "--", "-c", "--pretend"])
    assert inv.recipients == ["a@x", "b@x", "-c", "--pretend"]
    assert inv.read_recipients and not inv.pretend


def test_attached_and_separate_arguments() -> None:
    inv = parse(["-oi", "-faddr@x", "-F", "John Doe", "-C~/rc", "-aacc"])
    assert inv.envelope_from == "addr@x"
    assert inv.full_name == "John Doe"
    assert inv.account_id == "acc"
    assert inv.conffile == "~/rc"  # msmtp does not expand a tilde in -C


def test_ignored_sendmail_options() -> None:
    inv = parse(
        [
            "-oi",
            "-oem",
            "-B8BITMIME",
            "-G",
            "-m",
            "-n",
            "-L",
            "tag",
            "-h",
            "5",
            "-i",
            "-A",
            "c",
            "-O",
            "x=y",
            "x@y",
        ]
    )
    assert inv.recipients == ["x@y"] and inv.mode is Mode.SEND


def test_sendmail_modes_relayd_adds() -> None:
    assert parse(["-bp"]).mode is Mode.LIST_QUEUE
    assert parse(["-bs"]).mode is Mode.SMTP
    assert parse(["-q"]).mode is Mode.FLUSH
    assert parse(["-q30m"]).mode is Mode.FLUSH
    assert parse(["-bm", "x"]).mode is Mode.SEND
    assert parse(["-odq", "x"]).delivery is Delivery.QUEUE
    assert parse(["-odi", "x"]).delivery is Delivery.INTERACTIVE
    assert parse(["-odb", "x"]).delivery is Delivery.BACKGROUND
    assert usage_error(["-bd"]) == "unsupported operation mode bd"


def test_long_option_abbreviations() -> None:
    assert parse(["--acc=x"]).account_id == "x"
    assert parse(["--pre"]).pretend
    assert usage_error(["--tls-c=x"]) == (
        "option '--tls-c=x' is ambiguous; possibilities: "
        "'--tls-crl-file' '--tls-cert-file' '--tls-certcheck'"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-Z"], "invalid option -- 'Z'"),
        (["--foo"], "unrecognized option '--foo'"),
        (["-a"], "option requires an argument -- 'a'"),
        (["--account"], "option '--account' requires an argument"),
        (["--pretend=1"], "option '--pretend' doesn't allow an argument"),
        (["--port=abc"], "invalid argument abc for --port"),
        (["--port="], "invalid argument  for --port"),
        (["--connect-timeout=0"], "invalid argument 0 for --timeout"),
        (["--tls="], "invalid argument  for --tls"),
        (["--auth=PLAIN"], "invalid argument PLAIN for --auth"),
        (["--set-date-header=on"], "invalid argument on for --set-date-header"),
        (["-N", "never,x"], "invalid argument never,x for --dsn-notify"),
        (["--host=h", "-a", "b"], "cannot use both --host and --account"),
        (["--from=a", "--read-envelope-from"], "cannot use both --from and --read-envelope-from"),
        (["-S", "x"], "too many arguments"),
        (["--port=x", "-Z"], "invalid argument x for --port"),
        (["-Z", "--port=x"], "invalid option -- 'Z'"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    assert usage_error(argv) == message


def test_account_options_and_their_empty_forms() -> None:
    inv = parse(
        [
            "--host=",
            "--auth=",
            "--user=",
            "--tls",
            "--tls-starttls=off",
            "--syslog",
            "--keepbcc",
            "-R",
            "hdrs",
            "-N",
            "failure,delay",
            "--set-from-header=on",
            "--proxy-port=",
            "-X",
            "-",
        ]
    )
    c = inv.cmdline
    assert inv.host_given and c.host == ""
    assert (c.auth, c.user, c.tls, c.tls_starttls, c.syslog) == ("", None, True, False, "LOG_USER")
    assert (c.remove_bcc_headers, c.dsn_return, c.dsn_notify) == (False, "HDRS", "FAILURE,DELAY")
    assert (c.set_from_header, c.proxy_port, c.logfile) == ("on", 0, "-")


def test_overrides_are_structured_and_replay_to_the_same_account() -> None:
    inv = parse(["--port=2525", "--tls-trust-file=/ca file.pem", "--user=John Doe", "x"])
    assert inv.overrides == [
        ("port", "2525"),
        ("tls-trust-file", "/ca file.pem"),
        ("user", "John Doe"),
    ]
    replayed = replay_overrides(inv.overrides)
    assert (replayed.port, replayed.tls_trust_file, replayed.user) == (
        2525,
        "/ca file.pem",
        "John Doe",
    )
    assert replayed.mask == inv.cmdline.mask


def test_null_sender() -> None:
    assert parse(["-f", "<>", "x"]).envelope_from == ""
