"""`[retain]`: purge the bodies of old sent and failed mail, and give the space back (SQLite).

A purge deletes `bodies` rows only: the message row, its envelope, recipients and attempts
stay, and a message without a body is "purged" (no schema change). It runs in batches of
`BATCH` rows, one short write transaction each, so a purge of a huge queue never holds the
write lock for long and submissions slip in between.

Giving the space back on SQLite: deleted pages go to the file's free list, which SQLite reuses
but never returns to the filesystem by itself. Of the two ways (a periodic full VACUUM, or
incremental auto-vacuum) relayd uses incremental auto-vacuum, because a full VACUUM rewrites
the whole file and holds the write lock meanwhile, for every purge, however little it freed:

* A new queue file gets `PRAGMA auto_vacuum=INCREMENTAL` (`dialects.py` sets it on every
  connection before the journal mode, the first write to a new file: it only takes effect
  while the file has no table yet).
* After a purge, `reclaim` runs `PRAGMA incremental_vacuum` in steps of `STEP_PAGES` pages
  (each its own short transaction) until the free list is empty, then checkpoints the WAL:
  the checkpoint truncates the database file, and TRUNCATE mode empties the WAL file.
* A file created before this (auto_vacuum NONE) is switched once, by a VACUUM, which is the
  only way to change that mode; the daemon does it in its retention job after a purge, when
  the live data is smallest, never on a delivery path. Submissions wait for it (on the lock
  timeout) like for any other writer.

PostgreSQL: the deleted rows' space (the bodies are TOASTed) is made reusable by autovacuum;
relayd does not run VACUUM FULL, which locks the table (an administrator's choice).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from relayd.store.database import Database
from relayd.store.records import State
from relayd.store.tables import bodies, messages

BATCH = 1_000  # bodies deleted per write transaction
STEP_PAGES = 2_048  # pages (8 MB at 4 KB) moved and cut off per incremental_vacuum transaction
_CHECKPOINT_WAIT_MS = 1_000  # the final TRUNCATE checkpoint waits this long for readers, at most
_NONE, _INCREMENTAL = 0, 2  # PRAGMA auto_vacuum's values (1 is FULL: shrinks at each commit)


def purge_statement(sent_before: float, failed_before: float, batch: int) -> sa.Delete:
    """Delete up to `batch` bodies of sent messages whose last attempt (else their arrival) is
    before `sent_before`, and of failed ones before `failed_before`."""
    when = sa.func.coalesce(messages.c.last_attempt_at, messages.c.created_at)
    cutoff = sa.case((messages.c.state == State.SENT.value, sent_before), else_=failed_before)
    body = bodies.alias("purged")  # not correlated with the DELETE's own `bodies`
    chosen = (
        sa.select(body.c.message_id)
        .join(messages, messages.c.id == body.c.message_id)
        .where(messages.c.state.in_((State.SENT.value, State.FAILED.value)), when < cutoff)
        .limit(batch)
    )
    return bodies.delete().where(bodies.c.message_id.in_(chosen.scalar_subquery()))


def purge(
    db: Database,
    sent_before: float,
    failed_before: float,
    *,
    batch: int = BATCH,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Purge every body due by the cutoffs, `batch` per transaction, until one comes back short
    or `stop()` is true (a daemon stopping); how many were purged.

    Each full batch deleted rows that never come back, so the loop ends, after at most
    (bodies / batch) + 1 transactions.
    """
    statement = purge_statement(sent_before, failed_before, batch)
    purged = 0
    while True:
        with db.transaction("purge message bodies") as conn:
            deleted = conn.execute(statement).rowcount
        purged += deleted
        if deleted < batch or (stop is not None and stop()):
            return purged


def reclaim(db: Database) -> int:
    """Give the free pages of a SQLite queue back to the filesystem; the bytes the database
    file shrank by (0 on PostgreSQL, where autovacuum makes the space reusable)."""
    if db.engine.dialect.name != "sqlite":
        return 0
    with db.driver_connection("give the purged space back") as raw:
        before = _pragma(raw, "page_count")
        if _pragma(raw, "auto_vacuum") == _NONE:
            # Once per file: VACUUM is the only way to turn auto-vacuum on in a file with tables.
            raw.executescript(f"PRAGMA auto_vacuum={_INCREMENTAL}; VACUUM;")
        else:
            # Each step frees up to STEP_PAGES pages; the free list is finite, so this ends.
            for _ in range(_pragma(raw, "freelist_count") // STEP_PAGES + 1):
                # executescript steps the pragma to its end: execute() would free one page.
                raw.executescript(f"PRAGMA incremental_vacuum({STEP_PAGES});")
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # keeps the WAL small
                if not _pragma(raw, "freelist_count"):
                    break
        wait = _pragma(raw, "busy_timeout")
        raw.execute(f"PRAGMA busy_timeout={min(wait, _CHECKPOINT_WAIT_MS)}")
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.execute(f"PRAGMA busy_timeout={wait}")
        return (before - _pragma(raw, "page_count")) * _pragma(raw, "page_size")


def _pragma(raw: sqlite3.Connection, name: str) -> int:
    row: Any = raw.execute(f"PRAGMA {name}").fetchone()
    return int(row[0])
