"""Helpers for the store tests: sample messages, database URLs for SQLite and PostgreSQL, and
the reads and writes that only tests need (the product uses `relayd.store.interface`)."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from relayd.store.hot import HotStatements, recipient_params
from relayd.store.interface import RunnerStore
from relayd.store.queued import Attempt, AttemptRecord, Outcome, QueuedMessage, Recipient
from relayd.store.records import NewMessage, State
from relayd.store.rows import load_messages
from relayd.store.sql import SqlStore
from relayd.store.tables import messages

PG_URL = os.environ.get("RELAYD_TEST_DATABASE_URL", "")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set"),
    ),
]
REPO = Path(__file__).resolve().parent.parent


def message(
    number: int = 0,
    *,
    account: str = "default",
    recipients: tuple[str, ...] = ("rcpt@example.org",),
    data: bytes | None = None,
    overrides: tuple[tuple[str, str], ...] = (),
    sender: str = "sender@example.org",
    uid: int | None = 1000,
    user: str | None = None,
) -> NewMessage:
    """A sample submission; `number` makes its body distinct. Its owner is uid 1000 without a
    name unless `uid`/`user` say otherwise."""
    body = data if data is not None else b"Subject: test %d\r\n\r\nbody %d\r\n" % (number, number)
    return NewMessage(
        account=account,
        overrides=overrides,
        sender=sender,
        recipients=recipients,
        data=body,
        smtputf8=False,
        eightbit=False,
        config_file=None,
        uid=uid,
        user=user,
    )


def list_messages(
    store: SqlStore, state: State | None = None, account: str | None = None
) -> list[QueuedMessage]:
    """Stored messages in arrival order, optionally only one state and/or account."""
    conditions = []
    if state is not None:
        conditions.append(messages.c.state == state.value)
    if account is not None:
        conditions.append(messages.c.account == account)
    with store.reading() as conn:
        return load_messages(conn, sa.and_(sa.true(), *conditions))


def counts(store: SqlStore) -> dict[tuple[str, State], int]:
    """How many messages each (account, state) has."""
    query = sa.select(messages.c.account, messages.c.state, sa.func.count()).group_by(
        messages.c.account, messages.c.state
    )
    with store.reading() as conn:
        return {(account, State(state)): int(n) for account, state, n in conn.execute(query)}


def record_attempts(store: RunnerStore, records: Sequence[AttemptRecord]) -> list[bool]:
    """Commit `records` as a runner does (one group commit); whether each moved its message."""
    return store.commit_prepared([store.prepare(record) for record in records])


def record_attempt(
    store: RunnerStore,
    queue_id: str,
    attempt: Attempt,
    outcome: Outcome,
    *,
    owner: str | None = None,
) -> bool:
    """Commit one attempt (unconditionally when `owner` is None); whether it moved its message."""
    return record_attempts(store, [AttemptRecord(queue_id, attempt, outcome, owner)])[0]


def return_expired(
    store: RunnerStore, now: float, *, interrupted: Iterable[str] = ()
) -> tuple[str, ...]:
    """Return every lease expired by `now`, as a sweep does; those in `interrupted` were on
    the wire."""
    return store.release_leases(
        store.leases(expired_by=now), now, interrupted=frozenset(interrupted)
    )


def mark_recipients(store: SqlStore, queue_id: str, results: Iterable[Recipient]) -> None:
    """Set recipients' results alone, without an attempt (nothing if there is no such message)."""
    statement = HotStatements(store.engine.dialect).recipients
    with store.engine.begin() as conn:
        statement.executemany(
            conn, [statement.args(row) for row in recipient_params(queue_id, results)]
        )


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards (tests never share tables)."""
    schema = "relayd_test_" + secrets.token_hex(6)
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty queue database URL of `backend`."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue' / 'queue.sqlite3'}"
    else:
        with postgres_schema() as url:
            yield url


def count(db_path: Path | str, table: str = "messages") -> int:
    """Rows in `table` of a SQLite queue, read with plain sqlite3."""
    conn = sqlite3.connect(db_path)
    try:
        (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    finally:
        conn.close()
    return int(rows)


def orphans(db_path: Path | str) -> int:
    """Messages without recipients plus recipients without messages (partial rows)."""
    conn = sqlite3.connect(db_path)
    try:
        (lonely,) = conn.execute(
            "SELECT count(*) FROM messages m"
            " WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)"
        ).fetchone()
        (stray,) = conn.execute(
            "SELECT count(*) FROM recipients r"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id)"
        ).fetchone()
    finally:
        conn.close()
    return int(lonely) + int(stray)


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter of this virtualenv (argv[1:] = args)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
