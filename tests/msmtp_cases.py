"""The case table of the msmtp conformance suite (tests/test_conformance_msmtp.py).

Each case describes one invocation that is run twice, once with Debian's msmtp 1.8.23 and once with
``relayd-sendmail``, each in its own fresh HOME holding identical files. The suite compares stdout,
stderr and the exit code.

Every case is safe to run on any machine: it either uses ``--pretend`` or fails before msmtp would
open a connection (usage errors, configuration errors, no recipients, ...). Hosts are reserved
names (``*.example``) or 127.0.0.1 with a port nothing listens on, and they are never reached.

In config text, file contents, argv and environment values the token ``@HOME@`` stands for the
HOME directory of the run. ``rc`` and ``expect`` record what msmtp itself does (exit code and
substrings of its stdout+stderr, with HOME shown as ``$HOME`` and the program name as ``PROG``):
the suite checks them first, so a case that stops exercising what it was written for is noticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

HOME_TOKEN = "@HOME@"

# Where a configuration file can live, relative to HOME.
USER_RC = ".msmtprc"
XDG_RC = ".config/msmtp/config"
CUSTOM_RC = "custom.rc"


@dataclass(frozen=True)
class ExtraFile:
    """A file created in HOME before the run (path relative to HOME)."""

    path: str
    content: str
    mode: int = 0o600


@dataclass(frozen=True)
class Deliberate:
    """A documented difference from msmtp 1.8.23 (README.rst lists each): what relayd does."""

    reason: str
    rc: int
    expect: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Case:
    """One side-by-side invocation."""

    id: str
    argv: tuple[str, ...]
    config: str | None = None
    """The msmtprc text (written byte-exact, so it may contain CRLF); None: no config file."""
    config_path: str = USER_RC
    config_mode: int = 0o600
    files: tuple[ExtraFile, ...] = ()
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Additions to the base environment; None removes a variable of the base environment."""
    stdin: bytes = b""
    unprivileged: bool = False
    """Run as a non-root user (as root: uid/gid 65534), for the permission checks."""
    foreign_owner: bool = False
    """With unprivileged: the config file stays owned by root (needs root to set up)."""
    rc: int | None = 0
    """msmtp's exit code; None when it depends on the machine (e.g. on running as root)."""
    expect: tuple[str, ...] = ()
    differs: Deliberate | None = None
    """Set where relayd deliberately behaves differently; then relayd is checked against it."""


FROM_OVERRIDE_FIX = (
    "msmtp 1.8.24 semantics (SPEC §3.2): allow_from_override is inherited through `account b : a`"
)


def lines(*text: str) -> str:
    """Config text from lines, each ended with LF."""
    return "".join(line + "\n" for line in text)


# --------------------------------------------------------------------------------------------
# Shared configurations

STANDARD = lines(
    "# a typical msmtprc: defaults, three accounts, a default account",
    "defaults",
    "port 587",
    "tls on",
    "tls_trust_file /etc/ssl/certs/ca-certificates.crt",
    "logfile ~/.msmtp.log",
    "",
    "account work",
    "host mail.work.example",
    "from *@work.example",
    "auth on",
    "user jdoe",
    "password secret",
    "",
    "account personal",
    "host 127.0.0.1",
    "port 2525",
    "tls off",
    "from me@example.org",
    "",
    "account default : personal",
)

# Accounts for --from matching: exact, wildcards of each kind, and no default account.
MATCHING = lines(
    "account exact",
    "host mail.example",
    "from Alice@Example.org",
    "",
    "account question",
    "host mail.example",
    "from ?@q.example",
    "",
    "account bracket",
    "host mail.example",
    "from [ab]*@br.example",
    "",
    "account star",
    "host mail.example",
    "from *@work.example",
    "",
    "account star2",
    "host mail2.example",
    "from *@work.example",
    "",
    "account sub",
    "host mail.example",
    "from bob@sub.example",
    "",
    "account subplus",
    "host mail.example",
    "from carol+lists@sub.example",
)

# A minimal valid account named "a" that is the default account, for per-command tests.
SIMPLE_HEAD = ("account a", "host 127.0.0.1", "port 1", "from a@example.org")


def simple(*extra: str, default: bool = True) -> str:
    """A valid one-account config plus extra lines applied to it."""
    tail = ("account default : a",) if default else ()
    return lines(*SIMPLE_HEAD, *extra, *tail)


# --read-envelope-from: the default account is never reached (127.0.0.1, port 1).
REF_RC = MATCHING + lines("account default", "host 127.0.0.1", "port 1", "from d@x.example")

MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@example.org\nSubject: hi\n\nbody\n"

PERM_RC = lines(
    "account default",
    "host 127.0.0.1",
    "port 1",
    "from me@example.org",
    "auth plain",
    "user me",
    "password secret",
)

# Options that msmtp accepts and ignores for sendmail compatibility (relayd's real modes excluded).
IGNORED_OPTIONS = (
    "-oi",
    "-i",
    "-oem",
    "-B8BITMIME",
    "-G",
    "-m",
    "-n",
    "-L",
    "tag",
    "-h",
    "5",
    "-A",
    "c",
    "-O",
    "DeliveryMode=b",
    "-odb",
)

SHA1_FINGERPRINT = ":".join(f"{n:02X}" for n in range(20))
SHA256_FINGERPRINT = ":".join(f"{n * 7 % 256:02X}" for n in range(32))

LONG_LINE_OK = "user " + "u" * 494  # 499 characters: the longest line msmtp accepts
LONG_LINE_BAD = "user " + "u" * 495  # 500 characters


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append

    # ---------------------------------------------------------------- account selection
    add(Case(id="sel-a", argv=("-P", "-a", "work"), config=STANDARD, stdin=MESSAGE))
    add(Case(id="sel-a-attached", argv=("-Pawork",), config=STANDARD))
    add(Case(id="sel-account-eq", argv=("--pretend", "--account=personal"), config=STANDARD))
    add(Case(id="sel-account-separate", argv=("--pretend", "--account", "work"), config=STANDARD))
    add(
        Case(
            id="sel-a-missing",
            argv=("-P", "-a", "nope"),
            config=STANDARD,
            rc=78,
            expect=("PROG: account nope not found in $HOME/.msmtprc\n",),
        )
    )
    add(
        Case(
            id="sel-a-missing-send",
            argv=("-a", "nope", "rcpt@example.org"),
            config=STANDARD,
            stdin=MESSAGE,
            rc=78,
            expect=("not found",),
        )
    )
    add(Case(id="sel-default", argv=("-P", "rcpt@example.org"), config=STANDARD, stdin=MESSAGE))
    add(
        Case(
            id="sel-from-exact",
            argv=("-P", "-f", "Alice@Example.org", "x@example.org"),
            config=MATCHING,
            expect=("account chosen by envelope from address Alice@Example.org: exact",),
        )
    )
    add(
        Case(
            id="sel-from-caseless",
            argv=("-P", "--from=aLICE@example.ORG"),
            config=MATCHING,
            expect=(": exact\n",),
        )
    )
    add(
        Case(
            id="sel-from-attached",
            argv=("-P", "-falice@example.org"),
            config=MATCHING,
            expect=(": exact\n",),
        )
    )
    add(
        Case(
            id="sel-from-question",
            argv=("-P", "-f", "x@q.example"),
            config=MATCHING,
            expect=(": question\n",),
        )
    )
    add(
        Case(
            id="sel-from-question-nomatch",
            argv=("-P", "-f", "xy@q.example"),
            config=lines(*MATCHING.splitlines(), "account default", "host fallback.example"),
            expect=("falling back to default account",),
        )
    )
    add(
        Case(
            id="sel-from-bracket",
            argv=("-P", "-f", "bob@br.example"),
            config=MATCHING,
            expect=(": bracket\n",),
        )
    )
    add(
        Case(
            id="sel-from-bracket-nomatch",
            argv=("-P", "-f", "carl@br.example"),
            config=MATCHING,
            rc=78,
            expect=("account default not found in $HOME/.msmtprc",),
        )
    )
    add(
        Case(
            id="sel-from-star-first-wins",
            argv=("-P", "-f", "boss@work.example"),
            config=MATCHING,
            expect=(": star\n", "host = mail.example\n"),
        )
    )
    add(
        Case(
            id="sel-from-star-case-sensitive",
            argv=("-P", "-f", "boss@WORK.example"),
            config=lines(*MATCHING.splitlines(), "account default : exact"),
            expect=("falling back to default account",),
        )
    )
    add(
        Case(
            id="sel-from-subaddress",
            argv=("-P", "-f", "Bob+tag@SUB.example"),
            config=MATCHING,
            expect=(": sub\n", "from = Bob+tag@SUB.example\n"),
        )
    )
    add(
        Case(
            id="sel-from-subaddress-exact",
            argv=("-P", "-f", "carol+lists@sub.example"),
            config=MATCHING,
            expect=(": subplus\n",),
        )
    )
    add(
        Case(
            id="sel-from-subaddress-no-wildcard",
            argv=("-P", "-f", "boss+tag@work.example"),
            config=lines(*MATCHING.splitlines(), "account default : sub"),
            expect=("falling back to default account",),
        )
    )
    add(
        Case(
            id="sel-from-fallback-default",
            argv=("-P", "-f", "stranger@nowhere.example", "x@example.org"),
            config=STANDARD,
            expect=("falling back to default account", "from = stranger@nowhere.example\n"),
        )
    )
    add(
        Case(
            id="sel-from-pattern-before-expansion",
            argv=("-P", "-f", "alice@example.org"),
            config=lines(
                "account a",
                "host a.example",
                "from %U@example.org",
                "account default",
                "host d.example",
            ),
            env={"USER": "alice"},
            expect=("falling back to default account",),
        )
    )
    add(
        Case(
            id="sel-account-name-with-space",
            argv=("-P", "--account=my account"),
            config=lines("account my account", "host a.example", "account b : my account"),
            expect=("using account my account from",),
        )
    )
    add(
        Case(
            id="sel-implicit-default",
            argv=("-P",),
            config=lines("host mail.example", "from me@example.org", "", "account other", "host o"),
            expect=("using account default from",),
        )
    )
    add(
        Case(
            id="sel-implicit-default-is-defaults",
            argv=("-P", "-a", "other"),
            config=lines("port 2525", "account other", "host o.example"),
            expect=("port = 25\n",),
        )
    )
    add(
        Case(
            id="sel-env-email-smtpserver",
            argv=("-P", "x@example.org"),
            env={"EMAIL": "me@env.example", "SMTPSERVER": "smtp.env.example"},
            expect=("using environment variables EMAIL and SMTPSERVER",),
        )
    )
    add(
        Case(
            id="sel-env-smtpserver-with-f",
            argv=("-P", "-f", "cli@example.org"),
            env={"EMAIL": "me@env.example", "SMTPSERVER": "smtp.env.example"},
            expect=("from = cli@example.org\n",),
        )
    )
    add(
        Case(
            id="sel-env-smtpserver-only-f",
            argv=("-P", "-f", "cli@example.org"),
            env={"SMTPSERVER": "smtp.env.example"},
            expect=("using environment variables EMAIL and SMTPSERVER",),
        )
    )
    add(
        Case(
            id="sel-env-smtpserver-only",
            argv=("-P",),
            env={"SMTPSERVER": "smtp.env.example"},
            rc=78,
            expect=("account default not found: no configuration file available",),
        )
    )
    add(
        Case(
            id="sel-env-email-only",
            argv=("-P", "x@example.org"),
            env={"EMAIL": "me@env.example"},
            rc=78,
        )
    )
    add(
        Case(
            id="sel-env-serverinfo-smtpserver-only",
            argv=("-P", "--serverinfo"),
            env={"SMTPSERVER": "smtp.env.example"},
            expect=("using environment variables EMAIL and SMTPSERVER",),
        )
    )
    add(
        Case(
            id="sel-env-config-without-default",
            argv=("-P",),
            config=MATCHING,
            env={"EMAIL": "me@env.example", "SMTPSERVER": "smtp.env.example"},
            expect=("loaded user configuration file", "host = smtp.env.example\n"),
        )
    )
    add(
        Case(
            id="sel-env-default-wins",
            argv=("-P",),
            config=STANDARD,
            env={"EMAIL": "me@env.example", "SMTPSERVER": "smtp.env.example"},
            expect=("host = 127.0.0.1\n",),
        )
    )
    add(
        Case(
            id="sel-env-account-missing",
            argv=("-P", "-a", "nope"),
            config=STANDARD,
            env={"EMAIL": "me@env.example", "SMTPSERVER": "smtp.env.example"},
            rc=78,
        )
    )
    add(
        Case(
            id="sel-no-config-send",
            argv=("x@example.org",),
            stdin=MESSAGE,
            rc=78,
            expect=("no configuration file available",),
        )
    )
    add(
        Case(
            id="sel-host",
            argv=("-P", "--host=mail.example", "x@example.org"),
            config=STANDARD,
            expect=("using account specified on command line\n",),
        )
    )
    add(
        Case(
            id="sel-host-options",
            argv=("-P", "--host=127.0.0.1", "-f", "me@example.org", "--port=2525", "--tls"),
            config="this line would be an error\n",
            expect=("port = 2525\n",),
        )
    )
    add(Case(id="sel-xdg", argv=("-P",), config=simple(), config_path=XDG_RC))
    add(
        Case(
            id="sel-xdg-unset-default-dir",
            argv=("-P",),
            config=simple(),
            config_path=XDG_RC,
            env={"XDG_CONFIG_HOME": None},
            expect=("loaded user configuration file $HOME/.config/msmtp/config",),
        )
    )
    add(
        Case(
            id="sel-xdg-custom-dir",
            argv=("-P",),
            config=simple(),
            config_path="cfg/msmtp/config",
            env={"XDG_CONFIG_HOME": "@HOME@/cfg"},
            expect=("loaded user configuration file $HOME/cfg/msmtp/config",),
        )
    )
    add(
        Case(
            id="sel-home-beats-xdg",
            argv=("-P",),
            config=lines("account default", "host home.example"),
            files=(ExtraFile(XDG_RC, lines("account default", "host xdg.example")),),
            expect=("host = home.example\n",),
        )
    )
    add(
        Case(
            id="sel-cfile",
            argv=("-P", "-C", "@HOME@/custom.rc"),
            config=simple(),
            config_path=CUSTOM_RC,
            files=(ExtraFile(USER_RC, "garbage here\n"),),
        )
    )
    add(
        Case(
            id="sel-cfile-long-relative",
            argv=("-P", "--file=custom.rc"),
            config=simple(),
            config_path=CUSTOM_RC,
            expect=("loaded user configuration file custom.rc\n",),
        )
    )
    add(
        Case(
            id="sel-cfile-missing",
            argv=("-P", "-C", "@HOME@/nope.rc"),
            config=simple(),
            rc=74,
            expect=("PROG: $HOME/nope.rc: No such file or directory\n",),
        )
    )
    add(
        Case(
            id="sel-cfile-tilde-literal",
            argv=("-P", "-C", "~/custom.rc"),
            config=simple(),
            config_path=CUSTOM_RC,
            rc=74,
        )
    )
    add(
        Case(
            id="sel-cfile-directory",
            argv=("-P", "-C", "@HOME@"),
            config=simple(),
            rc=74,
            expect=("PROG: $HOME: input error\n",),
        )
    )

    # ---------------------------------------------------------------- --read-envelope-from
    def ref_send(case_id: str, message: bytes) -> Case:
        return Case(
            id=case_id,
            argv=("--read-envelope-from", "x@example.org"),
            config=REF_RC,
            stdin=message,
            rc=78,
            expect=(
                "PROG: account default from $HOME/.msmtprc: envelope-from address is missing\n",
            ),
        )

    def ref(case_id: str, message: bytes, rc: int = 0, expect: tuple[str, ...] = ()) -> Case:
        return Case(
            id=case_id,
            argv=("-P", "--read-envelope-from", "x@example.org"),
            config=REF_RC,
            stdin=message,
            rc=rc,
            expect=expect,
        )

    add(
        ref(
            "ref-display-name",
            b'From: "Doe, John" <john@example.com>\nTo: x@example.org\n\nbody\n',
            expect=("envelope from address extracted from mail: john@example.com\n",),
        )
    )
    add(
        ref(
            "ref-comment",
            b"Subject: x\nFrom: john@example.com (John Doe)\n\n",
            expect=("from = john@example.com\n",),
        )
    )
    add(
        ref(
            "ref-folded",
            b"Subject: folded\nFrom: John Doe\n <john@example.com>\nTo: y@example.org\n\n",
            expect=("from = john@example.com\n",),
        )
    )
    add(
        ref(
            "ref-lowercase",
            b"from: Boss <boss@work.example>\n\n",
            expect=(": star\n",),
        )
    )
    add(ref("ref-crlf", b"FROM: x@q.example\r\nTo: y@example.org\r\n\r\nbody\r\n"))
    add(
        ref(
            "ref-two-addresses",
            b"From: first@example.com, second@example.com\n\n",
            expect=("from = first@example.com\n",),
        )
    )
    add(
        ref(
            "ref-first-from-header",
            b"From: one@example.com\nFrom: two@example.com\n\n",
            expect=("from = one@example.com\n",),
        )
    )
    not_found = (
        "envelope from address extracted from mail: (null)\n",
        "from = (read from mail)\n",
    )
    add(ref("ref-from-in-body-only", b"Subject: x\n\nFrom: body@example.com\n", expect=not_found))
    add(ref("ref-none", b"Subject: no from\nTo: x@example.org\n\nbody\n", expect=not_found))
    add(ref("ref-empty-from", b"From: \nTo: x@example.org\n\n", expect=not_found))
    add(ref("ref-empty-stdin", b"", expect=not_found))
    add(ref_send("ref-none-send", b"Subject: no from\nTo: x@example.org\n\nbody\n"))
    add(ref_send("ref-empty-from-send", b"From:\nTo: x@example.org\n\nbody\n"))
    add(ref_send("ref-from-in-body-send", b"Subject: x\n\nFrom: body@example.com\n"))
    add(
        ref(
            "ref-resent-from-ignored",
            b"Resent-From: resent@example.com\nFrom: orig@example.com\n\n",
            expect=("from = orig@example.com\n",),
        )
    )
    add(
        Case(
            id="ref-with-from",
            argv=("-P", "--read-envelope-from", "-f", "a@example.org"),
            config=STANDARD,
            rc=64,
            expect=("PROG: cannot use both --from and --read-envelope-from\n",),
        )
    )

    # ---------------------------------------------------------------- recipients / -t
    add(
        Case(
            id="t-pretend",
            argv=("-P", "-t"),
            config=STANDARD,
            stdin=b"To: a@example.org\nCc: b@example.org\nBcc: c@example.org\n\nbody\n",
            expect=("reading recipients from the command line and the mail\n",),
        )
    )
    add(
        Case(
            id="t-long-with-cli-recipient",
            argv=("--read-recipients", "--pretend", "extra@example.org"),
            config=STANDARD,
            stdin=MESSAGE,
        )
    )
    add(
        Case(
            id="t-no-recipients",
            argv=("-t",),
            config=STANDARD,
            stdin=b"Subject: nobody\n\nbody\n",
            rc=64,
            expect=("PROG: no recipients found\n",),
        )
    )
    add(
        Case(
            id="t-resent-quirk",
            argv=("-t",),
            config=STANDARD,
            stdin=b"Resent-Date: Mon, 1 Jan 2024 00:00:00 +0000\nTo: a@example.org\n\n",
            rc=64,
            expect=("no recipients found",),
        )
    )
    add(
        Case(
            id="no-recipients",
            argv=(),
            config=STANDARD,
            stdin=MESSAGE,
            rc=64,
            expect=("PROG: no recipients found\n",),
        )
    )
    add(
        Case(
            id="no-recipients-bcc-only",
            argv=("-f", "me@example.org"),
            config=STANDARD,
            stdin=b"Bcc: hidden@example.org\n\nbody\n",
            rc=64,
        )
    )
    add(
        Case(
            id="no-recipients-before-config-error",
            argv=("-a", "nope"),
            config="frobnicate\n",
            stdin=MESSAGE,
            rc=64,
            expect=("no recipients found",),
        )
    )
    add(
        Case(
            id="no-recipients-bm",
            argv=("-bm", "-oi"),
            config=STANDARD,
            stdin=MESSAGE,
            rc=64,
        )
    )

    # ---------------------------------------------------------------- inheritance
    add(
        Case(
            id="inh-defaults-repeated",
            argv=("-P", "-a", "b"),
            config=lines(
                "defaults",
                "port 587",
                "account a",
                "host a.example",
                "defaults",
                "port 2525",
                "tls on",
                "account b",
                "host b.example",
            ),
            expect=("port = 2525\n", "tls = on\n"),
        )
    )
    add(
        Case(
            id="inh-defaults-not-retroactive",
            argv=("-P", "-a", "a"),
            config=lines(
                "defaults", "port 587", "account a", "host a.example", "defaults", "port 2525"
            ),
            expect=("port = 587\n",),
        )
    )
    add(
        Case(
            id="inh-colon",
            argv=("-P", "-a", "b"),
            config=lines(
                "account a",
                "host a.example",
                "user ua",
                "timeout 5",
                "account b : a",
                "user ub",
            ),
            expect=("host = a.example\n", "user = ub\n", "timeout = 5 seconds\n"),
        )
    )
    add(
        Case(
            id="inh-multi",
            argv=("-P", "-a", "c"),
            config=lines(
                "account a",
                "host a.example",
                "from a@example.org",
                "domain a.example",
                "account b",
                "host b.example",
                "auth login",
                "account c : a,b",
            ),
            expect=("host = b.example\n", "from = a@example.org\n", "auth = LOGIN\n"),
        )
    )
    add(
        Case(
            id="inh-multi-spaces",
            argv=("-P", "--account=c"),
            config=lines(
                "account a", "host a.example", "account b", "port 26", "account c :  a , b  "
            ),
            expect=("port = 26\n",),
        )
    )
    add(
        Case(
            id="inh-explicit-only",
            argv=("-P", "-a", "b"),
            config=lines(
                "defaults",
                "port 587",
                "tls on",
                "account a",
                "host a.example",
                "defaults",
                "port 2600",
                "account b : a",
            ),
            expect=("port = 2600\n",),
        )
    )
    add(
        Case(
            id="inh-undefined",
            argv=("-P",),
            config=lines("account a", "host a.example", "account b : zz"),
            rc=78,
            expect=("PROG: $HOME/.msmtprc: line 3: account zz not (yet) defined\n",),
        )
    )
    add(
        Case(
            id="inh-forward-reference",
            argv=("-P",),
            config=lines("account b : a", "host b.example", "account a", "host a.example"),
            rc=78,
            expect=("line 1: account a not (yet) defined",),
        )
    )

    # ---------------------------------------------------------------- line syntax
    add(
        Case(
            id="syn-quotes",
            argv=("-P",),
            config=simple(
                'user "john doe"',
                'domain "a"b"',
                'tls_priorities  "unbalanced ',
                'logfile_time_format "%Y-%m-%d %H:%M"',
            ),
            expect=("user = john doe\n", 'domain = a"b\n', 'tls_priorities = "unbalanced\n'),
        )
    )
    add(
        Case(
            id="syn-quote-single-char",
            argv=("-P",),
            config=simple('user "', 'domain """"'),
            expect=('user = "\n',),
        )
    )
    add(
        Case(
            id="syn-quote-empty",
            argv=("-P",),
            config=simple("user someone", 'user ""', "ntlmdomain \\n"),
            expect=("user = (not set)\n",),
        )
    )
    add(
        Case(
            id="syn-no-inline-comment",
            argv=("-P",),
            config=lines(
                "account default",
                "host mail.example # not a comment",
                "from me@example.org\t# neither",
            ),
            expect=("host = mail.example # not a comment\n",),
        )
    )
    add(
        Case(
            id="syn-crlf",
            argv=("-P", "-a", "b"),
            config="# crlf\r\naccount a\r\nhost a.example\r\n\r\naccount b : a\r\nport 26\r\n",
            expect=("host = a.example\n", "port = 26\n"),
        )
    )
    add(
        Case(
            id="syn-blanks-and-comments",
            argv=("-P",),
            config=(
                "\n   \n\t# tab comment\n  # space comment\n"
                "account\tdefault\n\t host \t mail.example \t \n  from\tme@example.org\n"
            ),
            expect=("host = mail.example\n",),
        )
    )
    add(
        Case(
            id="syn-no-final-newline",
            argv=("-P",),
            config="account default\nhost mail.example\nfrom x@example.org",
            expect=("from = x@example.org\n",),
        )
    )
    add(
        Case(
            id="syn-command-case-sensitive",
            argv=("-P",),
            config=lines("account default", "Host mail.example"),
            rc=78,
            expect=("PROG: $HOME/.msmtprc: line 2: unknown command Host\n",),
        )
    )
    add(
        Case(
            id="syn-line-499",
            argv=("-P",),
            config=simple(LONG_LINE_OK),
            expect=("user = uuuu",),
        )
    )
    add(
        Case(
            id="syn-line-500",
            argv=("-P",),
            config=simple(LONG_LINE_BAD),
            rc=78,
            expect=("PROG: $HOME/.msmtprc: line longer than 500 characters\n",),
        )
    )
    add(
        Case(
            id="syn-line-499-crlf",
            argv=("-P",),
            config=lines(*SIMPLE_HEAD).replace("\n", "\r\n") + LONG_LINE_OK + "\r\n",
            rc=78,
            expect=("line longer than 500 characters",),
        )
    )
    add(
        Case(
            id="syn-line-500-last-no-newline",
            argv=("-P",),
            config=lines(*SIMPLE_HEAD) + LONG_LINE_BAD,
            rc=78,
        )
    )
    add(
        Case(
            id="syn-line-counts-bytes-ok",
            argv=("-P",),
            config=simple("user " + "\u00e9" * 247),
            expect=("user = \u00e9\u00e9",),
        )
    )
    add(
        Case(
            id="syn-line-counts-bytes",
            argv=("-P",),
            config=simple("user " + "\u00e9" * 248),
            rc=78,
            expect=("line longer than 500 characters",),
        )
    )
    add(
        Case(
            id="syn-line-501-comment",
            argv=("-P",),
            config=lines("# " + "c" * 600, *SIMPLE_HEAD),
            rc=78,
            expect=("line longer than 500 characters",),
        )
    )

    # ---------------------------------------------------------------- tilde expansion
    add(
        Case(
            id="tilde-file-commands",
            argv=("-P",),
            config=simple(
                "logfile ~/msmtp.log",
                "tls_trust_file ~/ca.pem",
                "tls_crl_file ~/crl.pem",
                "tls_key_file ~/key.pem",
                "tls_cert_file ~/cert.pem",
                "aliases ~/aliases",
            ),
            files=(ExtraFile("aliases", "root: admin@example.org\n"),),
            expect=("logfile = $HOME/msmtp.log\n", "tls_trust_file = $HOME/ca.pem\n"),
        )
    )
    add(
        Case(
            id="tilde-naive-user",
            argv=("-P",),
            config=simple("logfile ~other/msmtp.log"),
            expect=("logfile = $HOMEother/msmtp.log\n",),
        )
    )
    add(
        Case(
            id="tilde-not-for-strings",
            argv=("-P",),
            config=simple(
                "user ~jdoe",
                "domain ~/x",
                "passwordeval ~/bin/pw",
                "socket ~/sock",
                "source_ip ~ip",
                "logfile_time_format ~%H",
            ),
            expect=("user = ~jdoe\n", "passwordeval = ~/bin/pw\n", "socket = ~/sock\n"),
        )
    )
    add(
        Case(
            id="tilde-cli-options",
            argv=(
                "-P",
                "--logfile=~/x.log",
                "--tls-trust-file=~/ca.pem",
                "--aliases=~/al",
                "--tls-key-file=~/k",
                "--tls-cert-file=~/c",
            ),
            config=simple(),
            files=(ExtraFile("al", "# nothing\n"),),
            expect=("logfile = $HOME/x.log\n",),
        )
    )
    add(
        Case(
            id="tilde-logfile-x",
            argv=("-P", "-X", "~/short.log", "-a", "a"),
            config=simple(),
            expect=("logfile = $HOME/short.log\n",),
        )
    )

    # ---------------------------------------------------------------- values
    add(
        Case(
            id="val-empty-means-on",
            argv=("-P",),
            config=simple(
                "tls",
                "tls_starttls off",
                "tls_starttls",
                "auth",
                "undisclosed_recipients",
                "set_from_header on",
                "set_from_header",
                "remove_bcc_headers off",
                "remove_bcc_headers",
                "syslog",
            ),
            expect=(
                "tls = on\n",
                "tls_starttls = on\n",
                "auth = choose\n",
                "set_from_header = auto\n",
                "remove_bcc_headers = on\n",
            ),
        )
    )
    add(
        Case(
            id="val-smtps-port",
            argv=("-P",),
            config=lines("account default", "host mail.example", "tls on", "tls_starttls off"),
            expect=("port = 465\n",),
        )
    )
    add(
        Case(
            id="val-on-off",
            argv=("-P",),
            config=simple(
                "tls off",
                "auth off",
                "tls_certcheck off",
                "remove_bcc_headers off",
                "undisclosed_recipients on",
                "set_from_header on",
                "set_date_header off",
                "set_msgid_header off",
            ),
            expect=("auth = none\n", "set_from_header = on\n"),
        )
    )
    add(
        Case(
            id="val-invalid-on-off",
            argv=("-P",),
            config=simple("tls maybe"),
            rc=78,
            expect=("line 5: invalid argument maybe for command tls\n",),
        )
    )
    add(
        Case(
            id="val-on-case-sensitive",
            argv=("-P",),
            config=simple("tls On"),
            rc=78,
            expect=("invalid argument On for command tls",),
        )
    )
    add(
        Case(
            id="val-set-date-header-on",
            argv=("-P",),
            config=simple("set_date_header on"),
            rc=78,
            expect=("invalid argument on for command set_date_header",),
        )
    )
    add(
        Case(
            id="val-allow-from-override-empty",
            argv=("-P",),
            config=simple("allow_from_override"),
            rc=78,
        )
    )
    add(
        Case(
            id="val-allow-from-override-off",
            argv=("-P", "-a", "a", "-f", "other@example.org"),
            config=simple("allow_from_override off"),
            expect=("from = a@example.org\n", "allow_from_override = off\n"),
        )
    )
    add(
        Case(
            id="val-allow-from-override-not-inherited",
            argv=("-P", "-f", "other@example.org"),
            config=simple("allow_from_override off"),
            expect=("from = other@example.org\n", "allow_from_override = on\n"),
            differs=Deliberate(
                FROM_OVERRIDE_FIX,
                rc=0,
                expect=("from = a@example.org\n", "allow_from_override = off\n"),
            ),
        )
    )
    add(
        Case(
            id="val-allow-from-override-defaults",
            argv=("-P", "-a", "b"),
            config=lines(
                "defaults",
                "allow_from_override off",
                "account a",
                "host a.example",
                "from a@example.org",
                "account b : a",
            ),
            expect=("from = (not set)\n",),
            differs=Deliberate(
                "msmtp 1.8.24 semantics: allow_from_override off in defaults does not block "
                "inheriting `from`",
                rc=0,
                expect=("from = a@example.org\n", "allow_from_override = off\n"),
            ),
        )
    )
    for name, value, shown in (
        ("hex", "0x19", "port = 25\n"),
        ("octal", "031", "port = 25\n"),
        ("max", "65535", "port = 65535\n"),
        ("plus", "+26", "port = 26\n"),
    ):
        add(
            Case(
                id=f"num-port-{name}", argv=("-P",), config=simple(f"port {value}"), expect=(shown,)
            )
        )
    for name, value in (
        ("zero", "0"),
        ("too-big", "70000"),
        ("trailing", "25x"),
        ("negative", "-25"),
        ("bad-octal", "089"),
        ("word", "smtp"),
    ):
        add(
            Case(
                id=f"num-port-{name}",
                argv=("-P",),
                config=simple(f"port {value}"),
                rc=78,
                expect=(f"invalid argument {value} for command port\n",),
            )
        )
    add(
        Case(
            id="num-port-empty",
            argv=("-P",),
            config=simple("port"),
            rc=78,
            expect=("line 5: command port needs an argument\n",),
        )
    )
    add(
        Case(
            id="num-timeout-1",
            argv=("-P",),
            config=simple("timeout 1"),
            expect=("timeout = 1 second\n",),
        )
    )
    add(
        Case(
            id="num-timeout-alias",
            argv=("-P",),
            config=simple("connect_timeout 0x3c"),
            expect=("timeout = 60 seconds\n",),
        )
    )
    add(
        Case(
            id="num-timeout-off",
            argv=("-P",),
            config=simple("timeout 30", "timeout off"),
            expect=("timeout = off\n",),
        )
    )
    add(Case(id="num-timeout-zero", argv=("-P",), config=simple("timeout 0"), rc=78))
    add(
        Case(
            id="num-proxy",
            argv=("-P",),
            config=simple("proxy_host 127.0.0.1"),
            expect=("proxy host = 127.0.0.1\n", "proxy port = 1080\n"),
        )
    )
    add(
        Case(
            id="num-proxy-port",
            argv=("-P",),
            config=simple("proxy_host proxy.example", "proxy_port 9050", "source_ip 127.0.0.2"),
            expect=("proxy port = 9050\n",),
        )
    )
    add(
        Case(
            id="val-misc-strings",
            argv=("-P",),
            config=simple(
                "tls on",
                "tls_fingerprint 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33",
                "tls_host_override smtp.example",
                "tls_min_dh_prime_bits 1024",
                "tls_priorities NORMAL:-VERS-TLS1.0",
                "dsn_notify failure,delay",
                "dsn_return headers",
                "logfile -",
                "logfile_time_format %Y",
                "syslog LOG_MAIL",
                "ntlmdomain CORP",
                "protocol lmtp",
                "port 24",
                "domain relay.example",
            ),
            expect=("dsn_notify = FAILURE,DELAY\n", "syslog = LOG_MAIL\n", "protocol = lmtp\n"),
        )
    )
    add(
        Case(
            id="val-syslog-on",
            argv=("-P",),
            config=simple("syslog"),
            expect=("syslog = LOG_USER\n",),
        )
    )
    add(Case(id="val-syslog-bad", argv=("-P",), config=simple("syslog LOG_FOO"), rc=78))
    add(Case(id="val-dsn-notify-bad", argv=("-P",), config=simple("dsn_notify sometimes"), rc=78))
    add(Case(id="val-dsn-return-bad", argv=("-P",), config=simple("dsn_return hdrs"), rc=78))
    add(Case(id="val-protocol-bad", argv=("-P",), config=simple("protocol esmtp"), rc=78))
    add(
        Case(
            id="val-lmtp-no-port",
            argv=("-P",),
            config=lines("account default", "host mail.example", "protocol lmtp"),
            rc=78,
            expect=("port not set",),
        )
    )
    add(
        Case(
            id="val-socket-no-host",
            argv=("-P",),
            config=lines("account default", "socket /run/nothing.sock", "from me@example.org"),
            expect=("socket = /run/nothing.sock\n",),
        )
    )
    add(
        Case(
            id="val-auto-from",
            argv=("-P",),
            config=simple("auto_from on", "maildomain example.net"),
            env={"USER": "alice"},
            expect=("from = alice@example.net\n",),
        )
    )
    add(
        Case(
            id="val-compat-commands",
            argv=("-P",),
            config=simple(
                "tls_nocertcheck",
                "tls_nostarttls",
                "tls_force_sslv3 whatever",
                "keepbcc",
                "add_missing_from_header off",
                "add_missing_date_header off",
            ),
            expect=("tls_certcheck = off\n", "remove_bcc_headers = off\n"),
        )
    )
    add(
        Case(
            id="val-expansion",
            argv=("-P",),
            config=lines(
                "account default",
                "host mail.example",
                "from %U@%H",
                "domain %H.%C.example",
            ),
            env={"USER": "alice", "HOSTNAME": "localhost"},
            expect=("from = alice@localhost\n",),
        )
    )
    add(
        Case(
            id="val-expansion-gethostname",
            argv=("-P",),
            config=lines("account default", "host mail.example", "from %U@%H", "domain %H"),
            env={"USER": "alice"},
        )
    )
    add(
        Case(
            id="val-expansion-logname",
            argv=("-P",),
            config=lines("account default", "host mail.example", "from %U+x@example.org"),
            env={"USER": None, "LOGNAME": "bob"},
            expect=("from = bob+x@example.org\n",),
        )
    )
    add(
        Case(
            id="val-unknown-percent",
            argv=("-P",),
            config=lines("account default", "host mail.example", "from me%Z@example.org"),
        )
    )
    for method, shown in (
        ("plain", "PLAIN"),
        ("scram-sha-256", "SCRAM-SHA-256"),
        ("xoauth2", "XOAUTH2"),
        ("on", "choose"),
        ("off", "none"),
    ):
        add(
            Case(
                id=f"auth-{method}",
                argv=("-P",),
                config=simple(f"auth {method}", "user u"),
                expect=(f"auth = {shown}\n",),
            )
        )
    add(
        Case(
            id="auth-upper-invalid",
            argv=("-P",),
            config=simple("auth PLAIN"),
            rc=78,
            expect=("invalid argument PLAIN for command auth",),
        )
    )

    # ---------------------------------------------------------------- errors of §1.2
    add(
        Case(
            id="err-unknown-command",
            argv=("-P",),
            config=lines("account a", "host h.example", "frobnicate yes"),
            rc=78,
            expect=("PROG: $HOME/.msmtprc: line 3: unknown command frobnicate\n",),
        )
    )
    add(
        Case(
            id="err-unknown-command-newer",
            argv=("-P",),
            config=simple("from_full_name Alice"),
            rc=78,
            expect=("unknown command from_full_name",),
        )
    )
    add(
        Case(
            id="err-needs-argument",
            argv=("-P",),
            config=lines("account a", "host"),
            rc=78,
            expect=("line 2: command host needs an argument\n",),
        )
    )
    add(Case(id="val-from-empty", argv=("-P",), config=simple("from"), expect=("from = \n",)))
    add(
        Case(
            id="err-already-defined",
            argv=("-P",),
            config=lines("account a", "host a.example", "account a", "host b.example"),
            rc=78,
            expect=("line 3: account a was already defined\n",),
        )
    )
    add(
        Case(
            id="err-colon-in-name",
            argv=("-P",),
            config=lines("account a,b", "host a.example"),
            rc=78,
            expect=("line 1: an account name must not contain colons or commas\n",),
        )
    )
    add(
        Case(
            id="err-colon-in-list-name",
            argv=("-P",),
            config=lines("account a", "host a.example", "account b : a:c"),
            rc=78,
        )
    )
    add(
        Case(
            id="err-missing-account-name",
            argv=("-P",),
            config=lines("account", "host a.example"),
            rc=78,
            expect=("line 1: missing account name\n",),
        )
    )
    add(
        Case(
            id="err-missing-account-name-colon",
            argv=("-P",),
            config=lines("account a", "host a.example", "account : a"),
            rc=78,
        )
    )
    add(
        Case(
            id="err-empty-account-list",
            argv=("-P",),
            config=lines("account a", "host a.example", "account b :"),
            rc=78,
            expect=("line 3: missing account name\n",),
        )
    )
    add(
        Case(
            id="err-empty-name-in-list",
            argv=("-P",),
            config=lines("account a", "host a.example", "account b : a,"),
            rc=78,
        )
    )
    add(
        Case(
            id="err-defaults-argument",
            argv=("-P",),
            config=lines("defaults tls", "account a", "host a.example"),
            rc=78,
            expect=("line 1: command defaults does not take an argument\n",),
        )
    )
    add(
        Case(
            id="err-first-error-wins",
            argv=("-P",),
            config=lines("account a", "bogus1", "port 0"),
            rc=78,
            expect=("line 2: unknown command bogus1",),
        )
    )
    add(
        Case(
            id="err-in-cfile",
            argv=("-C", "@HOME@/custom.rc", "rcpt@example.org"),
            config=lines("account default", "tls perhaps"),
            config_path=CUSTOM_RC,
            stdin=MESSAGE,
            rc=78,
            expect=("PROG: $HOME/custom.rc: line 2: invalid argument perhaps for command tls\n",),
        )
    )
    add(
        Case(
            id="err-in-xdg",
            argv=("-P",),
            config=lines("account default", "account default"),
            config_path=XDG_RC,
            rc=78,
            expect=("$HOME/.config/msmtp/config: line 2: account default was already defined",),
        )
    )

    # ---------------------------------------------------------------- post-load checks
    add(
        Case(
            id="chk-host-not-set",
            argv=("-P",),
            config=lines("account default", "from me@example.org"),
            rc=78,
            expect=("PROG: account default from $HOME/.msmtprc: host not set\n",),
        )
    )
    add(
        Case(
            id="chk-from-missing-pretend",
            argv=("-P",),
            config=lines("account default", "host mail.example"),
        )
    )
    add(
        Case(
            id="chk-from-missing-send",
            argv=("rcpt@example.org",),
            config=lines("account default", "host 127.0.0.1", "port 1"),
            stdin=MESSAGE,
            rc=78,
            expect=("envelope-from address is missing",),
        )
    )
    add(
        Case(
            id="chk-key-without-cert",
            argv=("-P",),
            config=simple("tls on", "tls_key_file /nonexistent/key.pem"),
            rc=78,
            expect=("tls_key_file requires tls_cert_file",),
        )
    )
    add(
        Case(
            id="chk-cert-without-key",
            argv=("-P",),
            config=simple("tls on", "tls_cert_file /nonexistent/cert.pem"),
            rc=78,
            expect=("tls_cert_file requires tls_key_file",),
        )
    )
    add(
        Case(
            id="chk-tls-empty-trust",
            argv=("-P",),
            config=simple("tls on", "tls_trust_file"),
            rc=78,
            expect=("tls requires either tls_trust_file (highly recommended) or tls_fingerprint",),
        )
    )
    add(
        Case(
            id="chk-tls-empty-trust-fingerprint",
            argv=("-P",),
            config=simple("tls on", "tls_trust_file", f"tls_fingerprint {SHA1_FINGERPRINT}"),
        )
    )
    add(
        Case(
            id="chk-tls-empty-trust-nocheck",
            argv=("-P",),
            config=simple("tls on", "tls_trust_file", "tls_certcheck off"),
        )
    )
    add(
        Case(
            id="chk-crl-without-trust",
            argv=("-P",),
            config=simple("tls on", "tls_trust_file", "tls_certcheck off", "tls_crl_file /x"),
            rc=78,
        )
    )
    add(
        Case(
            id="chk-tls-off-empty-trust",
            argv=("-P",),
            config=simple("tls off", "tls_trust_file"),
            expect=("tls_trust_file = (not set)\n",),
        )
    )

    # ---------------------------------------------------------------- passwords and eval
    add(
        Case(
            id="pw-password-star",
            argv=("-P",),
            config=simple("auth plain", "user u", "password hunter2"),
            expect=("password = *\n",),
        )
    )
    add(
        Case(
            id="pw-passwordeval-run",
            argv=("-P",),
            config=simple("auth on", "user u", "passwordeval echo secret"),
            expect=("passwordeval = echo secret\n",),
        )
    )
    add(
        Case(
            id="pw-passwordeval-exit-status-ignored",
            argv=("-P",),
            config=simple("auth on", "user u", "passwordeval echo secret; exit 3"),
        )
    )
    add(
        Case(
            id="pw-passwordeval-no-output",
            argv=("-P",),
            config=simple("auth on", "user u", "passwordeval true"),
            rc=78,
        )
    )
    add(
        Case(
            id="pw-passwordeval-no-output-send",
            argv=("rcpt@example.org",),
            config=simple("auth on", "user u", "passwordeval printf ''"),
            stdin=MESSAGE,
            rc=78,
            differs=Deliberate(
                "relayd queues first and looks passwords up at delivery (SPEC §2), so a "
                "failing passwordeval holds the message instead of refusing it",
                rc=0,
            ),
        )
    )
    add(
        Case(
            id="pw-passwordeval-auth-off",
            argv=("-P",),
            config=simple("auth off", "passwordeval true"),
        )
    )
    add(
        Case(
            id="pw-passwordeval-with-password",
            argv=("-P",),
            config=simple("auth on", "password pw", "passwordeval false"),
        )
    )
    add(
        Case(
            id="pw-passwordeval-file",
            argv=("-P",),
            config=simple("auth plain", "user u", "passwordeval cat ~/token"),
            files=(ExtraFile("token", "tok\n"),),
        )
    )
    add(
        Case(
            id="pw-passwordeval-cli",
            argv=("-P", "--auth=on", "--user=u", "--passwordeval=echo pw"),
            config=simple(),
        )
    )
    add(
        Case(
            id="eval-host",
            argv=("-P",),
            config=lines(
                "account default", "eval echo host evaluated.example", "from me@x.example"
            ),
            expect=("host = evaluated.example\n",),
        )
    )
    add(
        Case(
            id="eval-first-line-only",
            argv=("-P",),
            config=lines(
                "account default",
                "eval printf 'host first.example\\r\\nhost second.example\\n'",
            ),
            expect=("host = first.example\n",),
        )
    )
    add(
        Case(
            id="eval-account-line",
            argv=("-P", "-a", "ev"),
            config=lines("eval echo account ev", "host ev.example"),
        )
    )
    add(
        Case(
            id="eval-no-output",
            argv=("-P",),
            config=lines("account default", "host mail.example", "eval true"),
            rc=74,
            expect=("cannot read output of 'true'",),
        )
    )
    add(
        Case(
            id="eval-produces-error",
            argv=("-P",),
            config=lines("account default", "eval echo frobnicate"),
            rc=78,
        )
    )
    add(
        Case(
            id="eval-file",
            argv=("-P",),
            config=lines("account default", "eval cat ~/hostline", "from me@example.org"),
            files=(ExtraFile("hostline", "host from-file.example\n"),),
        )
    )

    # ---------------------------------------------------------------- permission checks
    for mode, rc in ((0o600, 0), (0o400, 0), (0o644, 78), (0o640, 78), (0o604, 78), (0o700, 78)):
        add(
            Case(
                id=f"perm-{mode:04o}",
                argv=("-P",),
                config=PERM_RC,
                config_mode=mode,
                unprivileged=True,
                rc=rc,
                expect=(("must have no more than user read/write permissions",) if rc else ()),
            )
        )
    add(
        Case(
            id="perm-0644-send",
            argv=("rcpt@example.org",),
            config=PERM_RC,
            config_mode=0o644,
            unprivileged=True,
            stdin=MESSAGE,
            rc=78,
        )
    )
    add(
        Case(
            id="perm-0644-cfile",
            argv=("-P", "-C", "@HOME@/custom.rc"),
            config=PERM_RC,
            config_path=CUSTOM_RC,
            config_mode=0o644,
            unprivileged=True,
            rc=78,
        )
    )
    add(
        Case(
            id="perm-0644-xdg",
            argv=("-P",),
            config=PERM_RC,
            config_path=XDG_RC,
            config_mode=0o644,
            unprivileged=True,
            rc=78,
        )
    )
    add(
        Case(
            id="perm-0644-passwordeval",
            argv=("-P",),
            config=simple("auth on", "user u", "passwordeval echo pw"),
            config_mode=0o644,
            unprivileged=True,
        )
    )
    add(
        Case(
            id="perm-0644-eval-password",
            argv=("-P",),
            config=simple("auth on", "user u", "eval echo password pw"),
            config_mode=0o644,
            unprivileged=True,
        )
    )
    add(
        Case(
            id="perm-0644-commented-password",
            argv=("-P",),
            config=simple("# password pw", "passwordx"),
            config_mode=0o644,
            unprivileged=True,
            rc=78,
            expect=("unknown command passwordx",),
        )
    )
    add(
        Case(
            id="perm-0644-empty-password",
            argv=("-P",),
            config=simple("password"),
            config_mode=0o644,
            unprivileged=True,
            rc=78,
        )
    )
    add(
        Case(
            id="perm-0644-password-after-error",
            argv=("-P",),
            config=simple("frobnicate", "password pw"),
            config_mode=0o644,
            unprivileged=True,
            rc=78,
        )
    )
    add(
        Case(
            id="perm-0644-host-option",
            argv=("-P", "--host=mail.example"),
            config=PERM_RC,
            config_mode=0o644,
            unprivileged=True,
        )
    )
    add(
        Case(
            id="perm-foreign-owner",
            argv=("-P",),
            config=PERM_RC,
            config_mode=0o644,
            unprivileged=True,
            foreign_owner=True,
            rc=78,
            expect=("contains secrets and therefore must be owned by you",),
        )
    )
    add(
        Case(
            id="perm-0644-as-test-user",
            argv=("-P",),
            config=PERM_RC,
            config_mode=0o644,
            rc=None,
        )
    )

    # ---------------------------------------------------------------- command-line overrides
    add(
        Case(
            id="cli-overrides",
            argv=(
                "-P",
                "-a",
                "work",
                "--port=2525",
                "--tls=off",
                "--auth=plain",
                "--user=bob",
                "--tls-trust-file=",
                "--domain=client.example",
                "--timeout=1",
                "--protocol=lmtp",
                "--logfile=~/x.log",
                "--dsn-notify=failure,delay",
                "-R",
                "hdrs",
                "--set-from-header",
                "--undisclosed-recipients",
            ),
            config=STANDARD,
            expect=("auth = PLAIN\n", "dsn_return = HDRS\n", "timeout = 1 second\n"),
        )
    )
    add(
        Case(
            id="cli-overrides-2",
            argv=(
                "-P",
                "--tls",
                "--tls-starttls=off",
                "--tls-certcheck=off",
                f"--tls-fingerprint={SHA256_FINGERPRINT.lower()}",
                "--tls-priorities=NORMAL",
                "--tls-host-override=h.example",
                "--tls-min-dh-prime-bits=2048",
                "--tls-force-sslv3",
                "--source-ip=127.0.0.3",
                "--proxy-host=127.0.0.1",
                "--proxy-port=1081",
                "--connect-timeout=7",
                "--syslog=LOG_LOCAL3",
                "--logfile-time-format=%s",
                "--set-date-header=off",
                "--set-msgid-header=off",
                "--remove-bcc-headers=off",
                "--dsn-return=full",
                "-N",
                "never",
            ),
            config=simple(),
            expect=(
                "tls_fingerprint = 00:07:0E:15:",
                "dsn_notify = NEVER\n",
                "syslog = LOG_LOCAL3\n",
            ),
        )
    )
    add(
        Case(
            id="cli-overrides-unset",
            argv=(
                "-P",
                "-a",
                "work",
                "--tls=off",
                "--user=",
                "--logfile=",
                "--tls-trust-file=",
                "--auth=",
                "--from=",
            ),
            config=STANDARD,
            expect=("user = (not set)\n", "auth = choose\n", "from = \n"),
        )
    )
    add(
        Case(
            id="cli-empty-trust-file-with-tls",
            argv=("-P", "-a", "work", "--tls-trust-file="),
            config=STANDARD,
            rc=78,
            expect=("PROG: account work from $HOME/.msmtprc: tls requires either tls_trust_file",),
        )
    )
    add(
        Case(
            id="cli-empty-host",
            argv=("-P", "--host=", "--from="),
            expect=("host = \n", "from = \n"),
        )
    )
    add(
        Case(
            id="cli-overrides-optional-args",
            argv=(
                "-P",
                "--auth",
                "--tls",
                "--syslog",
                "--keepbcc",
                "--auto-from",
                "--maildomain=md.example",
                "--add-missing-from-header=off",
                "--add-missing-date-header",
                "--tls-certcheck",
            ),
            config=simple(),
            env={"USER": "carol"},
        )
    )
    add(
        Case(
            id="cli-socket",
            argv=("-P", "--socket=/run/x.sock", "--host=mail.example"),
            expect=("socket = /run/x.sock\n",),
        )
    )
    for option, value in (
        ("--port", "abc"),
        ("--port", "0"),
        ("--port", "65536"),
        ("--timeout", "0"),
        ("--tls", "maybe"),
        ("--auth", "bogus"),
        ("--protocol", "x"),
        ("--dsn-notify", "sometimes"),
        ("--dsn-return", "all"),
        ("--syslog", "LOG_X"),
        ("--set-date-header", "on"),
        ("--proxy-port", "-1"),
    ):
        add(
            Case(
                id=f"cli-invalid{option}={value}",
                argv=("-P", f"{option}={value}"),
                config=simple(),
                rc=64,
                expect=(f"PROG: invalid argument {value} for {option}\n",),
            )
        )
    add(
        Case(
            id="cli-invalid-N",
            argv=("-P", "-N", "bogus"),
            config=simple(),
            rc=64,
        )
    )
    add(
        Case(
            id="cli-invalid-R",
            argv=("-P", "-R", "bogus"),
            config=simple(),
            rc=64,
        )
    )

    # ---------------------------------------------------------------- usage errors
    add(
        Case(
            id="use-host-and-account",
            argv=("-P", "--host=mail.example", "--account=a"),
            rc=64,
            expect=("PROG: cannot use both --host and --account\n",),
        )
    )
    add(
        Case(
            id="use-invalid-short",
            argv=("-P", "-Z"),
            config=simple(),
            rc=64,
            expect=("PROG: invalid option -- 'Z'\n",),
        )
    )
    add(Case(id="use-invalid-short-U", argv=("-U", "x@example.org"), rc=64))
    add(
        Case(
            id="use-unrecognized-long",
            argv=("--frobnicate", "x@example.org"),
            rc=64,
            expect=("PROG: unrecognized option '--frobnicate'\n",),
        )
    )
    add(
        Case(
            id="use-missing-argument-short",
            argv=("-P", "-a"),
            config=simple(),
            rc=64,
            expect=("PROG: option requires an argument -- 'a'\n",),
        )
    )
    add(
        Case(
            id="use-missing-argument-long",
            argv=("-P", "--account"),
            config=simple(),
            rc=64,
            expect=("PROG: option '--account' requires an argument\n",),
        )
    )
    add(
        Case(
            id="use-long-no-argument-allowed",
            argv=("--pretend=yes",),
            config=simple(),
            rc=64,
            expect=("PROG: option '--pretend' doesn't allow an argument\n",),
        )
    )
    add(
        Case(
            id="use-long-abbreviation",
            argv=("--pre", "--acc", "a"),
            config=simple(),
            expect=("using account a from",),
        )
    )
    add(
        Case(
            id="use-long-ambiguous",
            argv=("-P", "--tls-c=off"),
            config=simple(),
            rc=64,
            expect=("is ambiguous",),
        )
    )
    add(
        Case(
            id="use-serverinfo-recipients",
            argv=("--serverinfo", "x@example.org"),
            config=simple(),
            rc=64,
            expect=("PROG: too many arguments\n",),
        )
    )
    add(
        Case(
            id="use-rmqs-recipients",
            argv=("--rmqs=@example.org", "x@example.org"),
            config=simple(),
            rc=64,
            expect=("too many arguments",),
        )
    )
    add(Case(id="use-unsupported-mode", argv=("-bz", "x@example.org"), rc=64))
    add(Case(id="use-invalid-before-config-error", argv=("-Z",), config="bogus\n", rc=64))
    add(
        Case(
            id="use-end-of-options",
            argv=("-P", "-a", "a", "--", "-Z", "--account=x"),
            config=simple(),
            expect=("using account a from",),
        )
    )
    add(
        Case(
            id="use-permutation",
            argv=("x@example.org", "-P", "y@example.org", "--account=a", "-t"),
            config=simple(),
            stdin=MESSAGE,
            expect=("using account a from", "and the mail\n"),
        )
    )
    add(
        Case(
            id="use-combined-short",
            argv=("-tPi", "-awork"),
            config=STANDARD,
            stdin=MESSAGE,
            expect=("using account work from",),
        )
    )
    add(
        Case(
            id="use-ignored-sendmail-options",
            argv=("-P", *IGNORED_OPTIONS, "-F", "Alice Example", "x@example.org"),
            config=simple(),
            stdin=MESSAGE,
        )
    )
    add(
        Case(
            id="use-ignored-options-no-recipients",
            argv=(*IGNORED_OPTIONS, "-a", "a"),
            config=simple(),
            stdin=MESSAGE,
            rc=64,
            expect=("no recipients found",),
        )
    )
    add(Case(id="use-bm-pretend", argv=("-bm", "-P", "x@example.org"), config=simple()))
    add(
        Case(
            id="use-pretend-serverinfo",
            argv=("-P", "--serverinfo"),
            config=simple(),
        )
    )
    add(
        Case(
            id="use-pretend-rmqs",
            argv=("-P", "--rmqs=#queue"),
            config=simple(),
            expect=("RMQS argument = #queue\n",),
        )
    )
    add(
        Case(
            id="use-from-empty",
            argv=("-P", "-f", "<>", "x@example.org"),
            config=simple(),
        )
    )
    add(
        Case(
            id="use-from-mailer-daemon",
            argv=("-P", "--from=MAILER-DAEMON"),
            config=simple(),
        )
    )

    # ---------------------------------------------------------------- debug output on error paths
    add(
        Case(
            id="dbg-account-missing",
            argv=("-d", "-a", "nope", "x@example.org"),
            config=simple(),
            stdin=MESSAGE,
            rc=78,
            expect=("loaded user configuration file",),
        )
    )
    add(
        Case(
            id="dbg-from-missing",
            argv=("--debug", "x@example.org"),
            config=lines("account default", "host 127.0.0.1", "port 1"),
            stdin=MESSAGE,
            rc=78,
            expect=("envelope-from address is missing",),
        )
    )
    add(Case(id="dbg-v-pretend", argv=("-v", "-P"), config=simple()))

    # ---------------------------------------------------------------- aliases
    add(
        Case(
            id="alias-missing-file",
            argv=("-P", "root"),
            config=simple("aliases ~/nope"),
            rc=78,
            expect=("PROG: $HOME/nope: No such file or directory\n",),
        )
    )
    add(
        Case(
            id="alias-missing-file-unused",
            argv=("-P", "root@example.org"),
            config=simple("aliases ~/nope"),
        )
    )
    add(
        Case(
            id="alias-loop",
            argv=("-P", "root"),
            config=simple("aliases ~/aliases"),
            files=(ExtraFile("aliases", "root: root\n"),),
            rc=78,
        )
    )
    add(
        Case(
            id="alias-expanded-pretend",
            argv=("-P", "root", "other"),
            config=simple("aliases ~/aliases"),
            files=(ExtraFile("aliases", "# comment\nroot: a@example.org, b@example.org\n"),),
        )
    )
    return c


CASES: tuple[Case, ...] = tuple(_cases())
