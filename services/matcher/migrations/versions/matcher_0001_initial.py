"""matcher: initial schema.

Revision ID: matcher_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.migrations import create_outbox_table

revision = "matcher_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decided_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_decided_events")),
        schema="matcher",
    )
    op.create_table(
        "match_decisions",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_key", sa.String(length=100), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "workflow_key", name=op.f("pk_match_decisions")),
        schema="matcher",
    )
    create_outbox_table("matcher")
    op.create_table(
        "workflow_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("trigger_event", sa.String(length=128), nullable=False),
        sa.Column("definition", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_versions")),
        sa.UniqueConstraint("team_id", "key", "version", name="uq_workflow_versions_team_key_version"),
        schema="matcher",
    )
    op.create_index(
        "ix_workflow_versions_team_trigger",
        "workflow_versions",
        ["team_id", "trigger_event"],
        unique=False,
        schema="matcher",
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_versions_team_trigger", table_name="workflow_versions", schema="matcher")
    op.drop_table("workflow_versions", schema="matcher")
    op.drop_table("outbox", schema="matcher")
    op.drop_table("match_decisions", schema="matcher")
    op.drop_table("decided_events", schema="matcher")
