"""Migrations: the revisions build exactly tables.py, once, even with several starters at once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from relayd.errors import QueueError
from relayd.store import SCHEMA_REVISION
from relayd.store.dialects import make_engine
from relayd.store.listing import listing
from relayd.store.migrate import alembic_config, current_revision, ensure_schema, head_revision
from relayd.store.tables import metadata
from relayd.sysexits import ExitCode
from tests.store_helpers import BACKENDS, REPO, database_url

MIGRATOR = """
import json, sys
from relayd.store.dialects import make_engine
from relayd.store.listing import listing
from relayd.store.migrate import ensure_schema
engine = make_engine(sys.argv[1])
sys.stdin.readline()  # start together
print(json.dumps(ensure_schema(engine)))
"""


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    made = make_engine(url)
    yield made
    made.dispose()


def test_the_code_expects_the_newest_revision() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_migrated_schema_matches_tables_py(engine: sa.Engine) -> None:
    assert ensure_schema(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
        assert differences == []
        assert current_revision(conn) == SCHEMA_REVISION


def test_migrating_twice_does_nothing_the_second_time(engine: sa.Engine) -> None:
    assert ensure_schema(engine)
    assert not ensure_schema(engine)


def test_sqlite_foreign_keys_stay_on_after_migrating(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
    engine.dispose()


def test_downgrade_and_upgrade_through_alembic_commands(url: str, engine: sa.Engine) -> None:
    ensure_schema(engine)
    config = alembic_config(url)  # no connection given: env.py makes its own engine
    command.downgrade(config, "base")
    with engine.connect() as conn:
        assert current_revision(conn) is None
        assert "messages" not in sa.inspect(conn).get_table_names()
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert current_revision(conn) == SCHEMA_REVISION


def test_upgrading_from_0003_keeps_rows_and_adds_the_owner_name(
    url: str, engine: sa.Engine
) -> None:
    config = alembic_config(url)
    command.upgrade(config, "0003")
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_MESSAGE))
        message_id = conn.execute(sa.text("SELECT id FROM messages")).scalar_one()
        conn.execute(sa.text(OLD_BODY), {"id": message_id, "data": b"hello"})
        conn.execute(sa.text(OLD_RECIPIENT), {"id": message_id})
    assert "submitted_user" not in columns(engine)
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert current_revision(conn) == SCHEMA_REVISION
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        row = conn.execute(sa.text("SELECT queue_id, submitted_uid, submitted_user FROM messages"))
        assert row.all() == [("0000000000AB", 1000, None)]
        (listed,) = listing(conn, None, None)
    assert (listed.owner_uid, listed.owner_user, listed.owner) == (1000, None, "1000")
    assert [r.address for r in listed.recipients] == ["rcpt@example.org"]
    command.downgrade(config, "0003")
    assert "submitted_user" not in columns(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one() == 1


OLD_MESSAGE = """
INSERT INTO messages (queue_id, state, account, overrides, sender, size, needs_smtputf8,
    needs_8bitmime, created_at, next_attempt_at, submitted_uid)
VALUES ('0000000000AB', 'queued', 'default', '[]', 's@example.org', 5, false, false,
    1700000000.0, 1700000000.0, 1000)
"""
OLD_BODY = "INSERT INTO bodies (message_id, data) VALUES (:id, :data)"
OLD_RECIPIENT = """
INSERT INTO recipients (message_id, position, address, state)
VALUES (:id, 0, 'rcpt@example.org', 'pending')
"""


def columns(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {column["name"] for column in sa.inspect(conn).get_columns("messages")}


def test_an_unknown_newer_revision_is_refused(engine: sa.Engine) -> None:
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(QueueError) as caught:
        ensure_schema(engine)
    assert caught.value.exit_code == ExitCode.TEMPFAIL
    assert "9999" in caught.value.message


def test_simultaneous_first_users_migrate_exactly_once(url: str) -> None:
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate("go\n", timeout=60) for p in starters]
    assert [p.returncode for p in starters] == [0] * 6, [err for _, err in outputs]
    assert sorted(json.loads(out) for out, _ in outputs) == [False] * 5 + [True]


def test_upgrading_from_0004_makes_each_body_one_chunk_and_back(
    url: str, engine: sa.Engine
) -> None:
    config = alembic_config(url)
    command.upgrade(config, "0004")
    big = bytes(range(256)) * 1024  # 256 KiB: more than one chunk once written anew
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_MESSAGE))
        message_id = conn.execute(sa.text("SELECT id FROM messages")).scalar_one()
        conn.execute(sa.text(OLD_BODY), {"id": message_id, "data": big})
        conn.execute(sa.text(OLD_RECIPIENT), {"id": message_id})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        rows = conn.execute(sa.text("SELECT seq, data FROM bodies")).all()
    assert [(seq, bytes(data)) for seq, data in rows] == [(0, big)]
    with engine.begin() as conn:  # a body written in chunks by 0005 code
        conn.execute(sa.text("DELETE FROM bodies"))
        for seq in range(4):
            conn.execute(
                sa.text("INSERT INTO bodies (message_id, seq, data) VALUES (:id, :seq, :data)"),
                {"id": message_id, "seq": seq, "data": big[seq * 65536 : (seq + 1) * 65536]},
            )
    command.downgrade(config, "0004")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT message_id, data FROM bodies")).all()
    assert [(m, bytes(data)) for m, data in rows] == [(message_id, big)]
