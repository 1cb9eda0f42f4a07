"""Direct workflow triggers through the real processes: one trigger for listed contacts or a
segment's members, emails to each contact the workflow's filters let through, the trigger's
summary counting them, idempotent replays, and bad requests refused with nothing sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import RunningStack
from tests.e2e.support import eventually

WORKFLOW = {
    "key": "direct-welcome",
    "name": "Direct welcome",
    "trigger": {"event": "direct.never_sent"},
    "filters": {"tags_none": ["churned"]},
    "steps": [
        {
            "id": "greet",
            "type": "email",
            "subject": "{{promo}} for {{contact.name}}",
            "body": "Campaign {{event.data.campaign}}",
        }
    ],
}
CONTACTS = {
    "direct-ada": {"email": "direct-ada@example.com", "name": "Ada", "custom_fields": {"plan": "Pro"}},
    "direct-bob": {"email": "direct-bob@example.com", "name": "Bob", "custom_fields": {"plan": "Pro"}},
    "direct-cy": {"email": "direct-cy@example.com", "name": "Cy", "tags": ["churned"]},
}


def set_up(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    if http.get("/api/v1/workflows/direct-welcome", headers=headers).status_code == 200:
        return
    assert http.post("/api/v1/workflows", json=WORKFLOW, headers=headers).status_code == 201
    paused = {**WORKFLOW, "key": "direct-paused", "active": False}
    assert http.post("/api/v1/workflows", json=paused, headers=headers).status_code == 201
    for external_id, profile in CONTACTS.items():
        answer = http.put(f"/api/v1/contacts/{external_id}", json=profile, headers=headers)
        assert answer.status_code == 200, answer.text
    segment = {"key": "direct-pro", "name": "Pro", "condition": "contact.custom_fields.plan == 'Pro'"}
    assert http.post("/api/v1/segments", json=segment, headers=headers).status_code == 201


def trigger(running: RunningStack, body: dict[str, Any], **headers: str) -> httpx.Response:
    return running.http.post(
        "/api/v1/workflows/trigger", json=body, headers={**running.credentials.headers, **headers}
    )


def settled(running: RunningStack, trigger_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers)
        body: dict[str, Any] = answer.json()
        return body if body.get("status") in ("completed", "failed") else None

    return eventually(final)


def mailed(running: RunningStack, trigger_id: str) -> list[tuple[str, str]]:
    mail = running.sink.messages_with("X-Herald-Trigger", trigger_id)
    return sorted((m.rcpt_to[0], str(m.message["Subject"])) for m in mail)


def test_listed_contacts_get_the_workflow_as_one_trigger(running: RunningStack) -> None:
    set_up(running)
    body = {
        "workflow_key": "direct-welcome",
        "contacts": [
            {"external_id": "direct-ada"},
            {"email": "Direct-Bob@Example.com"},
            {"external_id": "direct-cy"},
            {"email": "direct-ada@example.com"},
        ],
        "variables": {"promo": "Winter offer"},
        "data": {"campaign": "launch"},
    }

    answer = trigger(running, body)

    assert answer.status_code == 201, answer.text
    accepted = answer.json()
    assert accepted["success"] is True
    assert accepted["summary"] == {"total_contacts": 3}
    assert accepted["message"] == "Workflow 'direct-welcome' triggered for 3 contacts"
    trigger_id = accepted["trigger_id"]
    done = settled(running, trigger_id)
    assert done["status"] == "completed"
    assert done["summary"] == {"total_contacts": 3, "sent": 2, "failed": 0, "filtered": 1}
    assert mailed(running, trigger_id) == [
        ("direct-ada@example.com", "Winter offer for Ada"),
        ("direct-bob@example.com", "Winter offer for Bob"),
    ]
    assert {m.text.strip() for m in running.sink.messages_with("X-Herald-Trigger", trigger_id)} == {
        "Campaign launch"
    }
    detail = running.http.get(f"/api/v1/triggers/{trigger_id}/workflow", headers=running.credentials.headers)
    assert detail.status_code == 200, detail.text
    outcomes = detail.json()["workflows"]
    assert [(o["workflow_key"], o["outcome"], o["run_status"]) for o in outcomes] == [
        ("direct-welcome", "matched", "completed"),
        ("direct-welcome", "matched", "completed"),
        ("direct-welcome", "filtered", ""),
    ]
    assert outcomes[2]["reason"] == "contact has the excluded tags churned (tags_none)"
    assert detail.json()["event_name"] == "herald.workflow.triggered"


def test_a_segment_trigger_reaches_its_members_and_a_replay_sends_nothing_more(running: RunningStack) -> None:
    set_up(running)
    body = {"workflow_key": "direct-welcome", "segment": "direct-pro", "variables": {"promo": "Pro news"}}

    first = trigger(running, body, **{"Idempotency-Key": "direct-pro-1"})

    assert first.status_code == 201, first.text
    assert first.json()["summary"] == {"total_contacts": 2}
    trigger_id = first.json()["trigger_id"]
    assert settled(running, trigger_id)["summary"] == {
        "total_contacts": 2,
        "sent": 2,
        "failed": 0,
        "filtered": 0,
    }
    again = trigger(running, body, **{"Idempotency-Key": "direct-pro-1"})
    assert again.status_code == 201, again.text
    assert again.json()["trigger_id"] == trigger_id
    assert again.headers["Idempotent-Replayed"] == "true"
    other = trigger(running, {**body, "variables": {"promo": "other"}}, **{"Idempotency-Key": "direct-pro-1"})
    assert other.status_code == 422
    assert mailed(running, trigger_id) == [
        ("direct-ada@example.com", "Pro news for Ada"),
        ("direct-bob@example.com", "Pro news for Bob"),
    ]


def test_bad_direct_triggers_are_refused_with_what_to_fix(running: RunningStack) -> None:
    set_up(running)
    ada = [{"external_id": "direct-ada"}]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"workflow_key": "nope", "contacts": ada}, 404, "Workflow 'nope' not found"),
        ({"workflow_key": "direct-paused", "contacts": ada}, 409, "Workflow 'direct-paused' is paused"),
        ({"workflow_key": "direct-welcome"}, 400, "exactly one of 'contacts'"),
        ({"workflow_key": "direct-welcome", "contacts": ada, "segment": "direct-pro"}, 400, "exactly one of"),
        ({"workflow_key": "direct-welcome", "segment": "nope"}, 404, "Segment 'nope' not found"),
        (
            {"workflow_key": "direct-welcome", "contacts": [*ada, {"external_id": "ghost"}]},
            404,
            "1 of the listed contacts do not exist: contacts[1] (external_id 'ghost')",
        ),
        (
            {"workflow_key": "direct-welcome", "contacts": [{"contact_id": "42"}]},
            400,
            "Invalid contacts[0].contact_id",
        ),
        (
            {
                "workflow_key": "direct-welcome",
                "contacts": [{"external_id": f"u-{n}"} for n in range(10_001)],
            },
            400,
            "at most 10000 contacts",
        ),
        ({"workflow_key": "direct-welcome", "contacts": ada, "audience": "all"}, 400, "audience"),
        ({"workflow_key": "direct-welcome", "contacts": "direct-ada"}, 400, "contacts"),
    ]
    sent_before = len(running.sink.received)
    for body, status, message in cases:
        answer = trigger(running, body)
        assert answer.status_code == status, (body, answer.text)
        assert message in answer.json()["message"], (body, answer.text)
    unauthenticated = running.http.post("/api/v1/workflows/trigger", json={"workflow_key": "direct-welcome"})
    assert unauthenticated.status_code == 401
    assert len(running.sink.received) == sent_before


SYNC_WORKFLOWS = [
    {
        "key": "sync-mail",
        "name": "Sync mail",
        "trigger": {"event": "sync.tested"},
        "steps": [
            {"id": "greet", "type": "email", "subject": "Sync for {{contact.name}}", "body": "Hi"},
            {"id": "note", "type": "in_app", "title": "Hello", "body": "There"},
        ],
    },
    {
        "key": "sync-vip",
        "name": "Sync VIP",
        "trigger": {"event": "sync.tested"},
        "filters": {"tags_any": ["vip"]},
        "steps": [{"type": "email", "subject": "VIP", "body": "Hi"}],
    },
    {
        "key": "sync-later",
        "name": "Sync later",
        "trigger": {"event": "sync.delayed"},
        "steps": [{"id": "pause", "type": "delay", "duration": "P1D"}, {"type": "exit"}],
    },
]


def sync_set_up(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    for workflow in SYNC_WORKFLOWS:
        if http.get(f"/api/v1/workflows/{workflow['key']}", headers=headers).status_code == 404:
            answer = http.post("/api/v1/workflows", json=workflow, headers=headers)
            assert answer.status_code == 201, answer.text


def sync_trigger(running: RunningStack, event: dict[str, Any], query: str = "") -> httpx.Response:
    return running.http.post(
        f"/api/v1/events/trigger{query}", json=event, headers=running.credentials.headers, timeout=60
    )


def test_a_synchronous_trigger_answers_with_every_workflow_and_step(running: RunningStack) -> None:
    sync_set_up(running)
    event = {
        "event_name": "sync.tested",
        "user_info": {"contact_external_id": "sync-ada", "name": "Ada", "email": "sync-ada@example.com"},
    }

    answer = sync_trigger(running, event)

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["success"] is True and body["finished"] is True
    detail = body["detail"]
    assert detail["trigger"]["id"] == body["trigger_id"]
    assert detail["trigger"]["status"] == "completed"
    assert detail["trigger"]["summary"] == {"total_contacts": 1, "sent": 2, "failed": 0, "filtered": 1}
    assert (detail["event_name"], detail["note"]) == ("sync.tested", "")
    matched, filtered = detail["workflows"]
    assert (matched["workflow_key"], matched["outcome"], matched["run_status"]) == (
        "sync-mail",
        "matched",
        "completed",
    )
    assert [(s["step_id"], s["type"], s["status"], s["attempts"]) for s in matched["steps"]] == [
        ("greet", "email", "sent", 1),
        ("note", "in_app", "sent", 1),
    ]
    assert matched["steps"][0]["detail"].startswith("Message accepted <")  # the SMTP sink's answer
    assert (filtered["workflow_key"], filtered["outcome"], filtered["run_id"], filtered["steps"]) == (
        "sync-vip",
        "filtered",
        "",
        [],
    )
    assert filtered["reason"] == "contact has none of the tags vip (tags_any)"
    assert [m.rcpt_to for m in running.sink.messages_with("X-Herald-Trigger", body["trigger_id"])] == [
        ["sync-ada@example.com"]
    ]
    again = running.http.get(
        f"/api/v1/triggers/{body['trigger_id']}/workflow", headers=running.credentials.headers
    )
    assert again.status_code == 200, again.text
    assert again.json() == detail


def test_a_synchronous_trigger_shows_what_is_still_going_when_the_wait_ends(running: RunningStack) -> None:
    sync_set_up(running)
    event = {"event_name": "sync.delayed", "user_info": {"contact_external_id": "sync-bob"}}

    answer = sync_trigger(running, event, "?wait_seconds=1")

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["finished"] is False
    assert body["detail"]["trigger"]["status"] in ("queued", "processing")

    def delayed() -> dict[str, Any] | None:
        found = running.http.get(
            f"/api/v1/triggers/{body['trigger_id']}/workflow", headers=running.credentials.headers
        ).json()
        steps = found["workflows"][0]["steps"] if found["workflows"] else []
        return found if steps and steps[0]["status"] == "waiting" else None

    final = eventually(delayed)
    assert final["trigger"]["status"] == "processing"
    [run] = final["workflows"]
    assert (run["run_status"], [s["status"] for s in run["steps"]]) == ("running", ["waiting", "pending"])


def test_a_trigger_no_workflow_listens_to_says_so(running: RunningStack) -> None:
    answer = sync_trigger(
        running, {"event_name": "sync.unheard", "user_info": {"contact_external_id": "x-1"}}
    )

    assert answer.status_code == 201, answer.text
    detail = answer.json()["detail"]
    assert detail["trigger"]["status"] == "completed" and detail["workflows"] == []
    assert detail["note"] == "No workflow listens to 'sync.unheard': nothing ran"


def test_bad_synchronous_triggers_and_unknown_trigger_ids_are_refused(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    event = {"event_name": "sync.unheard", "user_info": {"contact_external_id": "x-2"}}
    cases = [
        (event, "?wait_seconds=31", 400, "wait_seconds must be 1 to 30"),
        (event, "?wait_seconds=soon", 400, "Query parameter 'wait_seconds' must be an integer"),
        (event, "?wait=3", 400, "Unknown query parameter 'wait': allowed are wait_seconds"),
        ({**event, "event_name": "Bad Name"}, "", 400, "Invalid event name 'Bad Name'"),
        ({**event, "colour": "blue"}, "", 400, "colour"),
    ]
    for body, query, status, message in cases:
        answer = sync_trigger(running, body, query)
        assert answer.status_code == status, (body, query, answer.text)
        assert message in answer.json()["message"], (body, query, answer.text)
    unknown = http.get(f"/api/v1/triggers/{uuid.uuid4()}/workflow", headers=headers)
    assert (unknown.status_code, unknown.json()["message"]) == (404, "Trigger not found")
    assert http.get("/api/v1/triggers/not-a-uuid/workflow", headers=headers).status_code == 404
    assert http.post("/api/v1/events/trigger", json=event).status_code == 401
    assert http.post("/api/v1/events/send?wait_seconds=3", json=event, headers=headers).status_code == 400


def test_a_scheduled_synchronous_trigger_is_answered_at_once(running: RunningStack) -> None:
    fires_at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    event = {
        "event_name": "sync.unheard",
        "user_info": {"contact_external_id": "x-3"},
        "trigger_at": fires_at.isoformat().replace("+00:00", "Z"),
    }

    answer = sync_trigger(running, event)

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["finished"], body["scheduled_for"]) == (
        False,
        fires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    assert body["detail"]["trigger"]["status"] == "scheduled"
    assert body["detail"]["note"] == "Not matched yet: the trigger is scheduled"
    assert body["detail"]["event_name"] == "sync.unheard"


def test_a_direct_trigger_whose_only_contact_is_filtered_still_counts_it(running: RunningStack) -> None:
    set_up(running)

    answer = trigger(running, {"workflow_key": "direct-welcome", "contacts": [{"external_id": "direct-cy"}]})

    assert answer.status_code == 201, answer.text
    done = settled(running, answer.json()["trigger_id"])
    assert done["summary"] == {"total_contacts": 1, "sent": 0, "failed": 0, "filtered": 1}
