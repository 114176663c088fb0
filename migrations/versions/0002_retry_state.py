"""Bodies in their own table; per-message retry state (last attempt, network failure, lost lease,
delay notice).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

The body moves to `bodies` so that state changes (claims, results) rewrite a small row:
SQLite copies a whole record, blob included, on every UPDATE. The new columns have constant
defaults: existing rows read as "never tried, nothing to remember".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FALSE = sa.text("false")
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bodies",
        sa.Column("message_id", _ROW_ID, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_bodies_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name="pk_bodies"),
    )
    op.execute("INSERT INTO bodies (message_id, data) SELECT id, data FROM messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("data")
    op.add_column("messages", sa.Column("last_attempt_at", sa.Double(), nullable=True))
    for name in ("network_failure", "lease_lost", "delay_notified"):
        op.add_column(
            "messages", sa.Column(name, sa.Boolean(), nullable=False, server_default=_FALSE)
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        for name in ("delay_notified", "lease_lost", "network_failure", "last_attempt_at"):
            batch.drop_column(name)
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=False, server_default=""))
    op.execute(
        "UPDATE messages SET data = (SELECT data FROM bodies WHERE message_id = messages.id)"
    )
    op.drop_table("bodies")
