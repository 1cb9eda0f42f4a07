"""tracker: initial schema.

Revision ID: tracker_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_decisions",
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_key", sa.String(length=100), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint(
            "trigger_id", "workflow_key", "contact_id", name=op.f("pk_trigger_decisions")
        ),
        schema="tracker",
    )
    op.create_table(
        "trigger_deliveries",
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("sent", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_trigger_deliveries")),
        schema="tracker",
    )
    op.create_index(
        op.f("ix_tracker_trigger_deliveries_trigger_id"),
        "trigger_deliveries",
        ["trigger_id"],
        unique=False,
        schema="tracker",
    )
    op.create_table(
        "trigger_runs",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_key", sa.String(length=100), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_trigger_runs")),
        schema="tracker",
    )
    op.create_index(
        op.f("ix_tracker_trigger_runs_trigger_id"),
        "trigger_runs",
        ["trigger_id"],
        unique=False,
        schema="tracker",
    )
    op.create_table(
        "triggers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.Column("event_name", sa.String(length=128), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triggers")),
        schema="tracker",
    )
    op.create_index(
        "ix_triggers_team_created", "triggers", ["team_id", "created_at"], unique=False, schema="tracker"
    )


def downgrade() -> None:
    op.drop_index("ix_triggers_team_created", table_name="triggers", schema="tracker")
    op.drop_table("triggers", schema="tracker")
    op.drop_index(op.f("ix_tracker_trigger_runs_trigger_id"), table_name="trigger_runs", schema="tracker")
    op.drop_table("trigger_runs", schema="tracker")
    op.drop_index(
        op.f("ix_tracker_trigger_deliveries_trigger_id"), table_name="trigger_deliveries", schema="tracker"
    )
    op.drop_table("trigger_deliveries", schema="tracker")
    op.drop_table("trigger_decisions", schema="tracker")
