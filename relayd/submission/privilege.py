"""What a user may ask of the host daemon through the submit socket: refused and ignored options.

The daemon runs nothing and reads nothing on a submitter's behalf, and the host's accounts keep
the settings the administrator gave them: options that name a command or a file, or that change
where and how the host's accounts connect and authenticate, are refused with exit 77; options
that only concern the caller's own logging are dropped with a warning (msmtp callers pass them
out of habit). What is left chooses among the host's accounts (`-a`, `-f`) and shapes the
envelope and headers, as for any sendmail.
"""

from __future__ import annotations

from relayd.errors import RelaydError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # the sendmail hot path
if TYPE_CHECKING:
    from relayd.submission.cmdline import Invocation

# Account options a socket submission refuses: commands, files, and the connection itself.
REFUSED = frozenset(
    [
        "passwordeval",
        "aliases",
        "tls-trust-file",
        "tls-crl-file",
        "tls-key-file",
        "tls-cert-file",
        "socket",
        "host",
        "port",
        "proxy-host",
        "proxy-port",
        "source-ip",
        "protocol",
        "domain",
        "timeout",
        "connect-timeout",
        "auth",
        "user",
        "tls",
        "tls-starttls",
        "tls-fingerprint",
        "tls-certcheck",
        "tls-min-dh-prime-bits",
        "tls-priorities",
        "tls-host-override",
    ]
)
# Account options dropped with a warning: the host's log settings are the administrator's.
IGNORED = frozenset(["logfile", "logfile-time-format", "syslog"])


class NotPermitted(RelaydError):
    """A socket submission asked for something only the host's administrator may set (77)."""

    default_code = ExitCode.NOPERM


def screen(inv: Invocation) -> list[str]:
    """Refuse what `inv` may not ask of the host daemon (NotPermitted); drop what is ignored
    from `inv` (its overrides and command-line account) and return one warning for each."""
    if inv.conffile is not None:
        raise NotPermitted("-C/--file: the host's relayd reads only its own msmtp configuration")
    for option, _value in inv.overrides:
        if option in REFUSED:
            raise NotPermitted(
                f"--{option}: only the host's administrator sets this for the host's accounts"
            )
    warnings = [
        f"--{option} ignored: the host's relayd logs as its administrator configured"
        for option in dict.fromkeys(o for o, _ in inv.overrides if o in IGNORED)
    ]
    if warnings:
        from relayd.accounts.options import replay_overrides

        inv.overrides = [(o, v) for o, v in inv.overrides if o not in IGNORED]
        inv.cmdline = replay_overrides(inv.overrides)
    if inv.debug:
        warnings.append("--debug ignored: the host's relayd does the work")
        inv.debug = False
    from relayd.submission.cmdline import Delivery

    if inv.delivery is Delivery.INTERACTIVE:
        warnings.append("-odi ignored: the host's relayd delivers the mail in the background")
        inv.delivery = Delivery.BACKGROUND
    return warnings
