"""The `relayd-sendmail` console script: no garbage collection, main(), no interpreter teardown."""

from __future__ import annotations

import gc
import sys


def run() -> None:
    """Entry point of `relayd-sendmail`: exits with main()'s sysexits code.

    A submission is a short process that makes no reference cycles worth collecting: the
    collector is off before relayd's modules are imported (it would otherwise run during the
    imports). After a submission `main` ends the process itself with os._exit once its output
    is flushed and the message committed; every other mode turns the collector back on and
    returns here for an ordinary exit.
    """
    gc.disable()
    from relayd.submission.sendmail import main  # after gc.disable(): imports make no GC work

    sys.exit(main(fast_exit=True))
