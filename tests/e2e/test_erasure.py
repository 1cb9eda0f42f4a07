"""Right to erasure through the real processes: DELETE /api/v1/contacts/{external_id} removes the
contact's personal data from every schema (searched column by column) and says what it erased,
leaving every other contact's data as it was."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack
from tests.e2e.contact_rows import footprint, settled
from tests.e2e.support import HttpSink, eventually

SCHEMAS = ("ingest", "matcher", "executor", "tracker", "tenancy")
EVENT = "erasure.order_placed"
ORDERS = 3


def database_hits(database_url: str, value: str) -> list[str]:
    """Every schema.table.column of the platform's schemas holding `value` in some row: text and
    character columns, JSON, arrays and UUIDs as text, bytes (outbox payloads) as bytes."""
    hits = []
    with psycopg.connect(database_url) as connection:
        columns = connection.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "JOIN information_schema.tables USING (table_schema, table_name) "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' "
            "AND data_type IN ('text', 'character varying', 'character', 'jsonb', 'json', 'ARRAY', "
            "'uuid', 'bytea')",
            (list(SCHEMAS),),
        ).fetchall()
        for schema, table, column, data_type in columns:
            if data_type == "bytea":
                condition = f"position(convert_to(%s, 'UTF8') in \"{column}\") > 0"
                parameter = value
            else:
                condition = f'"{column}"::text ILIKE %s'
                parameter = f"%{value}%"
            found = connection.execute(
                f'SELECT count(*) FROM "{schema}"."{table}" WHERE {condition}', (parameter,)
            ).fetchone()
            if found and found[0]:
                hits.append(f"{schema}.{table}.{column}")
    return hits


def test_deleting_a_contact_erases_its_personal_data_everywhere_and_says_what_went(
    running: RunningStack, infrastructure: Infrastructure, http_sink: HttpSink
) -> None:
    http, headers = running.http, running.credentials.headers
    team_id = running.credentials.team_id
    mark = uuid.uuid4().hex[:8]
    person = {
        "external_id": f"erase-{mark}",
        "email": f"zephyrine.{mark}@erasure.example",
        "phone": f"+447700900{int(mark, 16) % 1000:03d}",
        "name": f"Zephyrine Quillfeather {mark}",
    }
    other = {
        "external_id": f"keep-{mark}",
        "email": f"keeper.{mark}@erasure.example",
        "phone": f"+447700901{int(mark, 16) % 1000:03d}",
        "name": f"Keeper {mark}",
    }
    segment = {
        "key": f"erasure-{mark}",
        "name": "Erasure",
        "condition": 'contact.email.endsWith("@erasure.example")',
    }
    assert http.post("/api/v1/segments", json=segment, headers=headers).status_code == 201
    workflow = {
        "key": f"erasure-{mark}",
        "name": "Erasure",
        "trigger": {"event": EVENT},
        "steps": [
            {
                "id": "mail",
                "type": "email",
                "subject": "Hi {{contact.name}}",
                "body": "Order {{event.data.n}}",
            },
            {
                "id": "note",
                "type": "in_app",
                "title": "Order {{event.data.n}}",
                "body": "For {{contact.email}}",
            },
            {"id": "hook", "type": "webhook", "url": f"{http_sink.url}/erasure"},
            {"id": "text", "type": "sms", "body": "Hi {{contact.name}}"},
        ],
    }
    assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201, workflow

    def order(who: dict[str, str], n: int) -> str:
        body = {
            "event_name": EVENT,
            "user_info": {
                "contact_external_id": who["external_id"],
                "email": who["email"],
                "phone": who["phone"],
                "name": who["name"],
            },
            # The payload names the contact too: erasure removes the events, not only the profile.
            "event_data": {"n": n, "billing": {"email": who["email"], "name": who["name"]}},
            "idempotency_key": f"order-{who['external_id']}-{n}",
        }
        sent = http.post("/api/v1/events/send", json=body, headers=headers)
        assert sent.status_code == 201, sent.text
        trigger_id: str = sent.json()["trigger_id"]
        return trigger_id

    triggers = [order(who, n) for n in range(ORDERS) for who in (person, other)]
    # One direct trigger for both: erasing one contact leaves the trigger and its figures for the other.
    direct = http.post(
        "/api/v1/workflows/trigger",
        json={
            "workflow_key": workflow["key"],
            "contacts": [{"external_id": person["external_id"]}, {"external_id": other["external_id"]}],
            "data": {"n": 99},
        },
        headers=headers,
    )
    assert direct.status_code == 201, direct.text
    triggers.append(direct.json()["trigger_id"])

    def completed() -> bool:
        statuses = [http.get(f"/api/v1/triggers/{t}", headers=headers).json().get("status") for t in triggers]
        return statuses == ["completed"] * len(triggers)

    eventually(completed, timeout=90, interval=0.5)
    contact_id = http.get(f"/api/v1/contacts/{person['external_id']}", headers=headers).json()["id"]
    other_id = http.get(f"/api/v1/contacts/{other['external_id']}", headers=headers).json()["id"]
    database = infrastructure.database_url
    before = settled(database, team_id, contact_id, person["external_id"])
    other_before = settled(database, team_id, other_id, other["external_id"])
    # Every service holds something of the contact before the erasure.
    assert all(count > 0 for count in before.values()), before
    assert database_hits(database, person["email"]), "the search finds the email before the erasure"

    deleted = http.delete(f"/api/v1/contacts/{person['external_id']}", headers=headers)

    assert deleted.status_code == 200, deleted.text
    erased: dict[str, Any] = deleted.json()["erased"]
    assert erased["ingest.contacts"] == 1
    # Its orders and herald.contact.created, and the system events (mail sent) about it.
    assert erased["ingest.events"] == before["ingest.events"] >= ORDERS + 1
    assert erased["ingest.idempotency_keys"] == ORDERS
    assert erased["executor.runs"] == before["executor.runs"] >= ORDERS + 1
    assert erased["executor.run_steps"] == before["executor.run_steps"]
    assert erased["executor.feed_items"] == ORDERS + 1
    assert erased["executor.dev_messages"] == ORDERS + 1
    assert erased["matcher.match_decisions"] == before["matcher.match_decisions"]
    assert erased["matcher.segment_members"] == 1
    assert erased["tracker.triggers"] == before["tracker.triggers"]
    assert erased["tracker.trigger_decisions"] == before["tracker.trigger_decisions"]
    assert erased["tracker.trigger_runs"] == before["tracker.trigger_runs"]
    assert erased["tracker.catalog_examples"] == before["tracker.catalog_examples"]
    assert erased["tracker.trigger_deliveries"] == before["tracker.trigger_deliveries"] >= 4 * (ORDERS + 1)
    for value in (person["email"], person["phone"], person["name"], person["external_id"], contact_id):
        assert database_hits(database, value) == [], f"{value!r} is still stored"
    assert footprint(database, team_id, other_id, other["external_id"]) == other_before
    assert database_hits(database, other["email"]), "the other contact is untouched"
    assert http.get(f"/api/v1/contacts/{other['external_id']}", headers=headers).status_code == 200
    shared = http.get(f"/api/v1/triggers/{triggers[-1]}", headers=headers)
    assert shared.status_code == 200, shared.text
    # The other contact's run and its four deliveries are still counted; the erased one's are gone.
    assert shared.json()["status"] == "completed"
    assert (shared.json()["summary"]["sent"], shared.json()["summary"]["failed"]) == (4, 0)

    again = http.delete(f"/api/v1/contacts/{person['external_id']}", headers=headers)
    assert again.status_code == 404, again.text
    assert again.json()["message"] == "Contact not found"
    unknown = http.delete(f"/api/v1/contacts/nobody-{mark}", headers=headers)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["message"] == "Contact not found"
