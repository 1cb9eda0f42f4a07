"""tracker: counters on each trigger, kept as facts arrive, so a fact costs the same whatever the
trigger's size (a direct trigger may have 10,000 runs); runs' decisions found by run id.

Revision ID: tracker_0003
Revises: tracker_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0003"
down_revision = "tracker_0002"
branch_labels = None
depends_on = None

COUNTERS = ("events_matched", "runs_expected", "runs_finished", "runs_failed")


def upgrade() -> None:
    for name in COUNTERS:
        op.add_column(
            "triggers",
            sa.Column(name, sa.Integer(), server_default="0", nullable=False),
            schema="tracker",
        )
    op.add_column(
        "triggers", sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True), schema="tracker"
    )
    op.create_index(
        "ix_trigger_decisions_run_id", "trigger_decisions", ["run_id"], unique=False, schema="tracker"
    )
    # The counters of the triggers recorded so far, from their facts.
    op.execute(
        "UPDATE tracker.triggers t SET runs_expected = a.expected, runs_finished = a.finished, "
        "runs_failed = a.failed, last_finished_at = a.last "
        "FROM (SELECT d.trigger_id, count(d.run_id) AS expected, "
        "count(r.run_id) FILTER (WHERE r.finished_at IS NOT NULL) AS finished, "
        "count(r.run_id) FILTER (WHERE r.status = 'failed') AS failed, max(r.finished_at) AS last "
        "FROM tracker.trigger_decisions d LEFT JOIN tracker.trigger_runs r ON r.run_id = d.run_id "
        "WHERE d.matched GROUP BY d.trigger_id) a WHERE a.trigger_id = t.id"
    )
    op.execute(
        "UPDATE tracker.triggers t SET events_matched = m.n "
        "FROM (SELECT trigger_id, count(*) AS n FROM tracker.trigger_matches GROUP BY trigger_id) m "
        "WHERE m.trigger_id = t.id"
    )


def downgrade() -> None:
    op.drop_index("ix_trigger_decisions_run_id", table_name="trigger_decisions", schema="tracker")
    op.drop_column("triggers", "last_finished_at", schema="tracker")
    for name in reversed(COUNTERS):
        op.drop_column("triggers", name, schema="tracker")
