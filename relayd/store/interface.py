"""The store's narrow interface, by role: what the runner, the daemon and the queue commands use.

`SqlStore` implements every role on SQLite and PostgreSQL; `tests/test_store_contract.py` checks
that (mypy) and runs the contract on both. Each method is one transaction. Time is always a
parameter (`now`), never read by the store. Claimed rows are leased (state `sending`, owner,
expiry), never deleted. Database failures surface as QueueError (exit 73 or 75).

Importing this module costs no SQLAlchemy: the driver-shaped types are for annotations only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from relayd.store.queued import (
    AccountDue,
    Attempt,
    AttemptRecord,
    Lease,
    MessageState,
    QueuedMessage,
)
from relayd.store.records import NewMessage, State

if TYPE_CHECKING:
    import sqlalchemy as sa

    from relayd.store.listing import Listed
    from relayd.store.prepared import ClaimedRows, PreparedRecord


class MessageStore(Protocol):
    """What both sides do to messages named by queue id: read one, hold some."""

    def get(self, queue_id: str) -> QueuedMessage | None:
        """The message with `queue_id` (without its body), or None."""
        ...

    def hold(self, queue_ids: Iterable[str], reason: str) -> tuple[str, ...]:
        """Hold queued messages now, and messages being sent when their attempt ends (the
        attempt's result is recorded; a retry becomes `held`); those held or to be held."""
        ...

    def read_data_chunks(self, queue_id: str) -> Iterator[bytes]:
        """The stored wire bytes of `queue_id` a chunk at a time, a few rows per short read
        (nothing if there is no such message or no body): the body is never whole in memory."""
        ...


class RunnerStore(MessageStore, Protocol):
    """What a delivery pass uses: the daemon's runner, an in-process flush, `sendmail -odi`."""

    def writing(self, action: str) -> AbstractContextManager[sa.Connection]:
        """A write transaction (for `relayd.store.budget`'s rate limits); database errors
        become QueueError naming `action`."""
        ...

    def claim_due(
        self,
        account: str | None,
        now: float,
        lease_seconds: float,
        owner: str,
        limit: int = 100,
        *,
        queue_ids: Sequence[str] | None = None,
    ) -> Sequence[QueuedMessage]:
        """Lease up to `limit` queued messages due at `now` to `owner` until `now` plus
        `lease_seconds`, earliest due first: of `account`, or of any if None; only those of
        `queue_ids` when given. Atomic across processes and hosts: two runners never get the
        same message, nor wait on each other."""
        ...

    def claim_rows(
        self,
        account: str | None,
        now: float,
        lease_seconds: float,
        owner: str,
        limit: int,
        *,
        queue_ids: Sequence[str] | None = None,
    ) -> ClaimedRows:
        """`claim_due`'s database half (for a thread): the claimed rows as the driver gives
        them, turned into records by `build_claimed` (on the caller's event loop, since a
        thread busy in Python holds the GIL that every socket call of the loop needs)."""
        ...

    def build_claimed(self, claimed: ClaimedRows) -> list[QueuedMessage]:
        """The records of `claim_rows`' rows, earliest due first."""
        ...

    def read_data_many(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored wire bytes of several messages in one read (a runner's batch)."""
        ...

    def read_body_end(self, queue_id: str) -> bytes | None:
        """The last byte of `queue_id`'s body (b"" if it is empty); None if the message or its
        body is gone."""
        ...

    def extend_lease(self, owner: str, until: float) -> int:
        """Keep `owner`'s claims leased until `until` (renewed while on the wire); how many
        it holds."""
        ...

    def leases(
        self,
        *,
        expired_by: float | None = None,
        owner_prefix: str | None = None,
        keep: Collection[str] = (),
    ) -> list[Lease]:
        """Messages in `sending` with their owners: those whose lease ended by `expired_by`
        and/or whose owner starts with `owner_prefix`; never those of the owners in `keep`
        (claims a live runner is still delivering)."""
        ...

    def release_leases(
        self,
        leases: Sequence[Lease],
        now: float,
        *,
        interrupted: Collection[str] = (),
        next_attempt_at: float | None = None,
        network_failure: bool | None = None,
    ) -> tuple[str, ...]:
        """Return `leases` (each only while its owner still holds it) to `queued`, or `held`
        where a hold was asked for during the attempt; those returned.

        Those in `interrupted` may have reached the server (on the wire when their runner was
        killed or stopped): each gets an `interrupted` attempt row, and `lease_lost` flags its
        next attempt as a possible duplicate. The others (never on the wire) get no attempt
        row; `next_attempt_at` (only ever later) and `network_failure` apply if given.
        """
        ...

    def defer_due(
        self, account: str, now: float, until: float, *, network_failure: bool
    ) -> tuple[str, ...]:
        """Move every `queued` message of `account` due by `now` to `until` in one statement
        (its destination is dead: one failed connection stands for all); those moved."""
        ...

    def prepare(self, record: AttemptRecord) -> PreparedRecord:
        """`record` ready for `commit_prepared`. Pure Python: a runner calls it on its event
        loop, so the thread that commits holds the GIL only for the driver calls."""
        ...

    def commit_prepared(self, batch: Sequence[PreparedRecord]) -> list[bool]:
        """Commit attempt records in one transaction (a group commit); whether each moved its
        message.

        The message takes the outcome's state, and its recipients their results, only while
        the record's owner still holds its lease (or unconditionally, owner None); then the
        attempt is logged. Otherwise (the lease was lost) nothing changes but an attempt row
        noted `late`. A hold asked for during the attempt turns a retry into `held`. A record
        without an attempt settles its message and logs nothing.
        """
        ...

    def enqueue(self, message: NewMessage, now: float) -> str:
        """Store `message` with all its recipients pending, due at `now`; its queue id."""
        ...

    def enqueue_many(self, batch: Sequence[NewMessage], now: float) -> list[str]:
        """Store `batch` in one transaction (a group commit: one fsync); all or none; their
        queue ids in order."""
        ...


class QueueStore(MessageStore, Protocol):
    """What the user's side uses: `relayd queue …`, `mailq`, `queue flush` and its wait."""

    def read_data(self, queue_id: str) -> bytes | None:
        """The stored wire bytes of `queue_id`; None if there is no such message or its body
        was purged under `[retain]`."""
        ...

    def attempts(self, queue_id: str) -> Sequence[Attempt]:
        """Every attempt logged for `queue_id`, oldest first."""
        ...

    def listing(
        self, states: Collection[State] | None = None, account: str | None = None
    ) -> Iterator[Listed]:
        """Messages in arrival order for a listing, optionally only some states and/or one
        account; read in batches, each in its own read transaction (the first arrives at once
        whatever the depth), each message at most once."""
        ...

    def states_of(self, queue_ids: Collection[str]) -> dict[str, MessageState]:
        """Each existing message's state, account, last and next attempt times and reason."""
        ...

    def owners_of(self, queue_ids: Collection[str]) -> dict[str, int | None]:
        """Each existing message's submitting uid (None: not recorded)."""
        ...

    def release(self, queue_ids: Iterable[str], now: float) -> tuple[str, ...]:
        """Put held messages back in the queue, due at `now`, and cancel a hold still waiting
        for a message's attempt to end; those released."""
        ...

    def make_due(
        self,
        now: float,
        queue_ids: Iterable[str] | None = None,
        account: str | None = None,
        *,
        network_only: bool = False,
    ) -> tuple[str, ...]:
        """Make queued messages (all, some, or one account's) due at `now` (`queue flush`);
        with `network_only`, those whose last attempt never reached a server (the network is
        back). Those made due."""
        ...

    def delete(self, queue_ids: Iterable[str], *, now: float | None = None) -> tuple[str, ...]:
        """Delete messages with their recipients and attempts, in any state; given `now`, not
        one being sent under a lease that is still valid (its runner would record a result
        for a message that is gone, and the server may already have it). Those deleted."""
        ...


class Store(RunnerStore, QueueStore, Protocol):
    """Every role, and what the daemon's scheduler adds: scans, lease sweeps, [retain] purges."""

    def due_summary(self, now: float) -> Sequence[AccountDue]:
        """Per account with queued mail: whether any is due at `now`, and its earliest due
        time; from index seeks per account, so a scan costs the same with 1,000,000 queued
        as with ten."""
        ...

    def purge_bodies(
        self, sent_before: float, failed_before: float, *, stop: Callable[[], bool] | None = None
    ) -> int:
        """`[retain]`: delete the bodies of sent messages whose last attempt (else arrival) is
        before `sent_before` and of failed ones before `failed_before`, in short batches (the
        next one not once `stop()` is true); the messages, recipients and attempts stay
        (`read_data` then gives None). How many."""
        ...

    def reclaim_space(self) -> int:
        """Give the space of purged bodies back to the filesystem (SQLite: incremental vacuum,
        once a VACUUM for an older file); the bytes the database file shrank by."""
        ...


class ReportStore(Protocol):
    """What the report queries of `relayd.store.reports` run on: one read transaction."""

    def reading(self, action: str = "read the queue") -> AbstractContextManager[sa.Connection]:
        """A read-only transaction; database errors become QueueError naming `action`."""
        ...
