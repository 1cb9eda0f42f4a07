"""executor: indexes for retention (finished runs and feed items by age) and for erasure (a
contact's runs, feed items, and its runs' dead letters).

Revision ID: executor_0005
Revises: executor_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "executor_0005"
down_revision = "executor_0004"
branch_labels = None
depends_on = None
SCHEMA = "executor"


def upgrade() -> None:
    op.create_index(
        "ix_executor_runs_team_finished",
        "runs",
        ["team_id", "finished_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index("ix_executor_runs_team_contact", "runs", ["team_id", "contact_id"], schema=SCHEMA)
    op.create_index(
        "ix_executor_feed_items_team_created", "feed_items", ["team_id", "created_at"], schema=SCHEMA
    )
    op.create_index(
        "ix_executor_feed_items_team_contact", "feed_items", ["team_id", "contact_id"], schema=SCHEMA
    )
    op.create_index("ix_executor_dead_letters_run", "dead_letters", ["run_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_executor_dead_letters_run", table_name="dead_letters", schema=SCHEMA)
    op.drop_index("ix_executor_feed_items_team_contact", table_name="feed_items", schema=SCHEMA)
    op.drop_index("ix_executor_feed_items_team_created", table_name="feed_items", schema=SCHEMA)
    op.drop_index("ix_executor_runs_team_contact", table_name="runs", schema=SCHEMA)
    op.drop_index("ix_executor_runs_team_finished", table_name="runs", schema=SCHEMA)
