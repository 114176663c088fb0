"""Statements compiled once for a dialect and run on the driver's cursor (the runner's hot writes).

A group commit runs a few statements per message; through SQLAlchemy's execute each costs about
0.25 ms of cache-key and parameter work, through the driver's cursor about 0.02 ms. The SQL is
still SQLAlchemy's own compilation of the Core statements in `tables.py` terms, for whatever
dialect the engine has; only execution skips the layers. No bind processing happens, so the
parameters must already be what the driver takes (JSON as text; bools, floats, str, None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa


class Prepared:
    """One statement compiled for `dialect`, with its constant parameters filled in."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._constants = dict(compiled.params)  # e.g. `attempts + 1`'s 1, `lease_owner=NULL`
        # The bind names in order for positional paramstyles (SQLite's qmark); None for named
        # ones (psycopg's pyformat takes the mapping itself).
        self._order: Sequence[str] | None = getattr(compiled, "positiontup", None)
        self._error = dialect.loaded_dbapi.Error

    def args(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        merged = {**self._constants, **params}
        if self._order is None:
            return merged
        return tuple(merged[name] for name in self._order)

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> Any:
        """Run once in `conn`'s transaction; the driver's cursor (for fetchone/rowcount)."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, self.args(params))
        except self._error as exc:
            raise self._wrap(exc, params) from None
        return cursor

    def executemany(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        cursor = conn.connection.cursor()
        try:
            batch: Any = [self.args(row) for row in rows]  # all tuples, or all mappings
            cursor.executemany(self.sql, batch)
        except self._error as exc:
            raise self._wrap(exc, rows[0]) from None
        finally:
            cursor.close()

    def _wrap(self, exc: Exception, params: Mapping[str, Any]) -> sa.exc.StatementError:
        """The driver's error as SQLAlchemy would raise it, for the store's error mapping."""
        return sa.exc.DBAPIError.instance(self.sql, dict(params), exc, self._error)
