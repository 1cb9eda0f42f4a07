"""tracker: indexes for erasure (a contact's triggers, decisions and runs; a run's deliveries)
and for retention (every fact table found by its trigger).

Revision ID: tracker_0006
Revises: tracker_0004
"""

from alembic import op

revision = "tracker_0006"
# Written beside tracker_0005 (not merged yet): when it is, this one follows it instead.
down_revision = "tracker_0004"
branch_labels = None
depends_on = None
SCHEMA = "tracker"


def upgrade() -> None:
    op.create_index("ix_tracker_triggers_team_contact", "triggers", ["team_id", "contact_id"], schema=SCHEMA)
    op.create_index(
        "ix_tracker_trigger_decisions_contact", "trigger_decisions", ["contact_id"], schema=SCHEMA
    )
    op.create_index("ix_tracker_trigger_runs_contact", "trigger_runs", ["contact_id"], schema=SCHEMA)
    op.create_index("ix_tracker_trigger_deliveries_run", "trigger_deliveries", ["run_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_tracker_trigger_deliveries_run", table_name="trigger_deliveries", schema=SCHEMA)
    op.drop_index("ix_tracker_trigger_runs_contact", table_name="trigger_runs", schema=SCHEMA)
    op.drop_index("ix_tracker_trigger_decisions_contact", table_name="trigger_decisions", schema=SCHEMA)
    op.drop_index("ix_tracker_triggers_team_contact", table_name="triggers", schema=SCHEMA)
