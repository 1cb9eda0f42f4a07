"""executor: when the event that ended a run's last wait was accepted.

Revision ID: executor_0003
Revises: executor_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "executor_0003"
down_revision = "executor_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("waited_until", sa.DateTime(timezone=True), nullable=True), schema="executor"
    )


def downgrade() -> None:
    op.drop_column("runs", "waited_until", schema="executor")
