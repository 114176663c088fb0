"""Which queue database this process uses: relayd.toml's `database`, else the environment.

On the sendmail hot path: without a relayd.toml the settings module (and its dataclasses) is
never imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from relayd import paths
from relayd.errors import ConfigError


def database_url(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The queue database: relayd.toml's `database` or `$RELAYD_DATABASE_URL`, else the default.

    For the sendmail path: without a relayd.toml (the common case) the settings module is never
    imported; with one, the whole file is loaded and checked (ConfigError, exit 78).
    """
    env = os.environ if environ is None else environ
    if paths.settings_file(env)[0] is not None:
        from relayd import settings  # only when there is a file to check

        return settings.load(env, uid=uid).database
    override = env.get("RELAYD_DATABASE_URL")
    if override:
        try:
            return paths.check_database_url(override)
        except ConfigError as exc:
            raise ConfigError(f"RELAYD_DATABASE_URL: {exc.message}") from None
    return paths.default_database_url(env, uid)
