"""The claim and the periodic scan read the due index, never every queued message (query plans)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relayd.store.hot import HotStatements
from relayd.store.records import State
from relayd.store.reports import account_reports
from relayd.store.sql import DUE_BY_ACCOUNT, SqlStore
from tests.queue_fill import enqueue_many
from tests.store_helpers import BACKENDS, database_url, message

T0 = 1_700_000_000.0
QUEUED = 3_000  # enough that PostgreSQL's planner prefers the index to reading the table


@pytest.fixture(scope="module", params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlStore]:
    tmp_path: Path = tmp_path_factory.mktemp("plans")
    with database_url(request.param, tmp_path) as url, SqlStore.open(url) as opened:
        accounts = ("home", "work")
        enqueue_many(opened, [message(n, account=accounts[n % 2]) for n in range(QUEUED)], T0)
        with opened.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        yield opened


def plan(store: SqlStore, sql: str, args: Sequence[Any] | Mapping[str, Any]) -> list[str]:
    """The plan's steps as text: SQLite's EXPLAIN QUERY PLAN details, or PostgreSQL's node
    types with the relation and index each reads."""
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if store.engine.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, args)
            return [str(row[3]) for row in cursor.fetchall()]
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, args)
        row = cursor.fetchone()
        assert row is not None
        found = row[0]
        nodes = json.loads(found) if isinstance(found, str) else found
        steps: list[str] = []
        pending = [nodes[0]["Plan"]]
        while pending:
            node = pending.pop()
            steps.append(
                " ".join(
                    str(node[key])
                    for key in ("Node Type", "Relation Name", "Index Name")
                    if key in node
                )
            )
            pending.extend(node.get("Plans", []))
        return steps
    finally:
        raw.rollback()
        raw.close()


def reads_all_messages(steps: Sequence[str]) -> list[str]:
    """The steps that read the whole messages table or sort what they read."""
    return [
        step
        for step in steps
        if step.startswith(("SCAN messages", "Seq Scan messages"))
        or "TEMP B-TREE" in step
        or step.startswith("Sort")
    ]


def test_the_runners_claim_seeks_the_due_index(store: SqlStore) -> None:
    claim = HotStatements(store.engine.dialect).claims[True, False]
    args = claim.args(
        {
            "b_account": "work",
            "b_now": T0 + 10,
            "b_limit": 100,
            "b_owner": "plan",
            "b_until": T0 + 300,
            "b_queue_ids": None,
        }
    )
    steps = plan(store, claim.sql, args)
    assert any("ix_messages_due" in step for step in steps), "; ".join(steps)
    assert reads_all_messages(steps) == [], steps


def test_a_claim_of_named_messages_finds_them_by_queue_id(store: SqlStore) -> None:
    claim = HotStatements(store.engine.dialect).claims[False, True]
    with store.reading() as conn:
        named = [row[0] for row in conn.exec_driver_sql("SELECT queue_id FROM messages LIMIT 2")]
    args = claim.args(
        {
            "b_account": None,
            "b_now": T0 + 10,
            "b_limit": 100,
            "b_owner": "plan",
            "b_until": T0 + 300,
            "b_queue_ids": json.dumps(named),
        }
    )
    if store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL hashes the named ids against a 3,000-row table: its choice")
    steps = plan(store, claim.sql, args)
    # Sorting the named messages is fine; reading every queued one is not (SQLite's planner
    # took the due index for `state = 'queued'` and checked each queued message's id).
    assert "SEARCH messages USING INDEX sqlite_autoindex_messages_1 (queue_id=?)" in steps
    assert not any(s.startswith("SCAN messages") for s in steps), steps
    assert not any("ix_messages_due" in step for step in steps), steps


def test_the_periodic_scan_seeks_the_due_index(store: SqlStore) -> None:
    sql = str(DUE_BY_ACCOUNT)
    steps = plan(store, sql, () if store.engine.dialect.name == "sqlite" else {})
    assert any("ix_messages_due" in step for step in steps), "; ".join(steps)
    assert reads_all_messages(steps) == [], steps
    summary = store.due_summary(T0 + 10)
    assert [(a.account, a.due, a.next_at) for a in summary] == [
        ("home", True, T0),
        ("work", True, T0),
    ]


def test_status_counts_come_from_one_grouped_index_only_query(store: SqlStore) -> None:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        (home, work) = account_reports(store)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert (home.account, home.counts[State.QUEUED], work.counts[State.QUEUED]) == (
        "home",
        QUEUED // 2,
        QUEUED // 2,
    )
    counting = [sql for sql in seen if "count(" in sql.lower()]
    assert len(counting) == 1 and "GROUP BY" in counting[0], seen
    if store.engine.dialect.name == "sqlite":  # read from the index alone, no table row
        steps = plan(store, counting[0], ())
        assert steps == ["SCAN messages USING COVERING INDEX ix_messages_due"], steps
    # PostgreSQL counts every row either way; it reads the index alone only once VACUUM has
    # marked the pages all-visible, so its planner's choice is left to it.
