"""Which queue database this process uses: `$RELAYD_DATABASE_URL`, relayd.toml's `database`,
else the default.

On the sendmail hot path: relayd.toml is read through `relayd.settings_hot` (its `database` key
only, the file read once a process), never through `relayd.settings` and its dataclasses.
"""

from __future__ import annotations

from relayd import settings_hot

TYPE_CHECKING = False  # the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Mapping


def database_url(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The queue database: `$RELAYD_DATABASE_URL`, else relayd.toml's `database`, else the
    default; a bad value of either is a ConfigError (exit 78) naming it."""
    return settings_hot.database_url(environ, uid)
