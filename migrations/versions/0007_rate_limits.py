"""Per-account rate limits: the budgets of `[limits.ACCOUNT]` and the pauses after rate replies.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Two new tables, so that every daemon on one queue (several hosts on PostgreSQL) spends one
budget: `rate_budgets`, a fixed window per account, kind and length with what it has used, and
`rate_pauses`, an account paused by a provider's rate-limit reply and its back-off level. No
existing row changes; the downgrade drops both.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_budgets",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("seconds", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "kind", "seconds", name="pk_rate_budgets"),
    )
    op.create_table(
        "rate_pauses",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("paused_until", sa.Double(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account", name="pk_rate_pauses"),
    )


def downgrade() -> None:
    op.drop_table("rate_pauses")
    op.drop_table("rate_budgets")
