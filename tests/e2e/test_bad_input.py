"""Bad input gets the seeds' answers, never a 500, and never touches data already accepted."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.conftest import RunningStack
from tests.e2e.support import SENDMATOR_EXAMPLE_1, WELCOME_WORKFLOW, eventually

HERALD = str(Path(sys.executable).parent / "herald")


def error(answer_status: int, body: dict[str, object], message: str | None = None) -> None:
    assert body["statusCode"] == answer_status
    assert isinstance(body["error"], str) and body["error"]
    if message is not None:
        assert body["message"] == message, body


@pytest.mark.parametrize(
    ("body", "status", "message_part"),
    [
        ({}, 400, "Event name is required"),
        ({"event_name": ""}, 400, "Event name is required"),
        ({"event_name": "UserSignup"}, 400, "Invalid event name 'UserSignup'"),
        ({"event_name": "purchase-completed"}, 400, "Invalid event name 'purchase-completed'"),
        ({"event_name": "herald.contact.created"}, 400, "reserved namespace"),
        ({"event_name": "a" * 129}, 400, "too long"),
        ({"event_name": 5}, 400, "event_name must be a string"),
        ({"event_name": "x", "surprise": 1}, 400, "Unknown field 'surprise'"),
        ({"event_name": "x", "user_info": "john"}, 400, "user_info must be a JSON object"),
        ({"event_name": "x", "user_info": {"emial": "a@b.c"}}, 400, "Unknown field 'user_info.emial'"),
        ({"event_name": "x", "event_data": [1, 2]}, 400, "event_data must be a JSON object"),
        ({"event_name": "x", "variables": "v"}, 400, "variables must be a JSON object"),
    ],
)
def test_invalid_events_are_rejected_with_a_clear_400(
    running: RunningStack, body: dict[str, object], status: int, message_part: str
) -> None:
    answer = running.http.post("/api/v1/events/send", json=body, headers=running.credentials.headers)
    assert answer.status_code == status, answer.text
    error(status, answer.json())
    assert message_part in str(answer.json()["message"])


@pytest.mark.parametrize(
    ("raw", "message_part"),
    [
        (b"{bad", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"event_name": NaN}', "not valid JSON"),
        (b'{"event_name": "\xff"}', "not valid UTF-8"),
    ],
)
def test_malformed_bodies_are_a_400(running: RunningStack, raw: bytes, message_part: str) -> None:
    headers = {**running.credentials.headers, "Content-Type": "application/json"}
    answer = running.http.post("/api/v1/events/send", content=raw, headers=headers)
    assert answer.status_code == 400, answer.text
    assert message_part in answer.json()["message"]


def test_credentials(running: RunningStack) -> None:
    credentials = running.credentials
    body = {"event_name": "credentials_check"}
    send = "/api/v1/events/send"
    answer = running.http.post(send, json=body)
    assert answer.status_code == 401
    error(401, answer.json(), "Unauthorized")
    answer = running.http.post(
        send, json=body, headers={"X-API-Key": "hk_wrong", "X-Team-ID": credentials.team_id}
    )
    error(401, answer.json(), "Unauthorized")
    answer = running.http.post(
        send, json=body, headers={"X-API-Key": credentials.api_key, "X-Team-ID": "someone"}
    )
    error(401, answer.json(), "Invalid team context")
    answer = running.http.post(send, json=body, headers={"X-API-Key": credentials.api_key})
    error(401, answer.json(), "Invalid team context")
    answer = running.http.post(send, json=body, headers={"Authorization": f"Bearer {credentials.api_key}"})
    assert answer.status_code == 201, answer.text
    answer = running.http.post(
        send,
        json=body,
        headers=[(b"X-API-Key", "kéy".encode()), (b"X-Team-ID", credentials.team_id.encode())],
    )
    assert answer.status_code == 400
    assert "printable ASCII" in answer.json()["message"]


def test_unknown_routes_methods_and_triggers(running: RunningStack) -> None:
    headers = running.credentials.headers
    missing = running.http.get("/api/v1/nothing-here", headers=headers)
    error(404, missing.json(), "Cannot GET /api/v1/nothing-here")
    wrong_method = running.http.delete("/api/v1/events/send", headers=headers)
    assert wrong_method.status_code == 405
    error(405, wrong_method.json())
    for trigger_id in ("not-a-uuid", str(uuid.uuid4())):
        answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers)
        error(404, answer.json(), "Trigger not found")
    too_big = running.http.post(
        "/api/v1/events/send", content=b'{"event_name": "' + b"a" * (2 * 1024 * 1024) + b'"}', headers=headers
    )
    assert too_big.status_code == 413
    error(413, too_big.json())


def test_invalid_workflows_are_rejected_with_the_field_named(running: RunningStack) -> None:
    headers = running.credentials.headers
    broken = {
        **WELCOME_WORKFLOW,
        "key": "broken",
        "steps": [{"type": "fax", "body": "x"}, {"type": "email", "subject": "{{#if x}}", "body": "b"}],
    }
    answer = running.http.post("/api/v1/workflows", json=broken, headers=headers)
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert "steps[0].type" in message and "steps[1].subject" in message
    assert running.http.get("/api/v1/workflows/broken", headers=headers).status_code == 404
    unknown = running.http.post("/api/v1/workflows", json={**WELCOME_WORKFLOW, "stepz": []}, headers=headers)
    assert unknown.status_code == 400
    assert "Unknown field 'stepz'" in unknown.json()["message"]


def test_another_teams_trigger_is_not_found(running: RunningStack) -> None:
    headers = running.credentials.headers
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers)
    trigger_id = running.http.post("/api/v1/events/send", json=SENDMATOR_EXAMPLE_1, headers=headers).json()[
        "trigger_id"
    ]
    eventually(lambda: running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).status_code == 200)
    other_team = f"other-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [HERALD, "keys", "create", "--team", other_team],
        env={**os.environ, "HERALD_DATABASE_URL": running.stack.database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    other_key = created.stdout.split()[-1]
    other = {"X-API-Key": other_key, "X-Team-ID": other_team}
    answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=other)
    error(404, answer.json(), "Trigger not found")
    assert running.http.get("/api/v1/workflows/welcome-email", headers=other).status_code == 404
    assert running.http.get("/api/v1/workflows", headers=other).json() == {"workflows": []}


def test_bad_requests_do_not_disturb_accepted_data(running: RunningStack) -> None:
    headers = running.credentials.headers
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers)
    before = running.http.post("/api/v1/events/send", json=SENDMATOR_EXAMPLE_1, headers=headers).json()
    for body in ({}, {"event_name": "Bad Name"}, {"event_name": "x", "user_info": 1}):
        assert running.http.post("/api/v1/events/send", json=body, headers=headers).status_code == 400
    after = running.http.post("/api/v1/events/send", json=SENDMATOR_EXAMPLE_1, headers=headers).json()
    assert int(after["job_id"]) > int(before["job_id"])
    for trigger_id in (before["trigger_id"], after["trigger_id"]):
        assert len(eventually(partial(running.sink.messages_with, "X-Herald-Trigger", trigger_id))) == 1
