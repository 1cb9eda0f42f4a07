"""matcher: deleted workflows and per-contact cooldowns.

Revision ID: matcher_0002
Revises: matcher_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "matcher_0002"
down_revision = "matcher_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workflow_versions",
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        schema="matcher",
    )
    op.create_table(
        "cooldowns",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("workflow_key", sa.String(length=100), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "workflow_key", "contact_id", name=op.f("pk_cooldowns")),
        schema="matcher",
    )


def downgrade() -> None:
    op.drop_table("cooldowns", schema="matcher")
    op.drop_column("workflow_versions", "deleted", schema="matcher")
