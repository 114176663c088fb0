"""A hold asked for while a message is being sent; a note on attempts (interrupted, late).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

`messages.hold_reason`: `relayd queue hold` of a `sending` message is kept here and applied when
its attempt ends (SPEC §4), so the attempt's result and the hold never contradict each other.
`attempts.note`: an attempt cut off by a kill (`interrupted`) or a result that came back after
its lease was lost (`late`), which changed nothing. Both are NULL for existing rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("hold_reason", sa.Text(), nullable=True))
    op.add_column("attempts", sa.Column("note", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("note")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("hold_reason")
