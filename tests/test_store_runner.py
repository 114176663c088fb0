"""The store's runner-side additions, on SQLite and PostgreSQL: group commits, lease returns,
possible duplicates, the due summary, network-only flushes, bodies apart from messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from relayd.store import BODY_CHUNK
from relayd.store.queued import (
    Attempt,
    AttemptRecord,
    Lease,
    Outcome,
    QueuedMessage,
    Recipient,
    RecipientState,
    State,
)
from relayd.store.sql import SqlStore
from relayd.store.tables import attempts, bodies
from tests.queue_fill import enqueue_many
from tests.store_helpers import (
    BACKENDS,
    counts,
    database_url,
    message,
    record_attempts,
    return_expired,
)

T0 = 1_700_000_000.0
LEASE = 300.0


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    with database_url(request.param, tmp_path) as url, SqlStore.open(url) as opened:
        yield opened


def got(store: SqlStore, queue_id: str) -> QueuedMessage:
    found = store.get(queue_id)
    assert found is not None, queue_id
    return found


def sent(queue_id: str, owner: str | None, when: float = T0 + 1) -> AttemptRecord:
    attempt = Attempt(
        when, 0.01, "mx", False, False, 0, 250, "ok", (Recipient(0, "a", RecipientState.SENT),)
    )
    return AttemptRecord(queue_id, attempt, Outcome(State.SENT), owner)


def test_enqueue_many_stores_distinct_ids_and_every_body(store: SqlStore) -> None:
    batch = [message(number=n, data=b"Subject: %d\r\n\r\nbody\r\n" % n) for n in range(5000)]
    ids = enqueue_many(store, batch, T0)
    assert len(set(ids)) == 5000
    assert store.read_data(ids[1234]) == b"Subject: 1234\r\n\r\nbody\r\n"
    assert store.read_data_many(ids[:3]) == {
        queue_id: b"Subject: %d\r\n\r\nbody\r\n" % n for n, queue_id in enumerate(ids[:3])
    }
    assert store.read_data_many([]) == {}


def test_record_attempts_commits_a_group_and_reports_each_message(store: SqlStore) -> None:
    ids = enqueue_many(store, [message(number=n) for n in range(4)], T0)
    store.claim_due("default", T0, LEASE, "mine", 3)  # ids[0:3] leased to "mine"
    retry = AttemptRecord(
        ids[1],
        Attempt(T0 + 2, 0.1, "mx", False, False, 75, None, "cannot connect"),
        Outcome(State.QUEUED, T0 + 62, "cannot connect", network_failure=True),
        "mine",
    )
    changed = record_attempts(
        store, [sent(ids[0], "mine"), retry, sent(ids[2], "other"), sent("0000000000ZZ", "mine")]
    )
    assert changed == [True, True, False, False]
    first, second, third = (store.get(q) for q in ids[:3])
    assert first is not None and first.state is State.SENT and first.attempts == 1
    assert first.last_attempt_at == T0 + 1 and first.recipients[0].state is RecipientState.SENT
    assert second is not None and second.state is State.QUEUED
    assert (second.next_attempt_at, second.network_failure) == (T0 + 62, True)
    assert second.last_attempt_at == T0 + 2
    assert third is not None and third.state is State.SENDING  # another runner's lease
    assert [len(store.attempts(q)) for q in ids] == [1, 1, 1, 0]  # every attempt is logged


def test_a_delay_notice_is_remembered_for_good(store: SqlStore) -> None:
    (queue_id,) = enqueue_many(store, [message()], T0)
    for when, notice in ((T0 + 1, True), (T0 + 100, False)):
        store.claim_due("default", when, LEASE, "r", 1)
        record_attempts(
            store,
            [
                AttemptRecord(
                    queue_id,
                    Attempt(when, 0.1, "mx", False, False, 69, 451, "later"),
                    Outcome(State.QUEUED, when, "later", delay_notified=notice),
                    "r",
                )
            ],
        )
        found = store.get(queue_id)
        assert found is not None and found.delay_notified


def test_returned_leases_flag_and_log_only_the_interrupted(store: SqlStore) -> None:
    a, b, c = enqueue_many(store, [message(number=n) for n in range(3)], T0)
    store.claim_due("default", T0, 10, "dead", 3)
    assert set(return_expired(store, T0 + 11, interrupted=[b])) == {a, b, c}
    found = {q: got(store, q) for q in (a, b, c)}
    assert {q: m.lease_lost for q, m in found.items()} == {a: False, b: True, c: False}
    assert {q: m.attempts for q, m in found.items()} == {a: 0, b: 1, c: 0}
    assert {q: m.state for q, m in found.items()} == dict.fromkeys((a, b, c), State.QUEUED)
    assert store.attempts(a) == [] and store.attempts(c) == []
    (cut,) = store.attempts(b)
    assert (cut.note, cut.exit_code, cut.possible_duplicate) == ("interrupted", 75, False)
    (claimed,) = [m for m in store.claim_due("default", T0 + 40, LEASE, "r", 3) if m.queue_id == b]
    assert claimed.lease_lost
    record_attempts(store, [sent(b, "r")])
    found_b = store.get(b)
    assert found_b is not None and not found_b.lease_lost


def test_leases_by_owner_prefix_find_only_one_runners_claims(store: SqlStore) -> None:
    a, b, c = enqueue_many(store, [message(number=n) for n in range(3)], T0)
    store.claim_due("default", T0, LEASE, "daemon-h-1/1", 1)
    store.claim_due("default", T0, LEASE, "daemon-h-1/2", 1)
    store.claim_due("default", T0, LEASE, "daemon-h-12/1", 1)  # another daemon, same prefix
    mine = store.leases(owner_prefix="daemon-h-1/")
    assert {lease.queue_id for lease in mine} == {a, b}
    assert store.leases(owner_prefix="daemon-h-1/", keep=["daemon-h-1/1"]) == [
        Lease(b, "daemon-h-1/2")
    ]
    assert set(store.release_leases(mine, T0)) == {a, b}
    assert got(store, c).state is State.SENDING


def test_a_lease_claimed_again_is_not_returned_by_its_old_owner(store: SqlStore) -> None:
    (a,) = enqueue_many(store, [message()], T0)
    store.claim_due("default", T0, 10, "old", 1)
    stale = store.leases(expired_by=T0 + 20)
    assert return_expired(store, T0 + 20) == (a,)
    store.claim_due("default", T0 + 20, LEASE, "new", 1)
    assert store.release_leases(stale, T0 + 21, interrupted=[a]) == ()
    found = got(store, a)
    assert (found.state, found.lease_owner, found.attempts) == (State.SENDING, "new", 0)


def test_due_summary_says_per_account_whether_mail_is_due_and_when(store: SqlStore) -> None:
    enqueue_many(store, [message(number=n, account="work") for n in range(3)], T0)
    enqueue_many(store, [message(number=n, account="home") for n in range(2)], T0 + 50)
    enqueue_many(store, [message(account="gone")], T0)
    store.claim_due("work", T0, LEASE, "r", 1)  # sending: not queued any more
    store.claim_due("gone", T0, LEASE, "r", 1)  # its only message: no queued mail left
    summary = {a.account: a for a in store.due_summary(T0 + 10)}
    assert sorted(summary) == ["home", "work"]
    assert (summary["work"].due, summary["work"].next_at) == (True, T0)
    assert (summary["home"].due, summary["home"].next_at) == (False, T0 + 50)
    found = counts(store)
    assert found[("work", State.SENDING)] == 1 and found[("home", State.QUEUED)] == 2


def test_network_only_flush_picks_mail_that_failed_offline(store: SqlStore) -> None:
    offline, refused = enqueue_many(store, [message(number=n) for n in range(2)], T0)
    store.claim_due("default", T0, LEASE, "r", 2)
    record_attempts(
        store,
        [
            AttemptRecord(
                offline,
                Attempt(T0, 0.1, "mx", False, False, 75, None, "cannot connect"),
                Outcome(State.QUEUED, T0 + 3600, "cannot connect", network_failure=True),
                "r",
            ),
            AttemptRecord(
                refused,
                Attempt(T0, 0.1, "mx", False, False, 69, 451, "try later"),
                Outcome(State.QUEUED, T0 + 3600, "try later"),
                "r",
            ),
        ],
    )
    assert store.make_due(T0 + 5, network_only=True) == (offline,)
    due = store.claim_due("default", T0 + 5, LEASE, "r2", 10)
    assert [m.queue_id for m in due] == [offline]


def test_deleting_a_message_deletes_its_body(store: SqlStore) -> None:
    (queue_id,) = enqueue_many(store, [message()], T0)
    store.delete([queue_id])
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(bodies)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar_one() == 0


def test_extend_lease_keeps_only_the_owners_claims(store: SqlStore) -> None:
    a, b = enqueue_many(store, [message(number=n) for n in range(2)], T0)
    store.claim_due("default", T0, 10, "mine", 1)
    store.claim_due("default", T0, 10, "other", 1)
    assert store.extend_lease("mine", T0 + 500) == 1
    assert set(return_expired(store, T0 + 100)) == {b}
    assert got(store, a).state is State.SENDING and got(store, a).lease_until == T0 + 500


def test_a_group_commit_keeps_each_message_with_its_own_body_and_recipients(
    store: SqlStore,
) -> None:
    """`enqueue_many` inserts the batch with one statement a table: every body (one of them
    over a chunk) and recipient list stays with its own message, in order."""
    batch = [
        message(
            n,
            recipients=tuple(f"r{n}-{k}@example.org" for k in range(n % 3 + 1)),
            data=(b"Subject: %d\r\n\r\n" % n) + bytes([65 + n]) * (70_000 if n == 3 else n * 10),
            overrides=(("port", str(n)),) if n % 2 else (),
            user=f"user{n}",
        )
        for n in range(7)
    ]
    ids = store.enqueue_many(batch, T0)
    assert len(set(ids)) == len(batch)
    for queue_id, sent_message in zip(ids, batch, strict=True):
        found = got(store, queue_id)
        assert store.read_data(queue_id) == sent_message.data
        assert [r.address for r in found.recipients] == list(sent_message.recipients)
        assert found.overrides == sent_message.overrides
        assert (found.account, found.sender, found.size) == (
            "default",
            sent_message.sender,
            len(sent_message.data),
        )


def test_bodies_read_in_one_go_come_whole_each_with_its_own_message(store: SqlStore) -> None:
    """The runner reads a claim's small bodies with one statement: each body comes back whole
    (chunks joined in order, however many), under its own queue id, whatever order the ids
    are asked in; an id that is not in the queue (deleted since the claim) is left out."""
    sizes = [10, 3 * BODY_CHUNK + 17, 0, BODY_CHUNK, 2 * BODY_CHUNK - 1]
    batch = [
        message(n, data=(b"Subject: %d\r\n\r\n" % n) + bytes([65 + n]) * size)
        for n, size in enumerate(sizes)
    ]
    ids = store.enqueue_many(batch, T0)
    store.delete([ids[2]])
    asked = [ids[4], ids[0], "NOSUCHID0000", ids[2], ids[1], ids[3]]
    found = store.read_data_many(asked)
    expected = {
        queue_id: new.data
        for n, (queue_id, new) in enumerate(zip(ids, batch, strict=True))
        if n != 2
    }
    assert found == expected
    assert all(type(data) is bytes for data in found.values())
