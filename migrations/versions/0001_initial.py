"""The first queue schema: messages, recipients, attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Written out in full rather than from `tables.metadata`, so that later changes to tables.py
need a new revision (tests/test_migrate.py compares the migrated schema with tables.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_MESSAGE_STATES = "state IN ('queued', 'sending', 'held', 'sent', 'failed')"
_RECIPIENT_STATES = "state IN ('pending', 'sent', 'failed')"


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("queue_id", sa.String(16), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("config_file", sa.Text(), nullable=True),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("needs_smtputf8", sa.Boolean(), nullable=False),
        sa.Column("needs_8bitmime", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("submitted_uid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("queue_id", name=op.f("uq_messages_queue_id")),
        sa.CheckConstraint(_MESSAGE_STATES, name=op.f("ck_messages_state")),
    )
    op.create_index(op.f("ix_messages_due"), "messages", ["state", "account", "next_attempt_at"])

    op.create_table(
        "recipients",
        sa.Column("message_id", _ROW_ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("reply_code", sa.Integer(), nullable=True),
        sa.Column("reply_text", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("message_id", "position", name=op.f("pk_recipients")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_recipients_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(_RECIPIENT_STATES, name=op.f("ck_recipients_state")),
    )

    op.create_table(
        "attempts",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", _ROW_ID, nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("duration", sa.Double(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("auth", sa.Boolean(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=False),
        sa.Column("reply_code", sa.Integer(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("recipient_replies", sa.JSON(), nullable=False),
        sa.Column("possible_duplicate", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_attempts_message_id_messages"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_attempts_message_id"), "attempts", ["message_id", "started_at"])


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_table("recipients")
    op.drop_index(op.f("ix_messages_due"), table_name=op.f("messages"))
    op.drop_table("messages")
