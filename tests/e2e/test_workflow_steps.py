"""Every step type through the real processes: webhooks to a real HTTP server (retried, dead,
replayed, signed per Standard Webhooks), SMS and push to an HTTP provider and to the development
provider, the in-app feed, and a run that waits (delay, wait_for_event, its timeout path)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack
from tests.e2e.support import HttpSink, eventually


def create(running: RunningStack, key: str, event: str, steps: list[dict[str, Any]]) -> None:
    workflow = {"key": key, "name": key, "trigger": {"event": event}, "steps": steps}
    answer = running.http.post("/api/v1/workflows", json=workflow, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text


def send(running: RunningStack, event: str, external_id: str, **data: Any) -> str:
    body = {
        "event_name": event,
        "user_info": {"contact_external_id": external_id, "email": f"{external_id}@example.com"},
        "event_data": data,
    }
    answer = running.http.post("/api/v1/events/send", json=body, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text
    trigger_id: str = answer.json()["trigger_id"]
    return trigger_id


def run_of(running: RunningStack, infrastructure: Infrastructure, trigger_id: str) -> dict[str, Any]:
    """The one run a trigger started, as GET /api/v1/runs/{id} shows it."""

    def run_id() -> str | None:
        with psycopg.connect(infrastructure.database_url) as connection:
            row = connection.execute(
                "SELECT id::text FROM executor.runs WHERE trigger_id = %s::uuid", (trigger_id,)
            ).fetchone()
        return str(row[0]) if row else None

    found = eventually(run_id)
    answer = running.http.get(f"/api/v1/runs/{found}", headers=running.credentials.headers)
    assert answer.status_code == 200, answer.text
    run: dict[str, Any] = answer.json()
    return run


def finished_run(running: RunningStack, infrastructure: Infrastructure, trigger_id: str) -> dict[str, Any]:
    return eventually(
        lambda: run if (run := run_of(running, infrastructure, trigger_id))["status"] != "running" else None,
        timeout=60,
    )


def steps_of(run: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {step["step_id"]: (step["status"], step["attempts"]) for step in run["steps"]}


def test_a_webhook_that_fails_twice_is_sent_once_after_three_attempts_and_signed(
    running: RunningStack, infrastructure: Infrastructure, http_sink: HttpSink
) -> None:
    http_sink.answer("/flaky", 503, 503)
    create(
        running,
        "flaky-hook",
        "hook.flaky",
        [
            {
                "id": "hook",
                "type": "webhook",
                "url": f"{http_sink.url}/flaky",
                "headers": {"X-Order": "{{event.data.order_id}}"},
                "body": {"order": "{{event.data.order_id}}", "who": "{{contact.external_id}}"},
                "max_attempts": 5,
            }
        ],
    )

    trigger_id = send(running, "hook.flaky", "hook-ada", order_id="o-42")

    run = finished_run(running, infrastructure, trigger_id)
    assert run["status"] == "completed"
    assert steps_of(run) == {"hook": ("sent", 3)}
    requests = http_sink.requests_to("/flaky")
    assert len(requests) == 3
    assert len({request.headers["webhook-id"] for request in requests}) == 1
    delivered = requests[-1]
    assert delivered.json() == {"order": "o-42", "who": "hook-ada"}
    assert delivered.headers["X-Order"] == "o-42"
    assert delivered.headers["Idempotency-Key"] == delivered.headers["webhook-id"]
    secret = running.http.get("/api/v1/channels", headers=running.credentials.headers).json()["webhook"][
        "signing_secret"
    ]
    verified = Webhook(secret).verify(delivered.body, delivered.headers)
    assert verified == {"order": "o-42", "who": "hook-ada"}


def test_a_webhook_that_always_fails_is_dead_and_a_replay_delivers_it_once(
    running: RunningStack, infrastructure: Infrastructure, http_sink: HttpSink
) -> None:
    headers, http = running.credentials.headers, running.http
    http_sink.answer("/down", 500, 500)
    create(
        running,
        "down-hook",
        "hook.down",
        [
            {"id": "hook", "type": "webhook", "url": f"{http_sink.url}/down", "max_attempts": 2},
            {"id": "after", "type": "in_app", "title": "Done", "body": "The hook went through"},
        ],
    )
    trigger_id = send(running, "hook.down", "down-bob")

    run = finished_run(running, infrastructure, trigger_id)
    assert run["status"] == "failed"
    assert steps_of(run) == {"hook": ("failed", 2), "after": ("pending", 0)}
    letters = http.get("/api/v1/dlq", headers=headers).json()["dead_letters"]
    [letter] = [letter for letter in letters if letter["run_id"] == run["id"]]
    assert (letter["step_id"], letter["status"], letter["attempts"]) == ("hook", "dead", 2)
    assert "HTTP 500" in letter["error"]

    replayed = http.post(f"/api/v1/dlq/{letter['id']}/replay", headers=headers)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "replayed"
    again = http.post(f"/api/v1/dlq/{letter['id']}/replay", headers=headers)
    assert again.status_code == 400, again.text
    assert "was replayed already" in again.json()["message"]

    done = eventually(
        lambda: run if (run := run_of(running, infrastructure, trigger_id))["status"] == "completed" else None
    )
    assert steps_of(done) == {"hook": ("sent", 1), "after": ("sent", 1)}
    assert len(http_sink.requests_to("/down")) == 3
    feed = http.get("/api/v1/contacts/down-bob/feed", headers=headers).json()["items"]
    assert [item["title"] for item in feed] == ["Done"]
    assert (
        http.post("/api/v1/dlq/00000000-0000-0000-0000-000000000000/replay", headers=headers).status_code
        == 404
    )


def test_sms_and_push_go_to_the_http_provider_or_the_development_provider(
    running: RunningStack, infrastructure: Infrastructure, http_sink: HttpSink
) -> None:
    headers, http = running.credentials.headers, running.http
    provider = {"url": f"{http_sink.url}/push", "headers": {"Authorization": "Bearer secret-token-1234"}}
    put = http.put("/api/v1/channels/push", json=provider, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json()["headers"] == {"Authorization": "****1234"}
    contact = {"email": "cy@example.com", "phone": "+14155550123", "name": "Cy"}
    assert http.put("/api/v1/contacts/text-cy", json=contact, headers=headers).status_code == 200
    create(
        running,
        "texts",
        "texts.sent",
        [
            {"id": "text", "type": "sms", "body": "Hi {{contact.name}}, order {{event.data.n}}"},
            {
                "id": "ping",
                "type": "push",
                "title": "Order {{event.data.n}}",
                "body": "Shipped",
                "url": "/o/1",
            },
            {"id": "note", "type": "in_app", "title": "Shipped", "body": "Order {{event.data.n}} shipped"},
        ],
    )

    trigger_id = send(running, "texts.sent", "text-cy", n=7)

    run = finished_run(running, infrastructure, trigger_id)
    assert steps_of(run) == {"text": ("sent", 1), "ping": ("sent", 1), "note": ("sent", 1)}
    texts = http.get("/api/v1/dev/messages?channel=sms", headers=headers).json()["messages"]
    assert [(m["to"], m["body"]) for m in texts if m["to"] == "+14155550123"] == [
        ("+14155550123", "Hi Cy, order 7")
    ]
    [push] = [request for request in http_sink.requests_to("/push") if request.json()["to"] == "text-cy"]
    assert push.headers["Authorization"] == "Bearer secret-token-1234"
    assert {key: push.json()[key] for key in ("channel", "title", "body", "url")} == {
        "channel": "push",
        "title": "Order 7",
        "body": "Shipped",
        "url": "/o/1",
    }
    assert push.headers["Idempotency-Key"] == push.json()["idempotency_key"]
    [item] = http.get("/api/v1/contacts/text-cy/feed", headers=headers).json()["items"]
    assert (item["title"], item["body"]) == ("Shipped", "Order 7 shipped")
    marked = http.post("/api/v1/contacts/text-cy/feed/read", json={}, headers=headers)
    assert marked.json() == {"marked": 1}
    assert http.get("/api/v1/contacts/text-cy/feed?unread_only=true", headers=headers).json()["items"] == []


def test_a_run_waits_for_an_event_and_takes_the_timeout_path_without_it(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    create(
        running,
        "activation",
        "flow.signup",
        [
            {"id": "pause", "type": "delay", "duration": "PT1S"},
            {
                "id": "activated",
                "type": "wait_for_event",
                "event": "flow.activated",
                "timeout": "PT6S",
                "match": "event.data.plan != ''",
                "on_timeout": "nudge",
            },
            {"id": "welcome", "type": "email", "subject": "Activated {{contact.external_id}}", "body": "Yay"},
            {"id": "done", "type": "exit"},
            {"id": "nudge", "type": "email", "subject": "Nudge {{contact.external_id}}", "body": "Come back"},
        ],
    )
    waiting = send(running, "flow.signup", "flow-ada")
    quiet = send(running, "flow.signup", "flow-bob")
    # Sent during the delay, before the wait exists: the look-back finds it.
    send(running, "flow.activated", "flow-ada", plan="")
    send(running, "flow.activated", "flow-ada", plan="pro")

    # While Bob's run waits, its trigger's detail says what each unfinished step waits for.
    def waiting_steps() -> dict[str, Any] | None:
        detail = running.http.get(f"/api/v1/triggers/{quiet}/workflow", headers=running.credentials.headers)
        assert detail.status_code == 200, detail.text
        outcomes = detail.json()["workflows"]
        steps = {step["step_id"]: step for step in outcomes[0]["steps"]} if outcomes else {}
        return steps if steps.get("activated", {}).get("status") == "waiting" else None

    steps = eventually(waiting_steps)
    assert steps["activated"]["waiting_for"] == (
        "event 'flow.activated' from the same contact; on timeout, then step 'nudge'"
    )
    assert steps["activated"]["waiting_until"] > steps["pause"]["finished_at"]
    assert (steps["pause"]["waiting_for"], steps["nudge"]["waiting_for"]) == ("", "")

    activated = finished_run(running, infrastructure, waiting)
    timed_out = finished_run(running, infrastructure, quiet)

    assert steps_of(activated) == {
        "pause": ("done", 0),
        "activated": ("done", 0),
        "welcome": ("sent", 1),
        "done": ("done", 0),
        "nudge": ("skipped", 0),
    }
    assert "flow.activated arrived" in activated["steps"][1]["detail"]
    assert steps_of(timed_out) == {
        "pause": ("done", 0),
        "activated": ("done", 0),
        "welcome": ("skipped", 0),
        "done": ("skipped", 0),
        "nudge": ("sent", 1),
    }
    subjects = sorted(
        str(m.message["Subject"]) for m in running.sink.received if "flow-" in str(m.message["Subject"])
    )
    assert subjects == ["Activated flow-ada", "Nudge flow-bob"]


def test_bad_step_definitions_and_channel_settings_are_refused(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    bad = {
        "key": "bad-steps",
        "name": "Bad",
        "trigger": {"event": "bad.steps"},
        "steps": [
            {"id": "wait", "type": "wait_for_event", "event": "x.y"},
            {"id": "check", "type": "branch", "condition": "event.data.a >", "then": "wait"},
            {"id": "hook", "type": "webhook", "url": "ftp://example.com", "subject": "x"},
            {"id": "stop", "type": "exit"},
            {"id": "lost", "type": "sms", "body": "never"},
        ],
    }
    refused = http.post("/api/v1/workflows", json=bad, headers=headers)
    assert refused.status_code == 400
    message = refused.json()["message"]
    for expected in (
        "steps[0].timeout: is required",
        "steps[1].condition:",
        "steps[1].then: 'wait' is not a later step",
        "steps[2].url: 'ftp://example.com' is not an http:// or https:// URL",
        "steps[2].subject: does not apply to a webhook step",
        "steps[4]: 'lost' is unreachable",
    ):
        assert expected in message, message
    unknown = http.put("/api/v1/channels/fax", json={"url": "https://x.example"}, headers=headers)
    assert unknown.status_code == 404
    bad_url = http.put("/api/v1/channels/sms", json={"url": "not a url"}, headers=headers)
    assert bad_url.status_code == 400
    assert "url: 'not a url' is not an http:// or https:// URL" in bad_url.json()["message"]
    too_many = http.get("/api/v1/contacts/anyone/feed?limit=500", headers=headers)
    assert too_many.status_code == 400
    secret = http.post("/api/v1/channels/webhook/secret", json={"signing_secret": "nope"}, headers=headers)
    assert secret.status_code == 400
    fresh = http.post("/api/v1/channels/webhook/secret", json={}, headers=headers)
    assert fresh.status_code == 200 and fresh.json()["signing_secret"].startswith("whsec_")
    body = json.dumps({"signing_secret": fresh.json()["signing_secret"]})
    assert http.post("/api/v1/channels/webhook/secret", content=body, headers=headers).status_code == 200
