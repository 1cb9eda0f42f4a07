"""tracker: triggers of several events (direct workflow triggers) and the events matched so far.

Revision ID: tracker_0002
Revises: tracker_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0002"
down_revision = "tracker_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("triggers", sa.Column("expected_events", sa.Integer(), nullable=True), schema="tracker")
    op.add_column("triggers", sa.Column("contacts", sa.Integer(), nullable=True), schema="tracker")
    op.create_table(
        "trigger_matches",
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("trigger_id", "event_id", name=op.f("pk_trigger_matches")),
        schema="tracker",
    )


def downgrade() -> None:
    op.drop_table("trigger_matches", schema="tracker")
    op.drop_column("triggers", "contacts", schema="tracker")
    op.drop_column("triggers", "expected_events", schema="tracker")
