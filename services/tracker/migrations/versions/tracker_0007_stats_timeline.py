"""tracker: the stats timeline (GET /api/v1/stats/timeline): the bus's queue lag sampled over
time, and a window's deliveries read by when they were recorded (the index carries what the
timeline counts, so the deliveries themselves are not read).

Revision ID: tracker_0007
Revises: tracker_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0007"
down_revision = "tracker_0006"
branch_labels = None
depends_on = None
SCHEMA = "tracker"


def upgrade() -> None:
    op.create_table(
        "queue_lag_samples",
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("oldest_age_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sampled_at", name=op.f("pk_queue_lag_samples")),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_trigger_deliveries_recorded",
        "trigger_deliveries",
        ["recorded_at"],
        schema=SCHEMA,
        postgresql_include=["trigger_id", "channel", "sent"],
    )


def downgrade() -> None:
    op.drop_index("ix_trigger_deliveries_recorded", table_name="trigger_deliveries", schema=SCHEMA)
    op.drop_table("queue_lag_samples", schema=SCHEMA)
