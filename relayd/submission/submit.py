"""A resolved sendmail invocation → one durably queued message (exit 0 only after commit)."""

from __future__ import annotations

import os
import pwd  # a builtin C module: nothing to load on the hot path
import time  # loaded at start-up already (zipimport)

from relayd import paths, settings_hot
from relayd.accounts.account import Account
from relayd.errors import ConfigError, DataError, RelaydError, UsageError
from relayd.store import BODY_CHUNK, location
from relayd.store.submitted import NewMessage
from relayd.submission import message
from relayd.submission.addresses import has_undecodable, shown
from relayd.submission.cmdline import Delivery, Invocation
from relayd.submission.headers import HeaderScan
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # collections.abc would load `collections` on the hot path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence


def stored_overrides(inv: Invocation, account: Account) -> tuple[tuple[str, str | None], ...]:
    """The command-line options to replay at delivery; an account built from the environment
    (EMAIL/SMTPSERVER) is recorded as its --host, since the daemon does not see that environment."""
    overrides = list(inv.overrides)
    if account.id is None and not inv.host_given and account.host is not None:
        overrides.insert(0, ("host", account.host))
    return tuple(overrides)


def build(
    inv: Invocation,
    account: Account,
    data: bytes,
    scan: HeaderScan,
    recipients: Sequence[str],
    now: float,
    rest: Iterable[bytes] | None = None,
) -> NewMessage:
    """Check the envelope and make the exact wire bytes, as msmtp would before sending: the
    message is `data` (its head, at least the header block) and then `rest`, which is read
    only as the store writes the body (once). Without `rest`, `data` is the whole message and
    the result holds its wire bytes (a NewMessage that can be stored more than once)."""
    _check_storable(inv, account)
    envelope_from = account.from_ or ""
    message.check_address(envelope_from, allow_empty=True)
    for recipient in recipients:
        message.check_address(recipient)
    sender = message.smtp_reverse_path(envelope_from)
    wire = message.wire_chunks(
        data,
        () if rest is None else rest,
        scan,
        envelope_from=envelope_from,
        full_name=inv.full_name,
        set_from_header=account.set_from_header,  # type: ignore[arg-type]
        set_date_header=account.set_date_header,  # type: ignore[arg-type]
        set_msgid_header=account.set_msgid_header,  # type: ignore[arg-type]
        remove_bcc_headers=account.remove_bcc_headers,
        undisclosed_recipients=account.undisclosed_recipients,
        now=now,
        hostname=message.canonical_hostname,
    )
    whole = None
    if rest is None:
        whole = bytearray()
        for piece in wire:
            whole += piece
    uid = os.getuid()
    return NewMessage(
        account=account.id or "",
        overrides=stored_overrides(inv, account),
        sender=sender,
        recipients=tuple(recipients),
        data=b"" if whole is None else whole,
        body=wire if whole is None else None,  # converted while the store writes it
        smtputf8=message.needs_smtputf8([sender, *recipients]),
        eightbit=whole is not None and message.is_eightbit(whole),
        # Only a -C file is recorded: without one, delivery reads the default files again.
        config_file=os.path.abspath(inv.conffile) if inv.conffile else None,
        uid=uid,
        user=user_name(uid),
    )


# `messages.submitted_user` is VARCHAR(64): PostgreSQL refuses a longer value.
_USER_MAX = 64


# Names looked up by a long-lived process (the SMTP listener stores many messages a second,
# each with its uid's name): uid -> (when, name), read again after _NAME_SECONDS.
_names: dict[int, tuple[float, str | None]] = {}
_NAME_SECONDS = 60.0


def user_name(uid: int) -> str | None:
    """The password database's name of `uid`; None when it has no entry, or a name the queue
    cannot keep as text (not UTF-8, longer than 64 characters): the uid alone is recorded."""
    now = time.monotonic()
    kept = _names.get(uid)
    if kept is not None and now - kept[0] < _NAME_SECONDS:
        return kept[1]
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    if name is not None and (len(name) > _USER_MAX or has_undecodable(name)):
        name = None
    _names[uid] = (now, name)
    return name


def max_size() -> int:
    """`[submit] max_size` (through `settings_hot`: the hot path reads relayd.toml once)."""
    limit = settings_hot.load().max_size
    return paths.DEFAULT_MAX_SIZE if limit is None else limit


def too_big(limit: int) -> DataError:
    """The one-line refusal of a message over `[submit] max_size` (65, SMTP's 552)."""
    return DataError(f"message too big: more than {limit} bytes ([submit] max_size)")


def read_stdin(size: int) -> bytes:
    """Up to `size` bytes of standard input (b"" at its end); a read error is one line, 74."""
    try:
        return os.read(0, size)
    except OSError as exc:
        raise RelaydError(
            f"cannot read the mail from standard input: {exc.strerror}", ExitCode.IOERR
        ) from None


def _header_ended(head: bytearray, start: int) -> bool:
    """Whether `head` has, in a line from `start` (a line start) on, the empty line (CRs
    aside) that ends a header block as msmtp's reader sees it. (No regex: compiling one costs
    the hot path 0.3 M instructions.)"""
    while (newline := head.find(b"\n", start)) >= 0:
        if head.count(b"\r", start, newline) == newline - start:
            return True
        start = newline + 1
    return False


class Input:
    """A message read from `read` (like os.read) in blocks of BODY_CHUNK: first its head, which
    holds the header block whole, then the rest as it is needed. More than `limit` bytes is a
    refusal (65) as soon as they are read, before the rest is read or anything is stored."""

    def __init__(self, read: Callable[[int], bytes], limit: int) -> None:
        self._read, self.limit, self.size, self._ended = read, limit, 0, False

    def _block(self) -> bytes:
        block = self._read(BODY_CHUNK)
        self.size += len(block)
        if self.size > self.limit:
            raise too_big(self.limit)
        self._ended = not block
        return block

    def head(self) -> bytes:
        """The input up to the end of its header block or more (all of it when it has none)."""
        head = bytearray()
        while not self._ended:
            line_start = head.rfind(b"\n") + 1  # a CR-only line may still get its LF
            head += self._block()
            if _header_ended(head, line_start):
                break
        return bytes(head)

    def rest(self) -> Iterator[bytes]:
        """The input after the head, block by block (once)."""
        while not self._ended:
            block = self._block()
            if block:
                yield block


def _check_storable(inv: Invocation, account: Account) -> None:
    """The queue keeps the account's name and the -C file's name as text: refuse bytes that
    are not UTF-8 there in one line (msmtp itself would use them as they are)."""
    if account.id is not None and has_undecodable(account.id):
        raise ConfigError(
            f"account name {shown(account.id)} is not valid UTF-8; relayd cannot queue mail"
            " for it (rename the account)"
        )
    if inv.conffile and has_undecodable(os.path.abspath(inv.conffile)):
        raise UsageError(
            f"configuration file name {shown(inv.conffile)} is not valid UTF-8; relayd cannot"
            " queue mail with it (rename the file)"
        )


def store(inv: Invocation, new: NewMessage, now: float) -> str:
    """Store the message durably and wake the daemon (-odb, the default); return the queue id."""
    # Here, not at the top: the SMTP listener and the submit socket's server compose with this
    # module and store through their own store.
    from relayd.store import fastpath

    queue_id = fastpath.submit(location.database_url(), new, now, timeout=fastpath.lock_timeout())
    if inv.delivery is Delivery.BACKGROUND:  # -odi delivers it itself, -odq leaves it
        fastpath.wake(paths.wake_socket())
    return queue_id
