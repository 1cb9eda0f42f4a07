"""tracker: a contact's decisions found by the contact (right to erasure). A contact's triggers,
runs and deliveries are found by tracker_0005's indexes; retention reads triggers by age through
them too, and every fact table by its trigger.

Revision ID: tracker_0006
Revises: tracker_0005
"""

from alembic import op

revision = "tracker_0006"
down_revision = "tracker_0005"
branch_labels = None
depends_on = None
SCHEMA = "tracker"


def upgrade() -> None:
    op.create_index(
        "ix_tracker_trigger_decisions_contact", "trigger_decisions", ["contact_id"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("ix_tracker_trigger_decisions_contact", table_name="trigger_decisions", schema=SCHEMA)
