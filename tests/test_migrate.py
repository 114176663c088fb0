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
from relayd.store.migrate import alembic_config, current_revision, ensure_schema, head_revision
from relayd.store.tables import metadata
from relayd.sysexits import ExitCode
from tests.store_helpers import BACKENDS, REPO, database_url

MIGRATOR = """
import json, sys
from relayd.store.dialects import make_engine
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
