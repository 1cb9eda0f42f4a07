"""tenancy: project policies.

Revision ID: tenancy_0002
Revises: tenancy_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "tenancy_0002"
down_revision = "tenancy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_policies",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("event_payload_limit_bytes", sa.Integer(), nullable=False),
        sa.Column("unknown_events", sa.String(length=16), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("idempotency_window", sa.String(length=32), nullable=False),
        sa.Column("plan", sa.String(length=16), nullable=False),
        sa.Column("rate_limit_per_hour", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_project_policies")),
        schema="tenancy",
    )


def downgrade() -> None:
    op.drop_table("project_policies", schema="tenancy")
