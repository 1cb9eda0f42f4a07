"""ingest: the contact list (GET /api/v1/contacts), newest first, and its search by a prefix of
the external id or of the (normalized, lowercase) email: text_pattern_ops lets a LIKE 'prefix%'
use the index whatever the database's collation.

Revision ID: ingest_0005
Revises: ingest_0004
"""

from alembic import op

revision = "ingest_0005"
down_revision = "ingest_0004"
branch_labels = None
depends_on = None
SCHEMA = "ingest"


def upgrade() -> None:
    op.create_index("ix_contacts_team_created", "contacts", ["team_id", "created_at", "id"], schema=SCHEMA)
    op.create_index(
        "ix_contacts_team_external_id_prefix",
        "contacts",
        ["team_id", "external_id"],
        schema=SCHEMA,
        postgresql_ops={"external_id": "text_pattern_ops"},
    )
    op.create_index(
        "ix_contacts_team_email_prefix",
        "contacts",
        ["team_id", "email"],
        schema=SCHEMA,
        postgresql_ops={"email": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_contacts_team_email_prefix", table_name="contacts", schema=SCHEMA)
    op.drop_index("ix_contacts_team_external_id_prefix", table_name="contacts", schema=SCHEMA)
    op.drop_index("ix_contacts_team_created", table_name="contacts", schema=SCHEMA)
