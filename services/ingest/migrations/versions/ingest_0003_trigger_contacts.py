"""ingest: how many contacts a direct workflow trigger has.

Revision ID: ingest_0003
Revises: ingest_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "ingest_0003"
down_revision = "ingest_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("triggers", sa.Column("contacts", sa.Integer(), nullable=True), schema="ingest")


def downgrade() -> None:
    op.drop_column("triggers", "contacts", schema="ingest")
