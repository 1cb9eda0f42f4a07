"""executor: timers and waits, in-app feeds, dead letters, channel providers, dev messages.

Revision ID: executor_0002
Revises: executor_0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "executor_0002"
down_revision = "executor_0001"
branch_labels = None
depends_on = None

SCHEMA = "executor"


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("replays", sa.Integer(), server_default="0", nullable=False), schema=SCHEMA
    )
    op.create_table(
        "timers",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=200), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("caught_up", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["executor.runs.id"], name=op.f("fk_timers_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "step_id", name=op.f("pk_timers")),
        schema=SCHEMA,
    )
    op.create_index("ix_executor_timers_due_at", "timers", ["due_at"], schema=SCHEMA)
    op.create_index(
        "ix_executor_timers_waits",
        "timers",
        ["team_id", "event", "contact_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("kind = 'wait'"),
    )
    op.create_index(
        "ix_executor_timers_not_caught_up",
        "timers",
        ["run_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("kind = 'wait' AND NOT caught_up"),
    )
    op.create_table(
        "feed_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_items")),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_executor_feed_items_contact",
        "feed_items",
        ["team_id", "external_id", "created_at"],
        schema=SCHEMA,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        schema=SCHEMA,
    )
    op.create_index("ix_executor_dead_letters_team", "dead_letters", ["team_id", "failed_at"], schema=SCHEMA)
    op.create_table(
        "channel_providers",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "channel", name=op.f("pk_channel_providers")),
        schema=SCHEMA,
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_webhook_secrets")),
        schema=SCHEMA,
    )
    op.create_table(
        "dev_messages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("to", sa.String(length=255), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dev_messages")),
        schema=SCHEMA,
    )
    op.create_index("ix_executor_dev_messages_team", "dev_messages", ["team_id", "created_at"], schema=SCHEMA)


def downgrade() -> None:
    for table in (
        "dev_messages",
        "webhook_secrets",
        "channel_providers",
        "dead_letters",
        "feed_items",
        "timers",
    ):
        op.drop_table(table, schema=SCHEMA)
    op.drop_column("runs", "replays", schema=SCHEMA)
