"""PostgreSQL contenders for submit.py (`--postgresql URL`): SPEC §6's "on PostgreSQL <= 60 ms".

In a fresh schema on the server at URL (dropped afterwards), timed in the same rounds as the
other contenders:

* `relayd-sendmail` with RELAYD_DATABASE_URL naming that schema (the `pgwire` fast path);
* its floor: a fresh Python process that reads the message and inserts it with one
  BEGIN/INSERT/COMMIT over the same client (`relayd.store.pgwire`), into a one-column table;
* `relayd-sendmail` through SQLAlchemy and psycopg (PGTZ set, a libpq variable the fast path
  leaves to psycopg), the path every PostgreSQL submission took before; skipped when psycopg is
  not installed in the benchmark's venv.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

NAME = "relayd-sendmail, PostgreSQL"
FLOOR_NAME = "bare pgwire insert, PostgreSQL"
SLOW_NAME = "relayd-sendmail, PostgreSQL via SQLAlchemy"
TARGET_MEDIAN_MS = 60.0

BARE_INSERT = """\
import sys
from relayd.store import pgtarget, pgwire
data = sys.stdin.buffer.read()
conn = pgwire.Connection(pgtarget.target(sys.argv[1]), 10.0)
conn.run("BEGIN")
conn.execute("INSERT INTO bench (data) VALUES ($1)", [(data,)])
conn.run("COMMIT")
conn.close()
"""


@contextmanager
def schema(url: str) -> Iterator[str]:
    """A fresh schema on the server at `url`, migrated to relayd's head, with the floor's
    `bench` table; the URL naming it (search_path). Dropped afterwards."""
    from relayd.store.sql import SqlStore

    name = "relayd_bench_" + secrets.token_hex(6)
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        conn.exec_driver_sql(f'CREATE TABLE "{name}".bench (id SERIAL PRIMARY KEY, data BYTEA)')
    scoped = sa.make_url(url).update_query_dict({"options": f"-csearch_path={name}"})
    text = scoped.render_as_string(hide_password=False)
    try:
        SqlStore.open(text).close()
        yield text
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


def count(url: str) -> dict[str, int]:
    """Rows stored by the run: relayd's messages and the floor's."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
                for table in ("messages", "bench")
            }
    finally:
        engine.dispose()


def commands(
    url: str, python: Path, sendmail: Path, env: Mapping[str, str], recipient: str
) -> list[tuple[str, list[str], dict[str, str], str | None]]:
    """(name, argv, environment, skip reason) of each contender."""
    queue_env = {**env, "RELAYD_DATABASE_URL": url}
    has_psycopg = (
        subprocess.run(
            [str(python), "-c", "import psycopg"], capture_output=True, check=False, timeout=60
        ).returncode
        == 0
    )
    slow_skip = None if has_psycopg else "psycopg is not installed in the benchmark's venv"
    return [
        (NAME, [str(sendmail), recipient], queue_env, None),
        (FLOOR_NAME, [str(python), "-c", BARE_INSERT, url], dict(env), None),
        (SLOW_NAME, [str(sendmail), recipient], {**queue_env, "PGTZ": "UTC"}, slow_skip),
    ]


def report(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Print SPEC §6's PostgreSQL target with PASS/FAIL; the target as JSON."""
    print("SPEC §6 PostgreSQL submission target (relayd-sendmail, 10 KB message, durable):")
    fast, floor = results.get(NAME, {}), results.get(FLOOR_NAME, {})
    if "median_ms" not in fast:
        print("  FAIL  relayd-sendmail into PostgreSQL did not run: no figures")
        return []
    passed = fast["median_ms"] <= TARGET_MEDIAN_MS
    print(
        f"  {'PASS' if passed else 'FAIL'}  median <= {TARGET_MEDIAN_MS:g} ms:"
        f" {fast['median_ms']:.2f} ms"
    )
    if "median_ms" in floor:
        ratio = fast["median_ms"] / floor["median_ms"]
        print(f"  ratio relayd-sendmail / bare pgwire insert (medians): {ratio:.2f}")
    print()
    return [
        {
            "target": f"PostgreSQL: median <= {TARGET_MEDIAN_MS:g} ms",
            "value_ms": fast["median_ms"],
            "limit_ms": TARGET_MEDIAN_MS,
            "pass": passed,
        }
    ]
