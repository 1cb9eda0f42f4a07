"""matcher: segments and who is in them.

Revision ID: matcher_0003
Revises: matcher_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "matcher_0003"
down_revision = "matcher_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("condition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "key", name=op.f("pk_segments")),
        schema="matcher",
    )
    op.create_table(
        "segment_members",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("segment_key", sa.String(length=100), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "segment_key", "contact_id", name=op.f("pk_segment_members")),
        schema="matcher",
    )
    op.create_index(
        "ix_matcher_segment_members_contact", "segment_members", ["team_id", "contact_id"], schema="matcher"
    )


def downgrade() -> None:
    op.drop_table("segment_members", schema="matcher")
    op.drop_table("segments", schema="matcher")
