"""The one queue schema as SQLAlchemy Core tables: messages, bodies, recipients, attempts, budgets.

Times are float Unix seconds (UTC) in DOUBLE columns everywhere. Migrations in
`relayd/migrations` must produce exactly this; `tests/test_migrate.py` compares them.
"""

from __future__ import annotations

import sqlalchemy as sa

from relayd.store.records import RecipientState, State

# Stable constraint names so later migrations (and SQLite batch rebuilds) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only aliases the rowid for a column spelled exactly INTEGER PRIMARY KEY.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FALSE = sa.text("false")  # SQLite (3.23+) and PostgreSQL both read it


def _one_of(column: str, values: type[State] | type[RecipientState]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("queue_id", sa.String(16), nullable=False, unique=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("account", sa.Text(), nullable=False),
    sa.Column("config_file", sa.Text(), nullable=True),  # the -C file, None for the default
    sa.Column("overrides", sa.JSON(), nullable=False),  # [[option, value], ...]
    sa.Column("sender", sa.Text(), nullable=False),  # '' for <>
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("needs_smtputf8", sa.Boolean(), nullable=False),
    sa.Column("needs_8bitmime", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("next_attempt_at", sa.Double(), nullable=True),
    sa.Column("lease_until", sa.Double(), nullable=True),
    sa.Column("lease_owner", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("reason", sa.Text(), nullable=True),  # last error or hold reason
    sa.Column("submitted_uid", sa.Integer(), nullable=True),
    # Revision 0002: what the retry policy and the runner need to remember between attempts.
    sa.Column("last_attempt_at", sa.Double(), nullable=True),
    # The last attempt failed before reaching a server (DNS, connect): retried when the
    # network comes back, and never failed on its lifetime by such an attempt alone.
    sa.Column("network_failure", sa.Boolean(), nullable=False, server_default=FALSE),
    # A lease ended without a result (runner killed): the next attempt may send it twice.
    sa.Column("lease_lost", sa.Boolean(), nullable=False, server_default=FALSE),
    sa.Column("delay_notified", sa.Boolean(), nullable=False, server_default=FALSE),
    # Revision 0003: `relayd queue hold` of a message being sent; applied when its attempt ends.
    sa.Column("hold_reason", sa.Text(), nullable=True),
    # Revision 0004: the password database's name of `submitted_uid` at submission, if any.
    sa.Column("submitted_user", sa.String(64), nullable=True),
    sa.CheckConstraint(_one_of("state", State), name="state"),
)
# Claiming: state = 'queued' AND account = ? AND next_attempt_at <= now ORDER BY next_attempt_at,
# id (revision 0006 added `id`: PostgreSQL's indexes do not end with the row id, SQLite's do);
# the same index serves the scan's per-account seeks, expired-lease scans (state = 'sending')
# and counts by state.
sa.Index(
    "ix_messages_due",
    messages.c.state,
    messages.c.account,
    messages.c.next_attempt_at,
    messages.c.id,
)


def state_off_the_due_index(dialect: sa.Dialect) -> sa.ColumnElement[str]:
    """`messages.state` for a test that must not make SQLite read `ix_messages_due` (its
    planner prefers it for `state IN (...)` even where the query reads rows in another order
    and would sort every queued message first): SQLite's unary `+` disqualifies a term from
    index use. PostgreSQL's planner weighs the choice itself: the plain column there."""
    if dialect.name == "sqlite":
        return sa.literal_column("+messages.state", sa.String())
    return messages.c.state


# The wire bytes apart from the message row (revision 0002): SQLite rewrites a whole record on
# every UPDATE, so a 10 KB body inside `messages` would be copied at each claim and each result.
# In chunks (revision 0005): the body is the `data` of its rows in `seq` order, each at most
# BODY_CHUNK bytes when written (bodies migrated from 0004 are one chunk of any size), so that
# it is written and read a chunk at a time.
bodies = sa.Table(
    "bodies",
    metadata,
    sa.Column(
        "message_id",
        RowId,
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),  # exactly the wire bytes, in order
)

recipients = sa.Table(
    "recipients",
    metadata,
    sa.Column(
        "message_id",
        RowId,
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer(), primary_key=True),
    sa.Column("address", sa.Text(), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("reply_code", sa.Integer(), nullable=True),
    sa.Column("reply_text", sa.Text(), nullable=True),
    sa.CheckConstraint(_one_of("state", RecipientState), name="state"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        RowId,
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("started_at", sa.Double(), nullable=False),
    sa.Column("duration", sa.Double(), nullable=False),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("tls", sa.Boolean(), nullable=False),
    sa.Column("auth", sa.Boolean(), nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=False),
    sa.Column("reply_code", sa.Integer(), nullable=True),
    sa.Column("reply", sa.Text(), nullable=True),
    # [{"position", "address", "state", "code", "text"}, ...]
    sa.Column("recipient_replies", sa.JSON(), nullable=False),
    sa.Column("possible_duplicate", sa.Boolean(), nullable=False),
    # Revision 0003: NULL for a finished attempt; `interrupted` (cut off by a kill, recorded at
    # the next start) or `late` (its lease was lost: the result changed nothing).
    sa.Column("note", sa.String(16), nullable=True),
)
sa.Index("ix_attempts_message_id", attempts.c.message_id, attempts.c.started_at)

# Revision 0007: `[limits.ACCOUNT]` budgets, shared by every daemon on the queue. One row per
# account and window (`kind` messages or recipients, `seconds` its length): a fixed window that
# began at `started_at` and has `used` of its budget. Changed only under the row's lock.
rate_budgets = sa.Table(
    "rate_budgets",
    metadata,
    sa.Column("account", sa.Text(), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("seconds", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("started_at", sa.Double(), nullable=False),
    sa.Column("used", sa.BigInteger(), nullable=False),
)

# Revision 0007: an account paused by a provider's rate-limit reply until `paused_until`;
# `level` counts the pauses since its last success (each one twice as long as the one before).
rate_pauses = sa.Table(
    "rate_pauses",
    metadata,
    sa.Column("account", sa.Text(), primary_key=True),
    sa.Column("paused_until", sa.Double(), nullable=False),
    sa.Column("level", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
)
