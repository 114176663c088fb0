"""Statements compiled once for a dialect and run on the driver's cursor (the runner's hot writes).

A group commit runs a few statements per message; through SQLAlchemy's execute each costs about
0.25 ms of cache-key and parameter work, through the driver's cursor about 0.02 ms. The SQL is
still SQLAlchemy's own compilation of the Core statements in `tables.py` terms, for whatever
dialect the engine has; only execution skips the layers. No bind processing happens, so the
parameters must already be what the driver takes (JSON as text; bools, floats, str, None).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
        # The arguments in that order, picked in C (a group commit makes four sets a message).
        self._pick = operator.itemgetter(*self._order) if self._order else None
        self._error = dialect.loaded_dbapi.Error

    def args(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        merged = {**self._constants, **params}
        if self._order is None:
            return merged
        if self._pick is None:
            return ()
        picked = self._pick(merged)
        return picked if len(self._order) > 1 else (picked,)  # one name: a bare value

    def fetch(self, conn: sa.Connection, args: Any) -> list[Any]:
        """Run once with arguments made by `args`; every row, as the driver returns it."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, args)
            return list(cursor.fetchall())
        except self._error as exc:
            raise self._wrap(exc) from None
        finally:
            cursor.close()

    def rows(self, conn: sa.Connection, args: Any, batch: int = 2_000) -> Iterator[Any]:
        """Run once; the rows as the driver returns them, fetched `batch` at a time."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, args)
            while found := cursor.fetchmany(batch):
                yield from found
        except self._error as exc:
            raise self._wrap(exc) from None
        finally:
            cursor.close()

    def each_row(self, conn: sa.Connection, batch: Sequence[Any]) -> list[Any]:
        """Run once for each argument set; the first row of each (None where there is none)."""
        cursor = conn.connection.cursor()
        try:
            found = []
            for args in batch:
                cursor.execute(self.sql, args)
                found.append(cursor.fetchone())
            return found
        except self._error as exc:
            raise self._wrap(exc) from None
        finally:
            cursor.close()

    def each(self, conn: sa.Connection, batch: Sequence[Any]) -> list[bool]:
        """Run once for each argument set made by `args`; whether each changed a row."""
        cursor = conn.connection.cursor()
        changed = []
        try:
            for args in batch:
                cursor.execute(self.sql, args)
                changed.append(cursor.rowcount > 0)
        except self._error as exc:
            raise self._wrap(exc) from None
        finally:
            cursor.close()
        return changed

    def executemany(self, conn: sa.Connection, batch: Sequence[Any]) -> None:
        """Run for many argument sets made by `args`."""
        if not batch:
            return
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(self.sql, batch)
        except self._error as exc:
            raise self._wrap(exc) from None
        finally:
            cursor.close()

    def _wrap(self, exc: Exception) -> sa.exc.StatementError:
        """The driver's error as SQLAlchemy would raise it, for the store's error mapping."""
        return sa.exc.DBAPIError.instance(self.sql, None, exc, self._error)


@dataclass(frozen=True)
class PreparedRecord:
    """One attempt record as driver arguments: the message's new state, its attempts row and
    its recipients' results (see `SqlStore.prepare`)."""

    finish: Any
    attempt: Any  # None: the message is settled without an attempt
    late: Any  # the attempt row as written when the lease was lost meanwhile
    recipients: list[Any]


@dataclass(frozen=True)
class ClaimedRows:
    """A claim's rows as the driver returned them (see `SqlStore.claim_rows`)."""

    messages: list[Any]
    recipients: list[Any]
