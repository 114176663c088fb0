"""Who submitted a message: the store, `queue list` (plain, JSON), `mailq` and `queue show`."""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayd.cli import app
from relayd.store import location
from relayd.store.sql import SqlStore
from tests.sendmail_helpers import run_sendmail, write_msmtprc
from tests.store_helpers import BACKENDS, database_url, message
from tests.test_text import HOSTILE, HOSTILE_ESCAPED, assert_harmless

runner = CliRunner()
T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    with database_url(request.param, tmp_path) as url, SqlStore.open(url) as opened:
        yield opened


@pytest.fixture
def store() -> Iterator[SqlStore]:
    """The queue the commands read (the test environment's SQLite file)."""
    with SqlStore.open(location.database_url()) as opened:
        yield opened


def three_owners(store: SqlStore) -> list[str]:
    """A message by name (alice, uid 1000), one by uid alone (1000), one by nobody recorded."""
    return [
        store.enqueue(message(1, user="alice"), T0),
        store.enqueue(message(2), T0 + 1),
        store.enqueue(message(3, uid=None), T0 + 2),
    ]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_listing_names_the_owner_else_its_uid(any_store: SqlStore) -> None:
    named, by_uid, unknown = three_owners(any_store)
    listed = list(any_store.listing())
    assert [m.queue_id for m in listed] == [named, by_uid, unknown]
    assert [(m.owner_user, m.owner_uid, m.owner) for m in listed] == [
        ("alice", 1000, "alice"),
        (None, 1000, "1000"),
        (None, None, None),
    ]
    got = any_store.get(named)
    assert got is not None and (got.uid, got.user) == (1000, "alice")


def test_plain_listing_and_mailq_add_the_owner_after_the_sender(store: SqlStore) -> None:
    named, by_uid, unknown = three_owners(store)
    for shown in (invoke("queue", "list"), run_sendmail(["-bp"], b"").stdout.decode()):
        firsts = {line[:12]: line for line in shown.splitlines() if line[:12] in (named, by_uid)}
        assert firsts[named].endswith(" sender@example.org  owner=alice")
        assert firsts[by_uid].endswith(" sender@example.org  owner=1000")
        (last,) = [line for line in shown.splitlines() if line.startswith(unknown)]
        assert last.endswith(" sender@example.org")  # no owner recorded: Postfix's line as is


def test_json_listing_has_owner_and_owner_uid_or_nulls(store: SqlStore) -> None:
    three_owners(store)
    records = [json.loads(line) for line in invoke("queue", "list", "--json").splitlines()]
    assert [(r["owner"], r["owner_uid"]) for r in records] == [
        ("alice", 1000),
        (None, 1000),
        (None, None),
    ]


def test_show_has_an_owner_line_and_submitted_user(store: SqlStore) -> None:
    named, by_uid, unknown = three_owners(store)
    for queue_id, line, user, uid in (
        (named, "Owner: alice (uid 1000)", "alice", 1000),
        (by_uid, "Owner: uid 1000", None, 1000),
        (unknown, "Owner: not recorded", None, None),
    ):
        assert line in invoke("queue", "show", queue_id).splitlines()
        record = json.loads(invoke("queue", "show", "--json", queue_id))
        assert (record["submitted_user"], record["submitted_uid"]) == (user, uid)


def test_a_hostile_owner_name_reaches_no_terminal(store: SqlStore) -> None:
    queue_id = store.enqueue(message(user=HOSTILE), T0)
    listing = invoke("queue", "list")
    shown = invoke("queue", "show", queue_id)
    assert_harmless(listing + shown)
    assert f"  owner={HOSTILE_ESCAPED}" in listing
    assert f"Owner: {HOSTILE_ESCAPED} (uid 1000)" in shown.splitlines()
    assert json.loads(invoke("queue", "list", "--json"))["owner"] == HOSTILE


def test_a_sendmail_submission_is_listed_under_its_users_name() -> None:
    write_msmtprc()
    before = time.time()
    sent = run_sendmail(["-odq", "rcpt@example.org"], b"Subject: mine\n\nhello\n")
    assert sent.returncode == 0, sent.stderr
    name = pwd.getpwuid(os.getuid()).pw_name
    (record,) = [json.loads(line) for line in invoke("queue", "list", "--json").splitlines()]
    assert (record["owner"], record["owner_uid"]) == (name, os.getuid())
    assert record["arrival_time"] >= int(before)
    assert f"me@example.org  owner={name}" in invoke("queue", "list")


def test_a_group_commit_stores_all_and_owners_are_looked_up(any_store: SqlStore) -> None:
    batch = [message(n, uid=1000 + n, user=f"u{n}") for n in range(3)]
    ids = any_store.enqueue_many(batch, T0)
    assert len(set(ids)) == 3
    assert [m.queue_id for m in any_store.listing()] == ids
    owners = any_store.owners_of([*ids, "NOSUCHID"])
    assert owners == {ids[0]: 1000, ids[1]: 1001, ids[2]: 1002}
