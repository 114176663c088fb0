"""Queue records from plain row tuples, on any driver's rows: no SQLAlchemy, so readers on
stdlib sqlite3 (`queue show`, `store/sqlite_reader.py`) build the same records as SqlStore."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relayd.store.queued import Attempt, QueuedMessage, Recipient, RecipientState, State

# The `messages` columns of a record without its body, in the order `message_from_row` unpacks
# (`rows.SUMMARY` selects these). Overrides come back raw: most are "[]", not worth a json.loads.
SUMMARY_COLUMNS = (
    "id",
    "queue_id",
    "state",
    "account",
    "overrides",
    "config_file",
    "sender",
    "size",
    "needs_smtputf8",
    "needs_8bitmime",
    "created_at",
    "next_attempt_at",
    "lease_until",
    "lease_owner",
    "attempts",
    "reason",
    "submitted_uid",
    "submitted_user",
    "last_attempt_at",
    "network_failure",
    "lease_lost",
    "delay_notified",
)
# The `recipients` columns in the order `recipient_from_row` unpacks.
RECIPIENT_COLUMNS = ("message_id", "position", "address", "state", "reply_code", "reply_text")
# The `attempts` columns `attempt_from_row` reads (by name).
ATTEMPT_COLUMNS = (
    "started_at",
    "duration",
    "host",
    "tls",
    "auth",
    "exit_code",
    "reply_code",
    "reply",
    "recipient_replies",
    "possible_duplicate",
    "note",
)
# Enum lookups by value through a dict: State(value) is several times slower.
_STATES = {state.value: state for state in State}
_RECIPIENT_STATES = {state.value: state for state in RecipientState}


def _json(raw: Any) -> Any:
    """A JSON column's value: text from sqlite3, already parsed from SQLAlchemy or psycopg."""
    return json.loads(raw) if isinstance(raw, str) else raw


def _overrides(raw: Any) -> tuple[tuple[str, str | None], ...]:
    if raw == "[]" or not raw:
        return ()
    pairs = _json(raw)
    return tuple((str(option), None if value is None else str(value)) for option, value in pairs)


def recipient_from_row(row: Sequence[Any]) -> Recipient:
    _message_id, position, address, state, code, text = row
    return Recipient(position, address, _RECIPIENT_STATES[state], code, text)


def message_from_row(row: Sequence[Any], recipients: tuple[Recipient, ...]) -> QueuedMessage:
    (
        _id,
        queue_id,
        state,
        account,
        overrides,
        config_file,
        sender,
        size,
        smtputf8,
        eightbit,
        created_at,
        next_attempt_at,
        lease_until,
        lease_owner,
        attempts,
        reason,
        uid,
        user,
        last_attempt_at,
        network_failure,
        lease_lost,
        delay_notified,
    ) = row
    return QueuedMessage(
        queue_id=queue_id,
        state=_STATES[state],
        account=account,
        overrides=_overrides(overrides),
        config_file=config_file,
        sender=sender,
        size=size,
        smtputf8=bool(smtputf8),
        eightbit=bool(eightbit),
        created_at=created_at,
        next_attempt_at=next_attempt_at,
        lease_until=lease_until,
        lease_owner=lease_owner,
        attempts=attempts,
        reason=reason,
        uid=uid,
        user=user,
        recipients=recipients,
        last_attempt_at=last_attempt_at,
        network_failure=bool(network_failure),
        lease_lost=bool(lease_lost),
        delay_notified=bool(delay_notified),
    )


def reply_text(code: int | None, text: str | None) -> str | None:
    """A stored reply as people read it, `CODE text`; None when there is none."""
    if code is None:
        return text or None
    return f"{code} {text or ''}".rstrip()


def _reply_from_json(item: dict[str, Any]) -> Recipient:
    return Recipient(
        position=int(item["position"]),
        address=str(item["address"]),
        state=RecipientState(item["state"]),
        reply_code=item.get("code"),
        reply_text=item.get("text"),
    )


def attempt_from_row(row: Any) -> Attempt:
    """An Attempt from a row with the `attempts` columns as attributes (SQLAlchemy's Row, or a
    named tuple of ATTEMPT_COLUMNS)."""
    return Attempt(
        started_at=row.started_at,
        duration=row.duration,
        host=row.host,
        tls=bool(row.tls),
        auth=bool(row.auth),
        exit_code=row.exit_code,
        reply_code=row.reply_code,
        reply=row.reply,
        recipients=tuple(_reply_from_json(item) for item in _json(row.recipient_replies)),
        possible_duplicate=bool(row.possible_duplicate),
        note=row.note,
    )
