"""The store contract: the same behaviour from SqlStore on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relayd.errors import DataError
from relayd.store import BODY_CHUNK, fastpath, sql
from relayd.store.hot import HotStatements
from relayd.store.ids import is_queue_id
from relayd.store.interface import ReportStore, Store
from relayd.store.prepared import Prepared
from relayd.store.queued import Attempt, AttemptRecord, Outcome, Recipient, RecipientState, State
from relayd.store.records import NewMessage
from relayd.store.sql import SqlStore
from relayd.store.tables import attempts, bodies, recipients
from tests.store_helpers import (
    BACKENDS,
    database_url,
    list_messages,
    mark_recipients,
    message,
    record_attempt,
    record_attempts,
    return_expired,
)

T0 = 1_700_000_000.0
LEASE = 300.0


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    with SqlStore.open(url) as opened:
        yield opened


def rows(store: SqlStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_sqlstore_is_the_interface_and_no_more(store: SqlStore) -> None:
    roles: tuple[Store, ReportStore] = (store, store)  # mypy checks each method's signature
    promised = {
        name
        for role in (*Store.__mro__, ReportStore)
        for name in vars(role)
        if not name.startswith("_") and callable(vars(role)[name])
    }
    # Not the store's work: its life.
    opening = {"open", "open_existing", "open_reading", "close", "engine"}
    public = {name for name in dir(SqlStore) if not name.startswith("_")}
    assert roles and public - opening == promised


def test_enqueue_then_get_returns_every_field(store: SqlStore) -> None:
    data = bytes(range(256)) * 4 + b"\r\n.\r\n"
    new = message(
        recipients=("a@example.org", "b@example.org", "a@example.org"),
        data=data,
        overrides=(("from_full_name", "Alice  Smith"), ("port", "2525")),
        sender="",
        account="work",
    )
    fields = {name: getattr(new, name) for name in new.__slots__}
    new = type(new)(**{**fields, "smtputf8": True, "config_file": "/etc/msmtprc", "user": "al"})
    queue_id = store.enqueue(new, T0)
    assert is_queue_id(queue_id)
    got = store.get(queue_id)
    assert got is not None
    assert (got.queue_id, got.state, got.account, got.sender) == (
        queue_id,
        State.QUEUED,
        "work",
        "",
    )
    assert got.overrides == (("from_full_name", "Alice  Smith"), ("port", "2525"))
    assert (got.config_file, got.size, got.smtputf8, got.eightbit) == (
        "/etc/msmtprc",
        len(data),
        True,
        False,
    )
    assert (got.created_at, got.next_attempt_at, got.lease_until, got.lease_owner) == (
        T0,
        T0,
        None,
        None,
    )
    assert (got.attempts, got.reason, got.uid, got.user) == (0, None, 1000, "al")
    assert [(r.position, r.address, r.state) for r in got.recipients] == [
        (0, "a@example.org", RecipientState.PENDING),
        (1, "b@example.org", RecipientState.PENDING),
        (2, "a@example.org", RecipientState.PENDING),
    ]
    assert store.read_data(queue_id) == data


def test_unknown_ids_read_as_none(store: SqlStore) -> None:
    assert store.get("0000000000ZZ") is None
    assert store.read_data("0000000000ZZ") is None
    assert store.attempts("0000000000ZZ") == []


def test_queue_ids_are_distinct_even_in_one_millisecond(store: SqlStore) -> None:
    ids = {store.enqueue(message(n), T0) for n in range(50)}
    assert len(ids) == 50


def test_a_colliding_queue_id_is_drawn_again(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.enqueue(message(), T0)
    draws = iter([first, first, "0000000000AB"])
    # SQLite's rows go in through the fast path's inserts, which draw their own ids
    monkeypatch.setattr(sql, "new_queue_id", lambda now: next(draws))
    monkeypatch.setattr(fastpath, "new_queue_id", lambda now: next(draws))
    assert store.enqueue(message(1), T0) == "0000000000AB"
    assert len(list_messages(store)) == 2


def test_list_filters_by_state_and_account_in_arrival_order(store: SqlStore) -> None:
    first = store.enqueue(message(1, account="a"), T0 + 2)
    second = store.enqueue(message(2, account="b"), T0 + 1)
    third = store.enqueue(message(3, account="a"), T0 + 3)
    store.hold([third], "by the user")
    assert [m.queue_id for m in list_messages(store)] == [second, first, third]
    assert [m.queue_id for m in list_messages(store, account="a")] == [first, third]
    assert [m.queue_id for m in list_messages(store, state=State.HELD)] == [third]
    assert [m.queue_id for m in list_messages(store, state=State.QUEUED, account="b")] == [second]
    assert list_messages(store, state=State.SENT) == []


def test_claim_leases_due_messages_of_one_account(store: SqlStore) -> None:
    due_late = store.enqueue(message(1), T0 + 5)
    due_early = store.enqueue(message(2), T0)
    store.enqueue(message(3), T0 + 100)  # not due yet
    store.enqueue(message(4, account="other"), T0)
    claimed = store.claim_due("default", T0 + 10, LEASE, "runner-1", limit=10)
    assert [m.queue_id for m in claimed] == [due_early, due_late]
    for got in claimed:
        assert (got.state, got.lease_owner, got.lease_until) == (
            State.SENDING,
            "runner-1",
            T0 + 10 + LEASE,
        )
        assert got.recipients
    assert store.claim_due("default", T0 + 10, LEASE, "runner-2", limit=10) == []
    assert len(list_messages(store)) == 4  # leased, never deleted


def test_claim_respects_the_limit_and_any_account(store: SqlStore) -> None:
    for n in range(5):
        store.enqueue(message(n, account=f"acct{n % 2}"), T0 + n)
    assert len(store.claim_due(None, T0 + 10, LEASE, "r", limit=3)) == 3
    assert len(store.claim_due(None, T0 + 10, LEASE, "r", limit=3)) == 2


def test_a_claim_by_queue_ids_takes_only_those_due_earliest_first(store: SqlStore) -> None:
    a, b, c, d = (store.enqueue(message(n), T0 + 3 - n) for n in range(4))  # d is due first
    later = store.enqueue(message(4), T0 + 100)
    unasked = store.enqueue(message(5), T0)
    claimed = store.claim_due(None, T0 + 10, LEASE, "odi", limit=2, queue_ids=[a, b, c, later])
    assert [m.queue_id for m in claimed] == [c, b]
    assert {(m.state, m.lease_owner, m.lease_until) for m in claimed} == {
        (State.SENDING, "odi", T0 + 10 + LEASE)
    }
    ids = [a, b, c, d, later]
    assert [m.queue_id for m in store.claim_due("other", T0 + 10, LEASE, "x", queue_ids=ids)] == []
    assert [m.queue_id for m in store.claim_due("default", T0 + 10, LEASE, "x", queue_ids=ids)] == [
        d,
        a,
    ]
    assert store.claim_due(None, T0 + 10, LEASE, "x", queue_ids=[]) == []
    assert {m.queue_id for m in list_messages(store, State.QUEUED)} == {later, unasked}


def test_a_claim_by_queue_ids_runs_the_runners_claim_with_one_more_condition(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = (store.enqueue(message(n), T0) for n in range(2))
    ran: list[str] = []
    fetch = Prepared.fetch

    def recording(self: Prepared, conn: sa.Connection, args: Any) -> list[Any]:
        ran.append(self.sql)
        return fetch(self, conn, args)

    monkeypatch.setattr(Prepared, "fetch", recording)
    assert [m.queue_id for m in store.claim_due(None, T0, LEASE, "runner", 1)] == [first]
    runners = ran[0]
    ran.clear()
    claimed = store.claim_due(None, T0, LEASE, "odi", 1, queue_ids=[second])
    assert [m.queue_id for m in claimed] == [second]
    # The same claim (`hot._claim`, one statement per shape so each can use the due index):
    # the runner's, narrowed to the named messages.
    shapes = {p.sql for p in HotStatements(store.engine.dialect).claims.values()}
    assert {runners, ran[0]} <= shapes
    assert ran[0] != runners and "queue_id IN" in ran[0] and "queue_id IN" not in runners


def test_expired_leases_return_to_the_queue(store: SqlStore) -> None:
    old = store.enqueue(message(1), T0)
    store.claim_due("default", T0, 10.0, "dead-runner", limit=1)
    young = store.enqueue(message(2), T0)
    store.claim_due("default", T0 + 5, 100.0, "live-runner", limit=1)
    assert return_expired(store, T0 + 9) == ()
    assert return_expired(store, T0 + 10) == (old,)
    got = store.get(old)
    assert got is not None and (got.state, got.lease_owner, got.lease_until) == (
        State.QUEUED,
        None,
        None,
    )
    assert [m.queue_id for m in store.claim_due("default", T0 + 11, LEASE, "next", 10)] == [old]
    assert store.get(young) is not None


def test_record_attempt_retry_logs_and_reschedules(store: SqlStore) -> None:
    queue_id = store.enqueue(message(recipients=("a@x.org", "b@x.org")), T0)
    store.claim_due("default", T0, LEASE, "r1", 1)
    results = (
        Recipient(0, "a@x.org", RecipientState.SENT, 250, "2.1.5 ok"),
        Recipient(1, "b@x.org", RecipientState.PENDING, 451, "4.3.0 try later"),
    )
    attempt = Attempt(T0 + 1, 0.25, "mx.x.org", True, True, 75, 451, "451 4.3.0 try later", results)
    changed = record_attempt(
        store, queue_id, attempt, Outcome(State.QUEUED, T0 + 61, "451 4.3.0 try later"), owner="r1"
    )
    assert changed
    got = store.get(queue_id)
    assert got is not None
    assert (got.state, got.next_attempt_at, got.reason, got.attempts) == (
        State.QUEUED,
        T0 + 61,
        "451 4.3.0 try later",
        1,
    )
    assert (got.lease_owner, got.lease_until) == (None, None)
    assert got.recipients == results
    assert store.attempts(queue_id) == [attempt]


@pytest.mark.parametrize("state", [State.SENT, State.FAILED, State.HELD])
def test_record_attempt_final_states(store: SqlStore, state: State) -> None:
    queue_id = store.enqueue(message(), T0)
    store.claim_due("default", T0, LEASE, "r1", 1)
    attempt = Attempt(T0, 1.0, "mx", False, False, 0, 250, "250 ok", possible_duplicate=True)
    assert record_attempt(store, queue_id, attempt, Outcome(state, reason="why"), owner="r1")
    got = store.get(queue_id)
    assert got is not None and (got.state, got.reason, got.attempts) == (state, "why", 1)
    assert store.attempts(queue_id)[0].possible_duplicate


def test_a_runner_that_lost_its_lease_does_not_overwrite(store: SqlStore) -> None:
    queue_id = store.enqueue(message(), T0)
    store.claim_due("default", T0, 10, "slow", 1)
    return_expired(store, T0 + 20)
    store.claim_due("default", T0 + 20, 10, "fast", 1)
    done = (Recipient(0, "to@example.org", RecipientState.SENT, 250, "ok"),)
    late = Attempt(T0 + 25, 25.0, "mx", False, False, 0, 250, "250 ok", done)
    assert not record_attempt(store, queue_id, late, Outcome(State.SENT), owner="slow")
    got = store.get(queue_id)
    assert got is not None and (got.state, got.lease_owner) == (State.SENDING, "fast")
    # Nothing changed but an attempt row noted `late`: the recipient is still pending, so
    # the new owner's attempt has something to send (SPEC §4).
    assert [r.state for r in got.recipients] == [RecipientState.PENDING]
    (logged,) = store.attempts(queue_id)
    assert logged.note == "late" and logged.reply == "250 ok"
    assert not record_attempt(store, "0000000000ZZ", late, Outcome(State.SENT))


def test_record_attempt_rejects_impossible_outcomes(store: SqlStore) -> None:
    queue_id = store.enqueue(message(), T0)
    attempt = Attempt(T0, 0.0, "mx", False, False, 75)
    with pytest.raises(ValueError):
        record_attempt(store, queue_id, attempt, Outcome(State.SENDING))
    with pytest.raises(ValueError):
        record_attempt(store, queue_id, attempt, Outcome(State.QUEUED))


def test_mark_recipients_commits_each_result(store: SqlStore) -> None:
    queue_id = store.enqueue(message(recipients=("a@x", "b@x", "c@x")), T0)
    mark_recipients(
        store,
        queue_id,
        [
            Recipient(0, "a@x", RecipientState.SENT, 250, "ok"),
            Recipient(2, "c@x", RecipientState.FAILED, 550, "5.1.1 no such user"),
        ],
    )
    got = store.get(queue_id)
    assert got is not None
    assert [(r.state, r.reply_code) for r in got.recipients] == [
        (RecipientState.SENT, 250),
        (RecipientState.PENDING, None),
        (RecipientState.FAILED, 550),
    ]
    mark_recipients(store, "0000000000ZZ", [Recipient(0, "a@x", RecipientState.SENT)])


def test_hold_release_make_due_and_delete(store: SqlStore) -> None:
    a, b, c = (store.enqueue(message(n), T0 + n) for n in range(3))
    store.claim_due("default", T0 + 1, LEASE, "r", limit=1)  # a is in flight
    assert set(store.hold([a, b, "0000000000ZZ"], "user hold")) == {a, b}
    assert store.hold([b], "again") == ()  # already held
    in_flight = store.get(a)  # the hold waits for the attempt to end
    assert in_flight is not None and (in_flight.state, in_flight.lease_owner) == (
        State.SENDING,
        "r",
    )
    retry = Attempt(T0 + 2, 1, "mx", False, False, 75, 451, "later")
    assert record_attempt(store, a, retry, Outcome(State.QUEUED, T0 + 60, "later"), owner="r")
    held = store.get(a)
    assert held is not None and (held.state, held.reason, held.lease_owner) == (
        State.HELD,
        "user hold",
        None,
    )
    assert store.claim_due("default", T0 + 100, LEASE, "r", 10)[0].queue_id == c
    assert store.release([a, c], T0 + 200) == (a,)
    released = store.get(a)
    assert released is not None and (released.state, released.next_attempt_at, released.reason) == (
        State.QUEUED,
        T0 + 200,
        None,
    )
    assert store.make_due(T0 + 150) == (a,)
    assert store.make_due(T0 + 150, queue_ids=[b]) == ()
    assert store.make_due(T0 + 150, account="nobody") == ()
    assert [m.queue_id for m in store.claim_due("default", T0 + 150, LEASE, "r", 10)] == [a]
    assert set(store.delete([a, b, "0000000000ZZ"])) == {a, b}
    assert [m.queue_id for m in list_messages(store)] == [c]


def test_a_hold_while_sending_applies_when_the_attempt_ends(store: SqlStore) -> None:
    sent_id, retried, cancelled, lost = (store.enqueue(message(n), T0) for n in range(4))
    store.claim_due("default", T0, LEASE, "r", limit=4)
    assert set(store.hold([sent_id, retried, cancelled, lost], "user hold")) == {
        sent_id,
        retried,
        cancelled,
        lost,
    }
    assert store.release([cancelled], T0 + 1) == (cancelled,)  # the hold is called off
    done = (Recipient(0, "to@example.org", RecipientState.SENT, 250, "ok"),)
    ok = Attempt(T0, 1, "mx", False, False, 0, 250, "ok", done)
    later = Attempt(T0, 1, "mx", False, False, 75, 451, "later")
    record_attempt(store, sent_id, ok, Outcome(State.SENT), owner="r")
    for queue_id in (retried, cancelled):
        record_attempt(store, queue_id, later, Outcome(State.QUEUED, T0 + 60, "later"), owner="r")
    store.release_leases(store.leases(owner_prefix="r"), T0 + 2)  # the runner stopped
    found = {q: store.get(q) for q in (sent_id, retried, cancelled, lost)}
    assert {q: (m.state, m.reason) for q, m in found.items() if m} == {
        sent_id: (State.SENT, None),  # done is done: a hold cannot unsend it
        retried: (State.HELD, "user hold"),
        cancelled: (State.QUEUED, "later"),
        lost: (State.HELD, "user hold"),
    }
    delivered = found[sent_id]
    assert delivered is not None
    assert [r.state for r in delivered.recipients] == [RecipientState.SENT]
    assert set(store.release([retried, lost], T0 + 3)) == {retried, lost}


def test_a_message_with_no_recipient_left_settles(store: SqlStore) -> None:
    queue_id = store.enqueue(message(recipients=("a@x", "b@x")), T0)
    mark_recipients(
        store,
        queue_id,
        [Recipient(0, "a@x", RecipientState.SENT), Recipient(1, "b@x", RecipientState.FAILED)],
    )
    store.claim_due("default", T0, LEASE, "r", 1)
    assert record_attempts(
        store, [AttemptRecord(queue_id, None, Outcome(State.FAILED, reason="why"), "r")]
    ) == [True]
    found = store.get(queue_id)
    assert found is not None and (found.state, found.attempts) == (State.FAILED, 0)
    assert store.attempts(queue_id) == []


def test_delete_removes_recipients_and_attempts(store: SqlStore) -> None:
    queue_id = store.enqueue(message(recipients=("a@x", "b@x")), T0)
    record_attempt(
        store, queue_id, Attempt(T0, 1, "mx", False, False, 75), Outcome(State.QUEUED, T0)
    )
    assert rows(store, recipients) == 2 and rows(store, attempts) == 1
    store.delete([queue_id])
    assert rows(store, recipients) == 0 and rows(store, attempts) == 0


def test_concurrent_runners_never_claim_the_same_message(url: str) -> None:
    with SqlStore.open(url) as setup:
        for n in range(60):
            setup.enqueue(message(n), T0)
    claimed: list[str] = []
    lock = threading.Lock()

    def runner(name: str) -> None:
        with SqlStore.open(url) as own:
            while batch := own.claim_due("default", T0, LEASE, name, limit=3):
                with lock:
                    claimed.extend(m.queue_id for m in batch)

    threads = [threading.Thread(target=runner, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 60 and len(set(claimed)) == 60


def test_listing_streams_messages_with_recipients_in_envelope_order(store: SqlStore) -> None:
    many = tuple(f"r{n}@x" for n in range(12))  # more than one digit: order is numeric
    first = store.enqueue(message(1, recipients=many), T0)
    held = store.enqueue(message(2, account="work"), T0 + 1)
    store.hold([held], "held by the user")
    refused = (Recipient(3, "r3@x", RecipientState.FAILED, 550, "no such user"),)
    record_attempt(
        store,
        first,
        Attempt(T0, 1, "mx", False, False, 75, recipients=refused),
        Outcome(State.QUEUED, T0),
    )
    listed = list(store.listing())
    assert [m.queue_id for m in listed] == [first, held]
    assert [r.address for r in listed[0].recipients] == list(many)
    assert listed[0].recipients[3].state == "failed"
    assert listed[0].recipients[3].reply == "550 no such user"
    assert listed[0].attempts == 1 and listed[1].reason == "held by the user"
    assert [m.queue_id for m in store.listing([State.HELD])] == [held]
    assert [m.queue_id for m in store.listing(None, "default")] == [first]
    assert list(store.listing([State.SENT])) == []


def test_delete_spares_a_live_lease_only(store: SqlStore) -> None:
    queue_id = store.enqueue(message(), T0)
    assert store.claim_due("default", T0, LEASE, "r", 10)
    assert store.delete([queue_id], now=T0 + 1) == ()
    assert store.delete([queue_id], now=T0 + LEASE + 1) == (queue_id,)
    assert store.states_of([queue_id]) == {}


def _streamed(pieces: list[bytes], fail_after: int | None = None) -> NewMessage:
    def body() -> Iterator[bytes]:
        for number, piece in enumerate(pieces):
            if number == fail_after:
                raise DataError("the input went wrong")
            yield piece

    new = message()
    new.data, new.body = b"", body()
    return new


def test_a_streamed_body_is_stored_in_chunks_with_its_size_and_8bit_flag(
    store: SqlStore,
) -> None:
    pieces = [b"Subject: s\r\n\r\n", b"a" * 100_000, b"\xc3\xa9\r\n", b"b" * (3 * BODY_CHUNK)]
    queue_id = store.enqueue(_streamed(pieces), T0)
    data = b"".join(pieces)
    assert store.read_data(queue_id) == data
    got = store.get(queue_id)
    assert got is not None and got.size == len(data) and got.eightbit
    with store.engine.connect() as conn:
        sizes = conn.execute(sa.select(sa.func.length(bodies.c.data)).order_by(bodies.c.seq))
        full, last = divmod(len(data), BODY_CHUNK)
        assert [size for (size,) in sizes] == [BODY_CHUNK] * full + [last]


def test_a_body_failing_mid_stream_stores_nothing(store: SqlStore) -> None:
    pieces = [b"Subject: s\r\n\r\n", b"a" * (3 * BODY_CHUNK), b"never"]
    with pytest.raises(DataError):
        store.enqueue(_streamed(pieces, fail_after=2), T0)
    assert rows(store, bodies) == 0 and rows(store, recipients) == 0
    assert list_messages(store) == []


def test_the_fast_insert_runs_on_any_dbapi_connection(store: SqlStore) -> None:
    """fastpath.insert through the driver's own connection and paramstyle (sqlite3's qmark,
    psycopg's format): what a psycopg fast path reuses."""
    import sqlite3

    from relayd.store import fastpath

    raw = store.engine.raw_connection()
    try:
        driver = raw.driver_connection
        duplicate: type[Exception]
        if isinstance(driver, sqlite3.Connection):
            style, duplicate, savepoint = "qmark", sqlite3.IntegrityError, False
        else:
            import psycopg

            style, duplicate, savepoint = "format", psycopg.errors.UniqueViolation, True
        new = _streamed([b"Subject: s\r\n\r\n", b"x" * (BODY_CHUNK + 1)])
        new.overrides = (("port", "2525"),)
        queue_id = fastpath.insert(
            driver, new, T0, paramstyle=style, duplicate=duplicate, savepoint=savepoint
        )
        raw.commit()
    finally:
        raw.close()
    got = store.get(queue_id)
    assert got is not None and got.size == 14 + BODY_CHUNK + 1 and not got.eightbit
    assert got.overrides == (("port", "2525"),)
    assert store.read_data(queue_id) == b"Subject: s\r\n\r\n" + b"x" * (BODY_CHUNK + 1)
