"""A resolved sendmail invocation → one durably queued message (exit 0 only after commit)."""

from __future__ import annotations

import os
import pwd  # a builtin C module: nothing to load on the hot path
from collections.abc import Sequence

from relayd import paths, settings_hot
from relayd.accounts.account import Account
from relayd.errors import ConfigError, DataError, UsageError
from relayd.store import fastpath, location
from relayd.store.records import NewMessage
from relayd.submission import message
from relayd.submission.addresses import has_undecodable, shown
from relayd.submission.cmdline import Delivery, Invocation
from relayd.submission.headers import HeaderScan

TYPE_CHECKING = False  # typing costs milliseconds on the sendmail hot path
if TYPE_CHECKING:
    from typing import BinaryIO


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
) -> NewMessage:
    """Check the envelope and make the exact wire bytes, as msmtp would before sending."""
    _check_storable(inv, account)
    envelope_from = account.from_ or ""
    message.check_address(envelope_from, allow_empty=True)
    for recipient in recipients:
        message.check_address(recipient)
    sender = message.smtp_reverse_path(envelope_from)
    wire = message.build_message(
        data,
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
    uid = os.getuid()
    return NewMessage(
        account=account.id or "",
        overrides=stored_overrides(inv, account),
        sender=sender,
        recipients=tuple(recipients),
        data=wire,  # the bytearray itself: a copy would double a large message's memory
        smtputf8=message.needs_smtputf8([sender, *recipients]),
        eightbit=message.is_eightbit(wire),
        # Only a -C file is recorded: without one, delivery reads the default files again.
        config_file=os.path.abspath(inv.conffile) if inv.conffile else None,
        uid=uid,
        user=user_name(uid),
    )


# `messages.submitted_user` is VARCHAR(64): PostgreSQL refuses a longer value.
_USER_MAX = 64


def user_name(uid: int) -> str | None:
    """The password database's name of `uid`; None when it has no entry, or a name the queue
    cannot keep as text (not UTF-8, longer than 64 characters): the uid alone is recorded."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    if len(name) > _USER_MAX or has_undecodable(name):
        return None
    return name


def max_size() -> int:
    """`[submit] max_size` (through `settings_hot`: the hot path reads relayd.toml once)."""
    limit = settings_hot.load().max_size
    return paths.DEFAULT_MAX_SIZE if limit is None else limit


def too_big(limit: int) -> DataError:
    """The one-line refusal of a message over `[submit] max_size` (65, SMTP's 552)."""
    return DataError(f"message too big: more than {limit} bytes ([submit] max_size)")


def read_message(stream: BinaryIO, limit: int) -> bytes:
    """The message from `stream`, refused (65) past `limit` bytes without reading it all."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise too_big(limit)
    return data


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
    queue_id = fastpath.submit(location.database_url(), new, now, timeout=fastpath.lock_timeout())
    if inv.delivery is Delivery.BACKGROUND:  # -odi delivers it itself, -odq leaves it
        fastpath.wake(paths.wake_socket())
    return queue_id
