"""`[retain]` in the daemon: purge old sent and failed bodies, then give the space back.

The lifecycle runs `run` as an APScheduler job a minute after the start (a restarted daemon
delivers first) and then hourly. The store work runs in a thread in short batches (see
`relayd.store.retain`), so the event loop and the runners go on meanwhile. A failure is logged
as one line and the next run tries again; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from relayd.errors import RelaydError
from relayd.settings import Retain
from relayd.store.interface import Store

INTERVAL = 3600.0  # seconds between purges
START_DELAY = 60.0  # seconds from the daemon's start to the first purge

log = logging.getLogger("relayd.daemon.retention")


def purge(
    store: Store, retain: Retain, now: float, stop: Callable[[], bool] = lambda: False
) -> tuple[int, int]:
    """Purge what `retain` says is due at `now` and give the space back, unless `stop()` says
    the daemon is stopping; (bodies purged, bytes the database file shrank by). For a thread."""
    purged = store.purge_bodies(now - retain.sent, now - retain.failed, stop=stop)
    freed = store.reclaim_space() if purged and not stop() else 0
    return purged, freed


async def run(
    store: Store, retain: Retain, now: float, *, stop: Callable[[], bool] = lambda: False
) -> int:
    """One purge in a thread, logged; the bodies purged (0 after a failure, which is logged).
    A daemon stopping (`stop()` true) waits for one batch at most, not for the whole purge."""
    try:
        purged, freed = await asyncio.to_thread(purge, store, retain, now, stop)
    except RelaydError as exc:
        log.error("retain: %s", exc.message)
        return 0
    except Exception as exc:  # housekeeping must never take the daemon down
        detail = (str(exc).strip().splitlines() or [""])[0]
        log.error("retain: %s: %s", type(exc).__name__, detail)
        return 0
    if purged:
        log.info(
            "retain: purged the bodies of %d sent or failed message(s); the queue file shrank"
            " by %.1f MB",
            purged,
            freed / 1e6,
        )
    return purged
