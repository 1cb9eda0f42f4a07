"""Workflow definitions and their filters, through the real processes: versions and deletion
over REST, and tags, topic, condition and cooldown deciding who gets an email, with each
filtered workflow's reason stored by the matcher."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack
from tests.e2e.support import eventually

EVENT = "order.completed"


def a_workflow(key: str, event: str = EVENT, **fields: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key.replace("-", " ").title(),
        "trigger": {"event": event},
        "steps": [{"type": "email", "subject": f"{key} for {{{{contact.name}}}}", "body": "Thanks"}],
        **fields,
    }


def rest_workflow(key: str, **fields: Any) -> dict[str, Any]:
    """A workflow on an event no test sends, so it adds no email to the filter test."""
    return a_workflow(key, event="rest.tested", **fields)


def test_definitions_are_versioned_deleted_and_checked_over_rest(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    filters = {"tags_any": ["vip"], "cooldown": "PT24H", "condition": "event.data.amount > 100.0"}
    created = http.post(
        "/api/v1/workflows", json=rest_workflow("rest-flow", filters=filters), headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["filters"] == {
        "tags_all": [],
        "tags_none": [],
        "topic": "",
        "segment": "",
        **filters,
    }

    changed = rest_workflow("rest-flow", filters={**filters, "topic": "product-updates"}, active=False)
    updated = http.put("/api/v1/workflows/rest-flow", json=changed, headers=headers)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["version"], updated.json()["active"]) == (2, False)
    again = http.put("/api/v1/workflows/rest-flow", json=changed, headers=headers)
    assert again.json()["version"] == 2  # the same definition stores no new version
    listed = http.get("/api/v1/workflows/rest-flow/versions", headers=headers).json()["versions"]
    assert [(v["version"], v["filters"]["topic"]) for v in listed] == [(2, "product-updates"), (1, "")]

    deleted = http.delete("/api/v1/workflows/rest-flow", headers=headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"key": "rest-flow", "version": 2, "deleted": True}
    gone = http.get("/api/v1/workflows/rest-flow", headers=headers)
    assert gone.status_code == 404
    assert gone.json()["message"] == "Workflow 'rest-flow' not found"
    assert (
        http.post("/api/v1/workflows", json=rest_workflow("rest-flow"), headers=headers).json()["version"]
        == 4
    )


def test_bad_definitions_are_refused_with_the_field_to_fix(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    bad = a_workflow("bad-flow", filters={"condition": "order.total > 1", "cooldown": "P1M", "topic": "a b"})
    refused = http.post("/api/v1/workflows", json=bad, headers=headers)
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert "filters.condition: unknown name 'order': a condition can use event, contact, variables" in message
    assert "filters.cooldown: 'P1M': years and months have no fixed length" in message
    assert "filters.topic: 'a b'" in message
    mismatch = http.put("/api/v1/workflows/other-key", json=a_workflow("bad-flow"), headers=headers)
    assert mismatch.status_code == 400
    assert "differs from the path's 'other-key'" in mismatch.json()["message"]
    assert http.get("/api/v1/workflows/bad-flow", headers=headers).status_code == 404


def test_filters_decide_who_gets_each_email_and_say_why_not(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    headers, http = running.credentials.headers, running.http
    for workflow in (
        a_workflow("vip-only", filters={"tags_any": ["vip"]}),
        a_workflow("big-orders", filters={"condition": "event.data.amount > 100.0"}),
        a_workflow("news", filters={"topic": "product-updates"}),
        a_workflow("once-a-day", filters={"cooldown": "PT24H"}),
    ):
        assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201
    ada = {"email": "ada@example.com", "name": "Ada", "tags": ["vip"]}
    assert http.put("/api/v1/contacts/filter-ada", json=ada, headers=headers).status_code == 200
    topic = http.put("/api/v1/contacts/filter-ada/topics/product-updates", headers=headers)
    assert topic.status_code == 200, topic.text
    bob = {"email": "bob@example.com", "name": "Bob"}
    assert http.put("/api/v1/contacts/filter-bob", json=bob, headers=headers).status_code == 200

    def send(external_id: str, amount: float) -> str:
        event = {
            "event_name": EVENT,
            "user_info": {"contact_external_id": external_id},
            "event_data": {"amount": amount},
        }
        answer = http.post("/api/v1/events/send", json=event, headers=headers)
        assert answer.status_code == 201, answer.text
        trigger_id: str = answer.json()["trigger_id"]
        return trigger_id

    def settled(trigger_id: str, sent: int, filtered: int) -> list[str]:
        summary = {"total_contacts": 1, "sent": sent, "failed": 0, "filtered": filtered}
        eventually(
            lambda: (
                http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json()["summary"] == summary
                or None
            )
        )
        mail = running.sink.messages_with("X-Herald-Trigger", trigger_id)
        return sorted(str(m.message["Subject"]).split(" for ")[0] for m in mail)

    first_ada = send("filter-ada", 149.99)
    assert settled(first_ada, sent=4, filtered=0) == ["big-orders", "news", "once-a-day", "vip-only"]
    first_bob = send("filter-bob", 50)
    assert settled(first_bob, sent=1, filtered=3) == ["once-a-day"]
    second_ada = send("filter-ada", 10)
    assert settled(second_ada, sent=2, filtered=2) == ["news", "vip-only"]

    with psycopg.connect(infrastructure.database_url) as connection:
        rows = connection.execute(
            "SELECT trigger_id::text, workflow_key, reason FROM matcher.match_decisions "
            "WHERE trigger_id = ANY(%s::uuid[]) AND NOT matched",
            ([first_bob, second_ada],),
        ).fetchall()
    reasons = {(trigger, key): reason for trigger, key, reason in rows}
    assert reasons[(first_bob, "vip-only")] == "contact has none of the tags vip (tags_any)"
    assert reasons[(first_bob, "news")] == "contact is not subscribed to topic 'product-updates'"
    assert reasons[(first_bob, "big-orders")] == (
        "condition was false: event.data.amount > 100.0 [event.data.amount = 50]"
    )
    assert reasons[(second_ada, "big-orders")] == (
        "condition was false: event.data.amount > 100.0 [event.data.amount = 10]"
    )
    assert reasons[(second_ada, "once-a-day")].startswith(
        "cooldown: ran for this contact within PT24H; it may run again after "
    )
    assert len(reasons) == 5


def test_a_dry_run_says_which_workflows_would_run_without_sending_or_changing_anything(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    headers, http = running.credentials.headers, running.http
    for workflow in (
        a_workflow("dry-vip", event="dry.run", filters={"tags_any": ["vip"]}),
        a_workflow("dry-any", event="dry.run", filters={"cooldown": "PT1H"}),
    ):
        assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201
    event = {
        "event_name": "dry.run",
        "user_info": {"contact_external_id": "dry-new", "email": "dry@example.com"},
    }

    answer = http.post("/api/v1/events/match", json=event, headers=headers)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["contact"] == {"id": "", "external_id": "dry-new", "email": "dry@example.com", "known": False}
    verdicts = {w["workflow_key"]: (w["would_run"], w["reason"]) for w in body["workflows"]}
    assert verdicts == {
        "dry-vip": (False, "contact has none of the tags vip (tags_any)"),
        "dry-any": (True, ""),
    }
    assert http.get("/api/v1/contacts/dry-new", headers=headers).status_code == 404
    again = http.post("/api/v1/events/match", json=event, headers=headers).json()
    assert {w["workflow_key"]: w["would_run"] for w in again["workflows"]}[
        "dry-any"
    ] is True  # no cooldown taken
    with psycopg.connect(infrastructure.database_url) as connection:
        stored = connection.execute(
            "SELECT count(*) FROM ingest.events WHERE team_id = %s AND name = 'dry.run'",
            (running.credentials.team_id,),
        ).fetchone()
    assert stored == (0,)
    bad = http.post("/api/v1/events/match", json={**event, "event_name": "Dry Run"}, headers=headers)
    assert bad.status_code == 400
    assert "Invalid event name" in bad.json()["message"]


def test_segments_filter_workflows_and_a_contact_entering_one_starts_a_workflow(
    running: RunningStack,
) -> None:
    headers, http = running.credentials.headers, running.http
    segment = {"key": "seg-pro", "name": "Pro", "condition": "contact.custom_fields.plan == 'Pro'"}
    created = http.post("/api/v1/segments", json=segment, headers=headers)
    assert created.status_code == 201, created.text
    assert http.post("/api/v1/segments", json=segment, headers=headers).status_code == 409
    bad = http.post(
        "/api/v1/segments", json={**segment, "key": "seg-bad", "condition": "event.x"}, headers=headers
    )
    assert bad.status_code == 400
    assert "condition: unknown name 'event'" in bad.json()["message"]
    missing = http.post(
        "/api/v1/workflows",
        json=a_workflow("seg-none", event="seg.order", filters={"segment": "nope"}),
        headers=headers,
    )
    assert missing.status_code == 400
    assert "filters.segment: no segment 'nope'" in missing.json()["message"]
    for workflow in (
        a_workflow("seg-orders", event="seg.order", filters={"segment": "seg-pro"}),
        a_workflow(
            "seg-welcome",
            event="herald.audience.entered",
            filters={"condition": "event.data.segment == 'seg-pro'"},
        ),
    ):
        assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201, workflow

    def order(external_id: str, plan: str) -> None:
        event = {
            "event_name": "seg.order",
            "user_info": {"contact_external_id": external_id, "email": f"{external_id}@example.com"},
        }
        put = http.put(
            f"/api/v1/contacts/{external_id}",
            json={"email": f"{external_id}@example.com", "custom_fields": {"plan": plan}},
            headers=headers,
        )
        assert put.status_code == 200, put.text
        assert http.post("/api/v1/events/send", json=event, headers=headers).status_code == 201

    order("seg-pro-1", "Pro")
    order("seg-free-1", "Free")
    order("seg-pro-1", "Pro")

    def subjects(external_id: str) -> list[str]:
        return sorted(
            str(m.message["Subject"]).split(" for")[0]
            for m in running.sink.messages_for(f"{external_id}@example.com")
        )

    assert eventually(lambda: subjects("seg-pro-1") if len(subjects("seg-pro-1")) == 3 else None) == [
        "seg-orders",
        "seg-orders",
        "seg-welcome",
    ]
    assert subjects("seg-free-1") == []
    listed = http.get("/api/v1/segments", headers=headers).json()["segments"]
    assert [s["key"] for s in listed if s["key"].startswith("seg-")] == ["seg-pro"]
    assert http.delete("/api/v1/segments/seg-pro", headers=headers).json() == {
        "key": "seg-pro",
        "deleted": True,
    }
    assert http.get("/api/v1/segments/seg-pro", headers=headers).status_code == 404
