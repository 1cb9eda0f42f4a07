"""tracker: when a trigger's first step was done (latency figures), and the indexes behind listing
triggers, a contact's timeline and the latency per event name.

Revision ID: tracker_0005
Revises: tracker_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0005"
down_revision = "tracker_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "triggers", sa.Column("first_step_at", sa.DateTime(timezone=True), nullable=True), schema="tracker"
    )
    # The first delivery of the triggers recorded so far.
    op.execute(
        "UPDATE tracker.triggers t SET first_step_at = d.first FROM (SELECT trigger_id, "
        "min(recorded_at) AS first FROM tracker.trigger_deliveries GROUP BY trigger_id) d "
        "WHERE d.trigger_id = t.id"
    )
    # Newest first, keyed on (created_at, id): the list, and its filters by event name and contact
    # (the event-name index also serves the latency figures). (team_id, created_at) is a prefix of
    # the first.
    op.drop_index("ix_triggers_team_created", table_name="triggers", schema="tracker")
    op.create_index(
        "ix_triggers_team_created_id", "triggers", ["team_id", "created_at", "id"], schema="tracker"
    )
    op.create_index(
        "ix_triggers_team_event_created",
        "triggers",
        ["team_id", "event_name", "created_at", "id"],
        schema="tracker",
    )
    op.create_index(
        "ix_triggers_team_contact_created",
        "triggers",
        ["team_id", "contact_id", "created_at", "id"],
        schema="tracker",
    )
    # A contact's runs, and each run's deliveries.
    op.create_index("ix_trigger_runs_contact_id", "trigger_runs", ["contact_id"], schema="tracker")
    op.create_index("ix_trigger_deliveries_run_id", "trigger_deliveries", ["run_id"], schema="tracker")


def downgrade() -> None:
    op.drop_index("ix_trigger_deliveries_run_id", table_name="trigger_deliveries", schema="tracker")
    op.drop_index("ix_trigger_runs_contact_id", table_name="trigger_runs", schema="tracker")
    op.drop_index("ix_triggers_team_contact_created", table_name="triggers", schema="tracker")
    op.drop_index("ix_triggers_team_event_created", table_name="triggers", schema="tracker")
    op.drop_index("ix_triggers_team_created_id", table_name="triggers", schema="tracker")
    op.create_index(
        "ix_triggers_team_created", "triggers", ["team_id", "created_at"], unique=False, schema="tracker"
    )
    op.drop_column("triggers", "first_step_at", schema="tracker")
