"""matcher: indexes for retention (decisions and cooldowns by age) and for erasure (a contact's
decisions and cooldowns).

Revision ID: matcher_0004
Revises: matcher_0003
"""

from alembic import op

revision = "matcher_0004"
down_revision = "matcher_0003"
branch_labels = None
depends_on = None
SCHEMA = "matcher"


def upgrade() -> None:
    op.create_index(
        "ix_matcher_match_decisions_team_decided", "match_decisions", ["team_id", "decided_at"], schema=SCHEMA
    )
    op.create_index(
        "ix_matcher_match_decisions_team_contact", "match_decisions", ["team_id", "contact_id"], schema=SCHEMA
    )
    op.create_index(
        "ix_matcher_decided_events_team_decided", "decided_events", ["team_id", "decided_at"], schema=SCHEMA
    )
    op.create_index(
        "ix_matcher_cooldowns_team_contact", "cooldowns", ["team_id", "contact_id"], schema=SCHEMA
    )
    op.create_index(
        "ix_matcher_cooldowns_team_last_run", "cooldowns", ["team_id", "last_run_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("ix_matcher_cooldowns_team_last_run", table_name="cooldowns", schema=SCHEMA)
    op.drop_index("ix_matcher_cooldowns_team_contact", table_name="cooldowns", schema=SCHEMA)
    op.drop_index("ix_matcher_decided_events_team_decided", table_name="decided_events", schema=SCHEMA)
    op.drop_index("ix_matcher_match_decisions_team_contact", table_name="match_decisions", schema=SCHEMA)
    op.drop_index("ix_matcher_match_decisions_team_decided", table_name="match_decisions", schema=SCHEMA)
