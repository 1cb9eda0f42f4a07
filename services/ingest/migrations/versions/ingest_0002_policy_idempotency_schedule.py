"""ingest: idempotency keys, event types, rate counters, cancellation time, due-trigger index.

Revision ID: ingest_0002
Revises: ingest_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "ingest_0002"
down_revision = "ingest_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "key", name=op.f("pk_idempotency_keys")),
        schema="ingest",
    )
    op.create_index(
        "ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], unique=False, schema="ingest"
    )
    op.create_table(
        "event_types",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "name", name=op.f("pk_event_types")),
        schema="ingest",
    )
    op.create_table(
        "rate_counters",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "window_start", name=op.f("pk_rate_counters")),
        schema="ingest",
    )
    op.add_column(
        "triggers", sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True), schema="ingest"
    )
    op.create_index(
        "ix_triggers_due",
        "triggers",
        ["scheduled_for"],
        unique=False,
        schema="ingest",
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.create_index(
        "ix_triggers_team_created", "triggers", ["team_id", "created_at"], unique=False, schema="ingest"
    )


def downgrade() -> None:
    op.drop_index("ix_triggers_team_created", table_name="triggers", schema="ingest")
    op.drop_index("ix_triggers_due", table_name="triggers", schema="ingest")
    op.drop_column("triggers", "cancelled_at", schema="ingest")
    op.drop_table("rate_counters", schema="ingest")
    op.drop_table("event_types", schema="ingest")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys", schema="ingest")
    op.drop_table("idempotency_keys", schema="ingest")
