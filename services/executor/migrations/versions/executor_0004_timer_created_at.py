"""executor: when each timer was made (a wait's look-back waits until it is old enough).

Revision ID: executor_0004
Revises: executor_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "executor_0004"
down_revision = "executor_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "timers",
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        schema="executor",
    )


def downgrade() -> None:
    op.drop_column("timers", "created_at", schema="executor")
