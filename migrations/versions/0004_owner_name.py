"""The submitting user's name beside their uid.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

`messages.submitted_user`: the password database's name of `submitted_uid` when the message was
submitted (relayd-sendmail looks it up; NULL when the uid had no entry), so listings show who
queued a message by name even after the account is gone. NULL for existing rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("submitted_user", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("submitted_user")
