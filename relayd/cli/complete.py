"""Shell completion of queue ids and account names (typer's autocompletion callbacks).

A completion runs at every TAB: it reads the queue read-only and the msmtprc's `account` lines
(never running an `eval`), and any failure completes nothing rather than printing an error into
the user's command line. Imported by the command modules, so nothing heavy at the top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import typer

from relayd.errors import RelaydError
from relayd.store.records import State

if TYPE_CHECKING:
    from relayd.store.sql import SqlStore

LIMIT = 100  # ids offered at once; type more of the id to narrow it down


def _from_queue(read: Callable[[SqlStore], list[str]]) -> list[str]:
    from relayd import settings
    from relayd.store import fastpath
    from relayd.store.sql import SqlStore

    try:
        store = SqlStore.open_reading(settings.load().database, timeout=fastpath.lock_timeout())
        if store is None:
            return []
        with store:
            return read(store)
    except (RelaydError, OSError):
        return []


def queue_ids(incomplete: str, states: Sequence[State] = ()) -> list[str]:
    """Queue ids starting with `incomplete` (any case), in `states` when given."""
    from relayd.store import reports

    prefix = incomplete.upper()
    return _from_queue(lambda store: reports.queue_ids_from(store, prefix, states, LIMIT))


def any_id(incomplete: str) -> list[str]:
    """Every message's id: for show, log and delete."""
    return queue_ids(incomplete)


def queued_id(incomplete: str) -> list[str]:
    """Ids of queued mail: for flush."""
    return queue_ids(incomplete, (State.QUEUED,))


def holdable_id(incomplete: str) -> list[str]:
    """Ids of mail not yet handled: for hold (a message being sent is held after its attempt)."""
    return queue_ids(incomplete, (State.QUEUED, State.SENDING))


def held_id(incomplete: str) -> list[str]:
    """Ids of held mail: for release."""
    return queue_ids(incomplete, (State.HELD,))


def msmtprc_accounts() -> list[str]:
    """The names the `account` lines of the user's and the system msmtprc define, in order."""
    from relayd.accounts import files, msmtprc

    names: list[str] = []
    for path in (files.user_file(), files.system_file()):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        for raw in data.decode("utf-8", "surrogateescape").split("\n"):
            command, argument = msmtprc.split_line(raw)
            name = argument.partition(":")[0].strip()
            if command == "account" and name and name not in names:
                names.append(name)
    return names


def account_name(incomplete: str) -> list[str]:
    """Accounts of the msmtprc, then those with mail in the queue, that start with `incomplete`."""
    from relayd.store import reports

    names = msmtprc_accounts()
    names += [a for a in _from_queue(reports.account_names) if a not in names]
    return [name for name in names if name.startswith(incomplete)]


# `--account ACCOUNT` of the queue commands that take one, completed with `account_name`
ACCOUNT_OPTION = typer.Option(
    "--account", "-a", metavar="ACCOUNT", help="Only this account's.", autocompletion=account_name
)
