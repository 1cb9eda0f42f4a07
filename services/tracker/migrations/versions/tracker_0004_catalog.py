"""tracker: the event catalog: event names with their sources, JSON paths and types (schema
hints and drift), PII flags and reviews, redacted examples, and the events already counted.

Revision ID: tracker_0004
Revises: tracker_0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "tracker_0004"
down_revision = "tracker_0003"
branch_labels = None
depends_on = None


def _seen() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "catalog_events",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        *_seen(),
        sa.Column("truncated", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("team_id", "name", name=op.f("pk_catalog_events")),
        schema="tracker",
    )
    op.create_table(
        "catalog_sources",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("source_type", sa.String(length=64), nullable=False),
        *_seen(),
        sa.PrimaryKeyConstraint("team_id", "name", "source_type", name=op.f("pk_catalog_sources")),
        schema="tracker",
    )
    op.create_table(
        "catalog_paths",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        *_seen(),
        sa.Column("pii_kinds", postgresql.ARRAY(sa.String(length=16)), server_default="{}", nullable=False),
        sa.Column("pii_review", sa.String(length=16), server_default="", nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("team_id", "name", "path", name=op.f("pk_catalog_paths")),
        schema="tracker",
    )
    op.create_table(
        "catalog_path_types",
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("json_type", sa.String(length=16), nullable=False),
        *_seen(),
        sa.PrimaryKeyConstraint("team_id", "name", "path", "json_type", name=op.f("pk_catalog_path_types")),
        schema="tracker",
    )
    op.create_table(
        "catalog_examples",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("source_type", sa.String(length=64), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_catalog_examples")),
        schema="tracker",
    )
    op.create_index(
        "ix_catalog_examples_team_name_accepted",
        "catalog_examples",
        ["team_id", "name", "accepted_at"],
        schema="tracker",
    )
    op.create_index(
        "ix_catalog_examples_team_contact", "catalog_examples", ["team_id", "contact_id"], schema="tracker"
    )
    op.create_index(
        "ix_catalog_examples_team_accepted", "catalog_examples", ["team_id", "accepted_at"], schema="tracker"
    )
    op.create_table(
        "catalog_applied_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_catalog_applied_events")),
        schema="tracker",
    )
    op.create_index(
        "ix_catalog_applied_events_accepted", "catalog_applied_events", ["accepted_at"], schema="tracker"
    )


def downgrade() -> None:
    op.drop_table("catalog_applied_events", schema="tracker")
    op.drop_table("catalog_examples", schema="tracker")
    op.drop_table("catalog_path_types", schema="tracker")
    op.drop_table("catalog_paths", schema="tracker")
    op.drop_table("catalog_sources", schema="tracker")
    op.drop_table("catalog_events", schema="tracker")
