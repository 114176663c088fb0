"""Helpers for the store tests: sample messages, database URLs for SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from relayd.store.records import NewMessage

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
) -> NewMessage:
    """A sample submission; `number` makes its body distinct."""
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
        uid=1000,
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
