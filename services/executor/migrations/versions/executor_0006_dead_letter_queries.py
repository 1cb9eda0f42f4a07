"""executor: the dead-letter queue's size (letters in status dead) and its list filtered by
status, newest first, read from one index.

Revision ID: executor_0006
Revises: executor_0005
"""

from alembic import op

revision = "executor_0006"
down_revision = "executor_0005"
branch_labels = None
depends_on = None
SCHEMA = "executor"


def upgrade() -> None:
    op.create_index(
        "ix_executor_dead_letters_team_status",
        "dead_letters",
        ["team_id", "status", "failed_at", "id"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("ix_executor_dead_letters_team_status", table_name="dead_letters", schema=SCHEMA)
