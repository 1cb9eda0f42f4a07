"""How many rows each service holds about one contact, for the erasure and retention tests."""

from __future__ import annotations

import time

import psycopg


def footprint(database_url: str, team_id: str, contact_id: str, external_id: str) -> dict[str, int]:
    """How many rows each table holds about one contact."""
    queries = {
        "ingest.events": "SELECT count(*) FROM ingest.events WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s::uuid",
        "matcher.match_decisions": "SELECT count(*) FROM matcher.match_decisions WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s",
        "matcher.segment_members": "SELECT count(*) FROM matcher.segment_members WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s",
        "executor.runs": "SELECT count(*) FROM executor.runs WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s",
        "executor.run_steps": "SELECT count(*) FROM executor.run_steps s "
        "JOIN executor.runs r ON r.id = s.run_id WHERE r.team_id = %(team)s AND r.contact_id = %(contact)s",
        "executor.feed_items": "SELECT count(*) FROM executor.feed_items WHERE team_id = %(team)s "
        "AND external_id = %(external)s",
        "tracker.triggers": "SELECT count(*) FROM tracker.triggers WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s",
        "tracker.trigger_decisions": "SELECT count(*) FROM tracker.trigger_decisions "
        "WHERE contact_id = %(contact)s",
        "tracker.trigger_runs": "SELECT count(*) FROM tracker.trigger_runs WHERE contact_id = %(contact)s",
        "tracker.catalog_examples": "SELECT count(*) FROM tracker.catalog_examples WHERE team_id = %(team)s "
        "AND contact_id = %(contact)s",
        "tracker.trigger_deliveries": "SELECT count(*) FROM tracker.trigger_deliveries d "
        "JOIN tracker.trigger_runs r ON r.run_id = d.run_id WHERE r.contact_id = %(contact)s",
    }
    parameters = {"team": team_id, "contact": contact_id, "external": external_id}
    with psycopg.connect(database_url) as connection:
        return {
            table: int(connection.execute(query, parameters).fetchone()[0])  # type: ignore[index]
            for table, query in queries.items()
        }


def settled(database_url: str, team_id: str, contact_id: str, external_id: str) -> dict[str, int]:
    """The contact's footprint once it stops changing for a second (system events such as
    herald.mail.send are still being matched and tracked after a trigger completes)."""
    last: dict[str, int] | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = footprint(database_url, team_id, contact_id, external_id)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"the contact's rows kept changing: {last}")
