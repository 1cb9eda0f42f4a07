"""ingest: initial schema.

Revision ID: ingest_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.migrations import create_outbox_table

revision = "ingest_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("custom_fields", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.String(length=128)), nullable=False),
        sa.Column("topics", postgresql.ARRAY(sa.String(length=128)), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        schema="ingest",
    )
    op.create_index("ix_contacts_team_email", "contacts", ["team_id", "email"], unique=False, schema="ingest")
    op.create_index(
        "uq_contacts_team_email_anonymous",
        "contacts",
        ["team_id", "email"],
        unique=True,
        schema="ingest",
        postgresql_where=sa.text("external_id IS NULL AND email IS NOT NULL"),
    )
    op.create_index(
        "uq_contacts_team_external_id",
        "contacts",
        ["team_id", "external_id"],
        unique=True,
        schema="ingest",
        postgresql_where=sa.text("external_id IS NOT NULL"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("variables", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("source", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        schema="ingest",
    )
    op.create_index(
        "ix_events_team_accepted_at", "events", ["team_id", "accepted_at"], unique=False, schema="ingest"
    )
    create_outbox_table("ingest")
    op.create_table(
        "triggers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triggers")),
        sa.UniqueConstraint("event_id", name=op.f("uq_triggers_event_id")),
        schema="ingest",
    )


def downgrade() -> None:
    op.drop_table("triggers", schema="ingest")
    op.drop_table("outbox", schema="ingest")
    op.drop_index("ix_events_team_accepted_at", table_name="events", schema="ingest")
    op.drop_table("events", schema="ingest")
    op.drop_index(
        "uq_contacts_team_external_id",
        table_name="contacts",
        schema="ingest",
        postgresql_where=sa.text("external_id IS NOT NULL"),
    )
    op.drop_index(
        "uq_contacts_team_email_anonymous",
        table_name="contacts",
        schema="ingest",
        postgresql_where=sa.text("external_id IS NULL AND email IS NOT NULL"),
    )
    op.drop_index("ix_contacts_team_email", table_name="contacts", schema="ingest")
    op.drop_table("contacts", schema="ingest")
