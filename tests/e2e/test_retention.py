"""Retention through the real processes: with a project's retention_days set through the policy
API, every service's own background pass (every second here) purges exactly what is older than
the window (never a run still waiting, nor a trigger still processing), keeps what is newer, and
logs what it purged, per project and per table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack, session_settings, started
from tests.e2e.contact_rows import footprint, settled
from tests.e2e.support import SmtpSink, eventually

RETENTION_DAYS = 30
ORDERS = 2

# Each service's rows of one contact (%(team)s, %(contact)s, %(phone)s, %(external)s), as
# retention sees them: the rows it may purge once they are old, by table.
PURGEABLE = {
    "ingest.events": "SELECT count(*) FROM ingest.events WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s::uuid",
    "ingest.triggers": "SELECT count(*) FROM ingest.triggers t JOIN ingest.events e ON e.id = t.event_id "
    "WHERE e.team_id = %(team)s AND e.contact_id = %(contact)s::uuid",
    "matcher.match_decisions": "SELECT count(*) FROM matcher.match_decisions "
    "WHERE team_id = %(team)s AND contact_id = %(contact)s",
    "matcher.decided_events": "SELECT count(*) FROM matcher.decided_events WHERE team_id = %(team)s "
    "AND (event_id IN (SELECT event_id FROM matcher.match_decisions WHERE contact_id = %(contact)s) "
    "OR event_id IN (SELECT id FROM ingest.events WHERE contact_id = %(contact)s::uuid))",
    "executor.runs": "SELECT count(*) FROM executor.runs WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s AND status <> 'running'",
    "executor.run_steps": "SELECT count(*) FROM executor.run_steps s JOIN executor.runs r ON r.id = s.run_id "
    "WHERE r.team_id = %(team)s AND r.contact_id = %(contact)s AND r.status <> 'running'",
    "executor.feed_items": "SELECT count(*) FROM executor.feed_items WHERE team_id = %(team)s "
    "AND external_id = %(external)s",
    "executor.dev_messages": "SELECT count(*) FROM executor.dev_messages WHERE team_id = %(team)s "
    'AND "to" = %(phone)s',
    "tracker.triggers": "SELECT count(*) FROM tracker.triggers WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s AND status <> 'processing'",
    "tracker.trigger_decisions": "SELECT count(*) FROM tracker.trigger_decisions WHERE trigger_id IN ("
    "SELECT id FROM tracker.triggers WHERE team_id = %(team)s AND contact_id = %(contact)s "
    "AND status <> 'processing')",
    "tracker.trigger_runs": "SELECT count(*) FROM tracker.trigger_runs WHERE trigger_id IN ("
    "SELECT id FROM tracker.triggers WHERE team_id = %(team)s AND contact_id = %(contact)s "
    "AND status <> 'processing')",
    "tracker.trigger_deliveries": "SELECT count(*) FROM tracker.trigger_deliveries WHERE trigger_id IN ("
    "SELECT id FROM tracker.triggers WHERE team_id = %(team)s AND contact_id = %(contact)s "
    "AND status <> 'processing')",
    "tracker.catalog_examples": "SELECT count(*) FROM tracker.catalog_examples WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s",
}
# Moves every row of one contact to %(at)s (decided events first: they are found by the
# decisions and events, whose own times do not matter to them).
BACKDATE = (
    "UPDATE matcher.decided_events SET decided_at = %(at)s WHERE team_id = %(team)s "
    "AND (event_id IN (SELECT event_id FROM matcher.match_decisions WHERE contact_id = %(contact)s) "
    "OR event_id IN (SELECT id FROM ingest.events WHERE contact_id = %(contact)s::uuid))",
    "UPDATE ingest.triggers t SET created_at = %(at)s FROM ingest.events e WHERE e.id = t.event_id "
    "AND e.team_id = %(team)s AND e.contact_id = %(contact)s::uuid",
    "UPDATE ingest.events SET accepted_at = %(at)s WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s::uuid",
    "UPDATE matcher.match_decisions SET decided_at = %(at)s WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s",
    "UPDATE executor.runs SET created_at = %(at)s, finished_at = CASE WHEN finished_at IS NULL THEN NULL "
    "ELSE %(at)s END WHERE team_id = %(team)s AND contact_id = %(contact)s",
    "UPDATE executor.feed_items SET created_at = %(at)s WHERE team_id = %(team)s "
    "AND external_id = %(external)s",
    'UPDATE executor.dev_messages SET created_at = %(at)s WHERE team_id = %(team)s AND "to" = %(phone)s',
    "UPDATE tracker.triggers SET created_at = %(at)s WHERE team_id = %(team)s AND contact_id = %(contact)s",
    "UPDATE tracker.catalog_examples SET accepted_at = %(at)s WHERE team_id = %(team)s "
    "AND contact_id = %(contact)s",
)


@pytest.fixture(scope="module")
def running(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """A platform whose services run a retention pass every second."""
    settings = session_settings(
        tmp_path_factory.mktemp("stack"), infrastructure, smtp_sink, retention_interval_seconds=1.0
    )
    with started(settings, smtp_sink) as running:
        yield running


def rows(database_url: str, parameters: dict[str, Any]) -> dict[str, int]:
    with psycopg.connect(database_url) as connection:
        return {
            table: int(connection.execute(query, parameters).fetchone()[0])  # type: ignore[index]
            for table, query in PURGEABLE.items()
        }


def backdate(database_url: str, parameters: dict[str, Any], days: int) -> None:
    with psycopg.connect(database_url) as connection, connection.transaction():
        moment = connection.execute("SELECT now() - make_interval(days => %s)", (days,)).fetchone()
        assert moment is not None
        for statement in BACKDATE:
            connection.execute(statement, {**parameters, "at": moment[0]})


def purged_in_logs(log_directory: Path, team_id: str) -> dict[str, int]:
    """The sum of every `retention.purged` line's counts for the team, over every service."""
    totals: dict[str, int] = {}
    for path in log_directory.glob("*.log"):
        for line in path.read_text().splitlines():
            if '"retention.purged"' not in line:
                continue
            for project in json.loads(line)["projects"]:
                if project["team_id"] != team_id:
                    continue
                assert project["retention_days"] == RETENTION_DAYS
                for table, count in project["purged"].items():
                    totals[table] = totals.get(table, 0) + count
    return {table: count for table, count in totals.items() if count}


def test_each_service_purges_exactly_what_is_older_than_the_window_and_logs_it(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    http, headers = running.http, running.credentials.headers
    team_id = running.credentials.team_id
    database = infrastructure.database_url
    mark = uuid.uuid4().hex[:8]
    steps = [
        {"id": "mail", "type": "email", "subject": "Order {{event.data.n}}", "body": "Thanks"},
        {"id": "note", "type": "in_app", "title": "Order {{event.data.n}}", "body": "Thanks"},
        {"id": "text", "type": "sms", "body": "Order {{event.data.n}}"},
    ]
    for key, event, workflow_steps in (
        (f"orders-{mark}", "retention.order", steps),
        (f"waits-{mark}", "retention.wait", [{"id": "pause", "type": "delay", "duration": "P1D"}]),
    ):
        workflow = {"key": key, "name": key, "trigger": {"event": event}, "steps": workflow_steps}
        assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201
    old = {"external_id": f"old-{mark}", "phone": f"+447700902{int(mark, 16) % 1000:03d}"}
    new = {"external_id": f"new-{mark}", "phone": f"+447700903{int(mark, 16) % 1000:03d}"}

    def send(who: dict[str, str], event: str, n: int) -> str:
        user_info = {
            "contact_external_id": who["external_id"],
            "email": f"{who['external_id']}@x.example",
            "phone": who["phone"],
        }
        body = {"event_name": event, "user_info": user_info, "event_data": {"n": n}}
        sent = http.post("/api/v1/events/send", json=body, headers=headers)
        assert sent.status_code == 201, sent.text
        trigger_id: str = sent.json()["trigger_id"]
        return trigger_id

    orders = [send(who, "retention.order", n) for n in range(ORDERS) for who in (old, new)]
    waiting = send(old, "retention.wait", 0)

    def status(trigger_id: str) -> str:
        answer: str = http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json().get("status", "")
        return answer

    eventually(lambda: all(status(t) == "completed" for t in orders), timeout=90, interval=0.5)
    eventually(lambda: status(waiting) == "processing", timeout=30, interval=0.5)
    policy = http.patch("/api/v1/project/policy", json={"retention_days": RETENTION_DAYS}, headers=headers)
    assert policy.status_code == 200, policy.text
    ids = {
        who["external_id"]: http.get(f"/api/v1/contacts/{who['external_id']}", headers=headers).json()["id"]
        for who in (old, new)
    }
    old_rows = {"team": team_id, "contact": ids[old["external_id"]], "external": old["external_id"], **old}
    new_rows = {"team": team_id, "contact": ids[new["external_id"]], "external": new["external_id"], **new}
    settled(database, team_id, ids[old["external_id"]], old["external_id"])
    new_before = settled(database, team_id, ids[new["external_id"]], new["external_id"])
    expected = rows(database, old_rows)
    # Something of the old contact in every table, and one run still waiting that must stay.
    assert all(count > 0 for count in expected.values()), expected

    backdate(database, new_rows, RETENTION_DAYS - 1)
    backdate(database, old_rows, RETENTION_DAYS + 1)

    eventually(lambda: rows(database, old_rows) == dict.fromkeys(PURGEABLE, 0), timeout=30, interval=0.5)
    log_directory = running.stack.settings.data_dir / "logs"
    eventually(lambda: purged_in_logs(log_directory, team_id) == expected, timeout=10, interval=0.5)
    left = footprint(database, team_id, ids[old["external_id"]], old["external_id"])
    # What stays of the old contact: its waiting run (one delay step) and the trigger still processing.
    assert (left["executor.runs"], left["executor.run_steps"], left["tracker.triggers"]) == (1, 1, 1)
    assert left["ingest.events"] == 0 and left["matcher.match_decisions"] == 0
    assert footprint(database, team_id, ids[new["external_id"]], new["external_id"]) == new_before
    assert status(waiting) == "processing"
