"""Bodies in chunks: a message's wire bytes are rows of at most 64 KiB, in `seq` order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

`bodies` gains `seq`, and its key becomes (message_id, seq), so that a body is written and read
a chunk at a time: a 50 MB message never has to be held whole (SPEC §6). Existing bodies become
their message's one chunk (seq 0); a chunk may exceed 64 KiB, and readers take any size.
The table is rebuilt (a copy) because SQLite cannot change a primary key in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create(name: str, *, chunked: bool) -> None:
    columns: list[sa.Column[object]] = [sa.Column("message_id", _ROW_ID, nullable=False)]
    if chunked:
        columns.append(sa.Column("seq", sa.Integer(), nullable=False))
    key = ("message_id", "seq") if chunked else ("message_id",)
    op.create_table(
        name,
        *columns,
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_bodies_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(*key, name="pk_bodies"),
    )


def _set_aside() -> None:
    """Rename `bodies` to `bodies_old` (and its constraints: PostgreSQL names them per schema)."""
    op.rename_table("bodies", "bodies_old")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE bodies_old RENAME CONSTRAINT pk_bodies TO pk_bodies_old")
        op.execute(
            "ALTER TABLE bodies_old RENAME CONSTRAINT fk_bodies_message_id_messages"
            " TO fk_bodies_old_message_id_messages"
        )


def upgrade() -> None:
    _set_aside()
    _create("bodies", chunked=True)
    op.execute(
        "INSERT INTO bodies (message_id, seq, data) SELECT message_id, 0, data FROM bodies_old"
    )
    op.drop_table("bodies_old")


def downgrade() -> None:
    # One message at a time, joined in Python: SQLite's || would turn blobs into text.
    _set_aside()
    _create("bodies", chunked=False)
    bind = op.get_bind()
    ids = bind.execute(sa.text("SELECT DISTINCT message_id FROM bodies_old")).scalars().all()
    for message_id in ids:
        chunks = bind.execute(
            sa.text("SELECT data FROM bodies_old WHERE message_id = :id ORDER BY seq"),
            {"id": message_id},
        ).scalars()
        bind.execute(
            sa.text("INSERT INTO bodies (message_id, data) VALUES (:id, :data)"),
            {"id": message_id, "data": b"".join(chunks)},
        )
    op.drop_table("bodies_old")
