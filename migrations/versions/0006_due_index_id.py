"""The due index ends with the row id: claims read it in their exact order on every database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

A claim takes the earliest due messages of an account, ties broken by row id (`ORDER BY
next_attempt_at, id`). SQLite's indexes end with the row id anyway; PostgreSQL's do not, so
without `id` in `ix_messages_due` it read and sorted all of the account's queued mail to find the
first hundred. The index is rebuilt with `id` as its last column.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_messages_due", table_name="messages")
    op.create_index("ix_messages_due", "messages", ["state", "account", "next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_messages_due", table_name="messages")
    op.create_index("ix_messages_due", "messages", ["state", "account", "next_attempt_at"])
