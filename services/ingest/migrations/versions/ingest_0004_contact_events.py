"""ingest: a contact's events found by the contact (right to erasure).

Revision ID: ingest_0004
Revises: ingest_0003
"""

from alembic import op

revision = "ingest_0004"
down_revision = "ingest_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_team_contact", "events", ["team_id", "contact_id"], schema="ingest")


def downgrade() -> None:
    op.drop_index("ix_events_team_contact", table_name="events", schema="ingest")
