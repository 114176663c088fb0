"""Alembic environment: run the revisions on the connection `relayd.store.migrate` holds.

`migrate.ensure_schema` opens the transaction, takes the migration lock and passes the
connection in `config.attributes["connection"]`; the upgrade joins that transaction. Developers
running the `alembic` command get an engine from `sqlalchemy.url` instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from relayd.store.dialects import is_sqlite, make_engine
from relayd.store.tables import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later revisions rebuild tables in batch mode.
        render_as_batch=is_sqlite(connection),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if not url:
        raise SystemExit("set sqlalchemy.url (alembic -x or alembic.ini) to a relayd database")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
