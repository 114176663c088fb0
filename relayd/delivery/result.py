"""What a delivery attempt produced: replies, events, per-recipient outcomes, exit code."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from relayd.sysexits import ExitCode

# RFC 3463's class.subject.detail at the start of a reply line (also read by the bounces).
ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: the code, the enhanced status code if the text starts with one, the lines."""

    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str | None:
        """`5.1.1` from `550 5.1.1 user unknown`, if present."""
        match = ENHANCED_STATUS.match(self.lines[0]) if self.lines else None
        return match.group(0) if match else None

    @property
    def text(self) -> str:
        """The reply lines without the code, joined by newlines."""
        return "\n".join(self.lines)

    def wire_lines(self) -> list[str]:
        """The reply as the server sent it: `550-first`, `550 last`."""
        last = len(self.lines) - 1
        return [
            f"{self.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(self.lines)
        ]


class Disposition(enum.Enum):
    """What relayd does with a message (or a recipient) after an attempt (SPEC §4)."""

    SENT = "sent"
    RETRY = "retry"  # temporary: try again later
    FAIL = "fail"  # permanent: give up (bounce if configured)
    HOLD = "hold"  # only the user can fix it (auth, certificate, missing TLS/AUTH, password)


class Event(enum.Enum):
    """Everything that can go wrong on the way to the server, in the order it can happen
    (classify.RULES gives each its exit code, text and disposition)."""

    AUTH_NOT_COMPILED_IN = enum.auto()
    TLS_TRUST_FILE = enum.auto()
    TLS_CRL_FILE = enum.auto()
    TLS_KEY_FILE = enum.auto()
    HOST_NOT_FOUND = enum.auto()
    SOCKET = enum.auto()
    BIND = enum.auto()
    CONNECT = enum.auto()
    PROXY = enum.auto()
    READ = enum.auto()
    WRITE = enum.auto()
    EMPTY_REPLY = enum.auto()
    INVALID_REPLY = enum.auto()
    LONG_REPLY = enum.auto()
    TLS_HANDSHAKE = enum.auto()
    TLS_CERTIFICATE = enum.auto()
    GREETING = enum.auto()
    HELO = enum.auto()
    LHLO = enum.auto()
    NO_STARTTLS = enum.auto()
    STARTTLS = enum.auto()
    NO_DSN = enum.auto()
    NO_AUTH = enum.auto()
    AUTH_METHOD_NOT_OFFERED = enum.auto()
    AUTH_NO_SECURE_METHOD = enum.auto()
    AUTH_NO_USABLE_METHOD = enum.auto()
    AUTH_NO_USER = enum.auto()
    AUTH_NO_PASSWORD = enum.auto()
    PASSWORD_LOOKUP = enum.auto()
    PASSWORD_UNAVAILABLE = enum.auto()  # for now: an OAuth2 token endpoint that is down
    AUTH_BAD_CHALLENGE = enum.auto()
    AUTH_REJECTED = enum.auto()
    COMMAND_TOO_LONG = enum.auto()
    SIZE_EXCEEDED = enum.auto()
    NO_SMTPUTF8 = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    END = enum.auto()
    LMTP_RECIPIENT = enum.auto()
    RSET = enum.auto()
    NO_ETRN = enum.auto()
    ETRN_UNABLE = enum.auto()
    ETRN_INVALID = enum.auto()
    ETRN = enum.auto()


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's outcome in an attempt: for a failure, also the event that decided it
    (what to go by: `error` is only its text)."""

    address: str
    disposition: Disposition
    reply: Reply | None = None
    error: str | None = None  # msmtp's text for this recipient's failure, e.g. LMTP's refusal
    event: Event | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one message's attempt.

    `disposition` and `exit_code` describe the message as a whole (the exit code is the one
    msmtp gives for the same event, msmtp.md §3); `error` is msmtp's error text (`errormsg=` in
    the log), `reply` the deciding server reply. `recipients` has one entry per envelope
    recipient, in order: with a 5xx to one RCPT that one is FAIL while the others are SENT.
    """

    disposition: Disposition
    exit_code: ExitCode
    error: str | None = None
    reply: Reply | None = None
    recipients: tuple[RecipientResult, ...] = field(default_factory=tuple)
    # The connection broke after the final dot before the reply: the server may have the mail.
    possibly_delivered: bool = False
    # No server was reached (host not found, connect refused or timed out, unreachable): the
    # network may be down; such a failure is retried when it comes back (SPEC §4).
    network: bool = False
    # A reply said the provider limits this account's rate (classify.RATE_LIMITS): the whole
    # account pauses (SPEC §8).
    rate_limited: bool = False
