"""relayd-sendmail's command line: msmtp 1.8.23's options plus the sendmail modes relayd adds."""

from __future__ import annotations

from relayd.accounts.account import Account
from relayd.accounts.options import ACCOUNT_OPTIONS, apply_account_option
from relayd.errors import UsageError
from relayd.submission.getopt import Arg, Named, Parsed, getopt_long, parse_short_spec

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import ClassVar

# msmtp's getopt string, plus -q[interval] (flush the queue), which relayd adds.
SHORT_OPTIONS = parse_short_spec("Pd::SC:a:f:N:R:X:tA:B:b:F:Gh:iL:mnO:o:vq::")

# In msmtp's order (glibc lists ambiguous matches in this order).
LONG_OPTIONS: dict[str, Arg] = {
    "version": Arg.NONE,
    "help": Arg.NONE,
    "configure": Arg.REQUIRED,
    "pretend": Arg.NONE,
    "debug": Arg.OPTIONAL,
    "serverinfo": Arg.NONE,
    "rmqs": Arg.REQUIRED,
    "file": Arg.REQUIRED,
    "account": Arg.REQUIRED,
    "host": Arg.REQUIRED,
    "port": Arg.REQUIRED,
    "timeout": Arg.REQUIRED,
    "connect-timeout": Arg.REQUIRED,
    "protocol": Arg.REQUIRED,
    "domain": Arg.REQUIRED,
    "auth": Arg.OPTIONAL,
    "user": Arg.REQUIRED,
    "passwordeval": Arg.REQUIRED,
    "tls": Arg.OPTIONAL,
    "tls-starttls": Arg.OPTIONAL,
    "tls-trust-file": Arg.REQUIRED,
    "tls-crl-file": Arg.REQUIRED,
    "tls-fingerprint": Arg.REQUIRED,
    "tls-key-file": Arg.REQUIRED,
    "tls-cert-file": Arg.REQUIRED,
    "tls-certcheck": Arg.OPTIONAL,
    "tls-force-sslv3": Arg.OPTIONAL,
    "tls-min-dh-prime-bits": Arg.REQUIRED,
    "tls-priorities": Arg.REQUIRED,
    "tls-host-override": Arg.REQUIRED,
    "from": Arg.REQUIRED,
    "auto-from": Arg.OPTIONAL,
    "maildomain": Arg.REQUIRED,
    "dsn-notify": Arg.REQUIRED,
    "dsn-return": Arg.REQUIRED,
    "keepbcc": Arg.OPTIONAL,
    "logfile": Arg.REQUIRED,
    "logfile-time-format": Arg.REQUIRED,
    "syslog": Arg.OPTIONAL,
    "aliases": Arg.REQUIRED,
    "proxy-host": Arg.REQUIRED,
    "proxy-port": Arg.REQUIRED,
    "add-missing-from-header": Arg.OPTIONAL,
    "add-missing-date-header": Arg.OPTIONAL,
    "set-from-header": Arg.OPTIONAL,
    "set-date-header": Arg.OPTIONAL,
    "set-msgid-header": Arg.OPTIONAL,
    "remove-bcc-headers": Arg.OPTIONAL,
    "undisclosed-recipients": Arg.OPTIONAL,
    "source-ip": Arg.REQUIRED,
    "socket": Arg.REQUIRED,
    "read-recipients": Arg.NONE,
    "read-envelope-from": Arg.NONE,
}

_SHORT_ALIASES = {
    "-P": "--pretend",
    "-d": "--debug",
    "-v": "--debug",
    "-S": "--serverinfo",
    "-C": "--file",
    "-a": "--account",
    "-f": "--from",
    "-N": "--dsn-notify",
    "-R": "--dsn-return",
    "-X": "--logfile",
    "-t": "--read-recipients",
}
_IGNORED_SHORT = frozenset(["-A", "-B", "-G", "-h", "-i", "-L", "-m", "-n", "-O"])


class Mode(Named):
    """What relayd-sendmail was asked to do."""

    __slots__ = ()
    SEND: ClassVar[Mode]  # store the message (sendmail's -bm, the default)
    VERSION: ClassVar[Mode]
    HELP: ClassVar[Mode]
    SERVERINFO: ClassVar[Mode]
    RMQS: ClassVar[Mode]
    CONFIGURE: ClassVar[Mode]
    LIST_QUEUE: ClassVar[Mode]  # -bp, mailq
    FLUSH: ClassVar[Mode]  # -q
    SMTP: ClassVar[Mode]  # -bs


Mode.SEND = Mode("send")
Mode.VERSION = Mode("version")
Mode.HELP = Mode("help")
Mode.SERVERINFO = Mode("serverinfo")
Mode.RMQS = Mode("rmqs")
Mode.CONFIGURE = Mode("configure")
Mode.LIST_QUEUE = Mode("list-queue")
Mode.FLUSH = Mode("flush")
Mode.SMTP = Mode("smtp")


class Delivery(Named):
    """sendmail's -od delivery modes."""

    __slots__ = ()
    BACKGROUND: ClassVar[Delivery]  # store, wake the daemon (default)
    QUEUE: ClassVar[Delivery]  # store only (-odq)
    INTERACTIVE: ClassVar[Delivery]  # deliver now in this process (-odi)


Delivery.BACKGROUND = Delivery("b")
Delivery.QUEUE = Delivery("q")
Delivery.INTERACTIVE = Delivery("i")


class Invocation:
    """The parsed command line (a plain class: `dataclasses` is slow to import)."""

    def __init__(self) -> None:
        self.mode = Mode.SEND
        self.pretend = False
        self.debug = False
        self.delivery = Delivery.BACKGROUND
        self.conffile: str | None = None
        self.account_id: str | None = None
        self.envelope_from: str | None = None
        self.read_envelope_from = False
        self.read_recipients = False
        self.full_name: str | None = None
        self.rmqs: str | None = None
        self.configure: str | None = None
        self.recipients: list[str] = []
        # The account built from command-line options, and those options as given.
        self.cmdline = Account(id=None, conffile=None)
        self.overrides: list[tuple[str, str | None]] = []
        self.argv: list[str] = []  # the arguments as given (the host daemon parses them again)

    @property
    def host_given(self) -> bool:
        """--host builds an account from the command line alone."""
        return "host" in self.cmdline.mask


def parse(argv: Sequence[str]) -> Invocation:
    """Parse relayd-sendmail's arguments (without argv[0]); UsageError (64) on any problem."""
    inv = Invocation()
    inv.argv = list(argv)
    for opt in getopt_long(argv, SHORT_OPTIONS, LONG_OPTIONS):
        if opt.name == "":
            inv.recipients.append(opt.value or "")
        else:
            _apply(inv, opt)
    if inv.host_given and inv.account_id is not None:
        raise UsageError("cannot use both --host and --account")
    if inv.envelope_from is not None and inv.read_envelope_from:
        raise UsageError("cannot use both --from and --read-envelope-from")
    if inv.mode in (Mode.SERVERINFO, Mode.RMQS) and inv.recipients:
        raise UsageError("too many arguments")
    return inv


def _apply(inv: Invocation, opt: Parsed) -> None:
    name = _SHORT_ALIASES.get(opt.name, opt.name)
    value = opt.value
    if name.startswith("--") and name[2:] in ACCOUNT_OPTIONS:
        apply_account_option(inv.cmdline, name[2:], value)
        inv.overrides.append((name[2:], value))
    elif name in _IGNORED_SHORT or name == "--tls-force-sslv3":
        pass
    elif name == "-o":
        _sendmail_o(inv, value or "")
    elif name == "-b":
        _sendmail_b(inv, value or "")
    elif name == "-q":
        inv.mode = Mode.FLUSH
    elif name == "-F":
        inv.full_name = value
    else:
        _apply_general(inv, name, value)


def _apply_general(inv: Invocation, name: str, value: str | None) -> None:
    if name == "--version":
        inv.mode = Mode.VERSION
    elif name == "--help":
        inv.mode = Mode.HELP
    elif name == "--pretend":
        inv.pretend = True
    elif name == "--debug":
        inv.debug = True
    elif name == "--serverinfo":
        inv.mode = Mode.SERVERINFO
    elif name == "--rmqs":
        inv.mode, inv.rmqs = Mode.RMQS, value
    elif name == "--configure":
        inv.mode, inv.configure = Mode.CONFIGURE, value
    elif name == "--file":
        inv.conffile = value
    elif name == "--account":
        inv.account_id = value
    elif name == "--from":
        inv.envelope_from = "" if value == "<>" else value
    elif name == "--read-recipients":
        inv.read_recipients = True
    elif name == "--read-envelope-from":
        inv.read_envelope_from = True
    else:  # pragma: no cover - every table entry is handled above
        raise AssertionError(name)


def _sendmail_o(inv: Invocation, value: str) -> None:
    """-oXXX: msmtp ignores them all; relayd honours -odq and -odi (and -odb/-odd)."""
    if value.startswith("d") and len(value) >= 2:
        mode = {"q": Delivery.QUEUE, "i": Delivery.INTERACTIVE}.get(value[1])
        inv.delivery = mode or Delivery.BACKGROUND


def _sendmail_b(inv: Invocation, value: str) -> None:
    """-bX operation modes: m (send), p (list the queue), s (SMTP on stdin/stdout)."""
    modes = {"m": Mode.SEND, "p": Mode.LIST_QUEUE, "s": Mode.SMTP}
    if value not in modes:
        raise UsageError(f"unsupported operation mode b{value}")
    if modes[value] is not Mode.SEND:
        inv.mode = modes[value]
