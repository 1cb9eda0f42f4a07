"""One event end to end, through the real processes: HTTP and gRPC in, SMTP out, tracking back."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.conftest import RunningStack
from tests.e2e.support import SENDMATOR_EXAMPLE_1, WELCOME_WORKFLOW, eventually

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def completed_trigger(running: RunningStack, trigger_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body if body["status"] in ("completed", "failed") else None

    return eventually(probe)


def test_health_and_readiness(running: RunningStack) -> None:
    assert running.http.get("/healthz").json() == {"status": "ok"}
    ready = running.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["services"] == {
        "executor": "SERVING",
        "ingest": "SERVING",
        "matcher": "SERVING",
        "tracker": "SERVING",
    }
    spec = running.http.get("/openapi.json").json()
    assert spec["paths"]["/api/v1/events/send"]["post"]["responses"]["201"]
    assert "/api/v1/triggers/{trigger_id}" in spec["paths"]


def test_workflow_event_email_and_trigger(running: RunningStack) -> None:
    headers = running.credentials.headers
    created = running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers)
    assert created.status_code == 201, created.text
    workflow = created.json()
    assert workflow["key"] == "welcome-email"
    assert workflow["version"] == 1
    assert workflow["active"] is True
    assert workflow["steps"][0]["subject"] == "Welcome, {{contact.name}}"

    event = {**SENDMATOR_EXAMPLE_1, "variables": {"user_name": "Johnny"}}
    sent = running.http.post("/api/v1/events/send", json=event, headers=headers)
    assert sent.status_code == 201, sent.text
    answer = sent.json()
    assert answer["success"] is True
    assert answer["message"] == "Event queued successfully"
    assert str(uuid.UUID(answer["trigger_id"])) == answer["trigger_id"]
    assert int(answer["job_id"]) > 0
    assert "scheduled_for" not in answer

    mail = eventually(lambda: running.sink.messages_with("X-Herald-Trigger", answer["trigger_id"]))
    assert len(mail) == 1
    assert mail[0].rcpt_to == ["john.doe@example.com"]
    assert mail[0].message["Subject"] == "Welcome, John Doe"
    assert mail[0].text.strip() == "Hello Johnny"

    trigger = completed_trigger(running, answer["trigger_id"])
    assert trigger["id"] == answer["trigger_id"]
    assert trigger["flow_type"] == "workflow"
    assert trigger["trigger_type"] == "workflow"
    assert trigger["status"] == "completed"
    settled = {"total_contacts": 1, "sent": 1, "failed": 0, "filtered": 0}
    eventually(  # facts arrive in any order: the delivery may be counted just after the run ends
        lambda: (
            running.http.get(f"/api/v1/triggers/{trigger['id']}", headers=running.credentials.headers).json()[
                "summary"
            ]
            == settled
            or None
        )
    )
    assert trigger["details_endpoint"] == f"/triggers/{answer['trigger_id']}/workflow"
    assert trigger["created_at"] <= trigger["started_at"] <= trigger["completed_at"]
    assert trigger["created_at"].endswith("Z")


def test_the_exact_sendmator_example_renders_what_it_has(running: RunningStack) -> None:
    headers = running.credentials.headers
    running.http.post(
        "/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers
    )  # 201 or 409: either is fine
    sent = running.http.post("/api/v1/events/send", json=SENDMATOR_EXAMPLE_1, headers=headers)
    assert sent.status_code == 201, sent.text
    trigger_id = sent.json()["trigger_id"]
    mail = eventually(lambda: running.sink.messages_with("X-Herald-Trigger", trigger_id))
    assert mail[0].message["Subject"] == "Welcome, John Doe"
    assert mail[0].text.strip() == "Hello"  # the example sends no user_name variable
    assert completed_trigger(running, trigger_id)["status"] == "completed"
    # The delivery fact may reach the tracker after the run's end (facts arrive in any order):
    # the count settles on the one email sent.
    eventually(
        lambda: (
            running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json()["summary"]["sent"] == 1
            or None
        )
    )


def test_grpc_reflection_health_and_send_event(running: RunningStack) -> None:
    ingest = running.address("ingest")
    listed = grpcurl(ingest, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "herald.ingest.v1.IngestService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    for service in ("ingest", "matcher", "executor", "tracker"):
        health = grpcurl(running.address(service), "grpc.health.v1.Health/Check")
        assert json.loads(health.stdout) == {"status": "SERVING"}, service

    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=running.credentials.headers)
    credentials = running.credentials
    request = {
        "event_name": "user_signup",
        "user_info": {"contact_external_id": "grpc_1", "email": "grpc.user@example.com", "name": "Grace"},
        "variables": {"user_name": "Grace"},
    }
    called = grpcurl(
        "-H", f"x-api-key: {credentials.api_key}",
        "-H", f"x-team-id: {credentials.team_id}",
        "-d", json.dumps(request),
        ingest, "herald.ingest.v1.IngestService/SendEvent",
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    answer = json.loads(called.stdout)
    assert answer["success"] is True
    mail = eventually(lambda: running.sink.messages_with("X-Herald-Trigger", answer["trigger_id"]))
    assert mail[0].message["Subject"] == "Welcome, Grace"
    assert completed_trigger(running, answer["trigger_id"])["summary"]["sent"] == 1


def test_grpc_errors_carry_code_and_reason(running: RunningStack) -> None:
    credentials = running.credentials
    missing_name = grpcurl(
        "-H", f"x-api-key: {credentials.api_key}", "-H", f"x-team-id: {credentials.team_id}",
        "-d", "{}", running.address("ingest"), "herald.ingest.v1.IngestService/SendEvent",
    )  # fmt: skip
    assert missing_name.returncode != 0
    assert "Code: InvalidArgument" in missing_name.stdout + missing_name.stderr
    assert "EVENT_NAME_REQUIRED" in missing_name.stdout + missing_name.stderr
    no_key = grpcurl(
        "-d", '{"event_name": "x"}', running.address("ingest"), "herald.ingest.v1.IngestService/SendEvent"
    )
    assert "Code: Unauthenticated" in no_key.stdout + no_key.stderr
