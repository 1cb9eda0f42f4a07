"""What an operator sees of a running platform: every process's Prometheus /metrics moving as
events go through, and `herald trace` telling one trigger's story from the processes' JSON logs."""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack import cli
from stack.trace import TraceError, trace
from tests.e2e.conftest import RunningStack
from tests.e2e.support import HttpSink, eventually

SEND = "/api/v1/events/send"
GRPC_PROCESSES = ("ingest", "matcher", "executor", "tracker")  # mail goes to a sink: no devmail


@pytest.fixture(scope="module")
def workflows(running: RunningStack, http_sink: HttpSink) -> None:
    """An email workflow, and a webhook workflow whose endpoint refuses for good (a dead letter)."""
    headers = running.credentials.headers
    for workflow in (
        {
            "key": "obs-welcome",
            "name": "Welcome",
            "trigger": {"event": "obs.signup"},
            "steps": [{"id": "mail", "type": "email", "subject": "Hi {{contact.name}}", "body": "Hello"}],
        },
        {
            "key": "obs-hook",
            "name": "Refused hook",
            "trigger": {"event": "obs.hook"},
            "steps": [{"id": "hook", "type": "webhook", "url": f"{http_sink.url}/refuses"}],
        },
    ):
        created = running.http.post("/api/v1/workflows", json={**workflow, "active": True}, headers=headers)
        assert created.status_code == 201, created.text
    http_sink.answer("/refuses", *([400] * 50))


def send(running: RunningStack, event: str, external_id: str) -> str:
    body = {
        "event_name": event,
        "user_info": {
            "contact_external_id": external_id,
            "email": f"{external_id}@example.com",
            "name": "Ob",
        },
    }
    sent = running.http.post(SEND, json=body, headers=running.credentials.headers)
    assert sent.status_code == 201, sent.text
    trigger_id: str = sent.json()["trigger_id"]
    return trigger_id


def finished(running: RunningStack, trigger_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers)
        body: dict[str, Any] = answer.json()
        return body if body.get("status") in ("completed", "failed") else None

    return eventually(probe)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels."""
    answer = httpx.get(url, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_process_serves_its_metrics(running: RunningStack) -> None:
    stack = running.stack
    assert set(stack.processes) == {*GRPC_PROCESSES, "gateway"}
    for process in GRPC_PROCESSES:
        samples = scrape(stack.metrics_url(process))
        assert value(samples, "herald_dependency_up", dependency="database") == 1, process
        assert any(name == "process_resident_memory_bytes" for name, _ in samples), process
    # The launcher's readiness checks are gRPC health calls: counted like any other request.
    ingest = scrape(stack.metrics_url("ingest"))
    assert value(
        ingest, "herald_grpc_requests_total", service="grpc.health.v1.Health", method="Check", code="OK"
    )
    assert value(scrape(stack.metrics_url("matcher")), "herald_dependency_up", dependency="nats") == 1
    assert stack.metrics_url("gateway") == f"{stack.gateway_url}/metrics"
    # Each service samples the lag of its own consumers (and only those).
    lag_names = {
        "herald_consumer_pending",
        "herald_consumer_ack_pending",
        "herald_consumer_redelivered",
        "herald_consumer_oldest_pending_age_seconds",
    }
    expected = {
        "matcher": {("EVENTS", "matcher")},
        "tracker": {("TRACKING", "tracker"), ("EVENTS", "tracker-catalog")},
    }
    for process, consumers in expected.items():
        url = stack.metrics_url(process)
        lags = eventually(functools.partial(_lags, url), timeout=15)
        assert {name for name, _ in lags} == lag_names, process
        assert {labels for _, labels in lags} == consumers, process


def _lags(url: str) -> set[tuple[str, tuple[str, str]]] | None:
    """The consumer-lag samples of a /metrics page, by name and (stream, consumer); None if none."""
    found = {
        (name, (dict(labels)["stream"], dict(labels)["consumer"]))
        for name, labels in scrape(url)
        if name.startswith("herald_consumer_")
    }
    return found or None


def test_metrics_move_as_an_event_goes_through(running: RunningStack, workflows: None) -> None:
    stack = running.stack
    before = {process: scrape(stack.metrics_url(process)) for process in ("gateway", *GRPC_PROCESSES)}

    assert finished(running, send(running, "obs.signup", "obs-ann"))["status"] == "completed"
    assert finished(running, send(running, "obs.hook", "obs-bob"))["status"] == "failed"

    def grew(process: str, name: str, by: float = 1, **labels: str) -> bool:
        now = value(scrape(stack.metrics_url(process)), name, **labels)
        return now - value(before[process], name, **labels) >= by

    ingest = "herald.ingest.v1.IngestService"
    assert grew("gateway", "herald_http_requests_total", 2, route=SEND, method="POST", status="201")
    assert grew("gateway", "herald_http_request_duration_seconds_count", 2, route=SEND, method="POST")
    assert grew(
        "gateway",
        "herald_http_requests_total",
        route="/api/v1/triggers/{trigger_id}",
        method="GET",
        status="200",
    )
    assert grew("ingest", "herald_grpc_requests_total", 2, service=ingest, method="SendEvents", code="OK")
    assert grew(
        "ingest",
        "herald_grpc_request_duration_seconds_count",
        2,
        service=ingest,
        method="SendEvents",
        code="OK",
    )
    assert grew("ingest", "herald_outbox_published_total", 2, schema="ingest", path="commit")
    assert grew("matcher", "herald_bus_messages_total", 2, stream="EVENTS", durable="matcher", outcome="ack")
    assert grew("matcher", "herald_bus_fetch_duration_seconds_count", stream="EVENTS", durable="matcher")
    assert grew(
        "executor", "herald_bus_messages_total", 2, stream="RUNS", durable="executor-runs", outcome="ack"
    )
    assert grew("executor", "herald_deliveries_total", channel="email", outcome="sent")
    assert grew("executor", "herald_deliveries_total", channel="webhook", outcome="failed")
    assert grew(
        "tracker", "herald_bus_messages_total", 4, stream="TRACKING", durable="tracker", outcome="ack"
    )
    # Sampled every few seconds: the webhook's dead letter shows up in the gauge.
    eventually(lambda: grew("executor", "herald_dead_letters", channel="webhook"), timeout=15)
    executor = scrape(stack.metrics_url("executor"))
    assert ("herald_bus_dead_letters", ()) in executor
    assert ("herald_outbox_pending", (("schema", "executor"),)) in executor


def test_trace_tells_a_triggers_story_across_the_services_in_order(
    running: RunningStack, workflows: None, capsys: pytest.CaptureFixture[str]
) -> None:
    trigger_id = send(running, "obs.signup", "obs-cid")
    other = send(running, "obs.signup", "obs-dan")
    assert finished(running, trigger_id)["status"] == "completed"
    assert finished(running, other)["status"] == "completed"
    logs = running.stack.log_directory
    assert logs is not None

    def told() -> Any:
        story = trace(logs, trigger_id)
        events = [line.get("event") for _, line in story.lines]
        return story if "triggers.moved" in events and "step.done" in events else None

    story = eventually(told, timeout=10)
    assert story.services[:4] == ["ingest", "matcher", "executor", "tracker"]
    events = [(process, line["event"]) for process, line in story.lines]
    order = [
        ("ingest", "rpc.done"),
        ("matcher", "match.decided"),
        ("executor", "run.started"),
        ("executor", "step.done"),
    ]
    positions = [events.index(step) for step in order]
    assert positions == sorted(positions), events
    assert ("tracker", "triggers.moved") in events
    assert len(story.event_ids) == 1 and len(story.run_ids) == 1
    timestamps = [line["timestamp"] for _, line in story.lines]
    assert timestamps == sorted(timestamps)
    # Only this trigger's lines: none of the other trigger's own (a batch line may name both,
    # and then the story shows only what concerns this one: below).
    assert all(line.get("trigger_id") != other for _, line in story.lines)

    # The command: text, then JSON, then with the tracker's account.
    with pytest.raises(SystemExit) as exited:
        cli.main(["trace", trigger_id, "--logs", str(logs)])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Trigger {trigger_id}:")
    assert "match.decided" in text and "status=completed" in text and other not in text

    with pytest.raises(SystemExit) as exited:
        cli.main(["trace", trigger_id, "--logs", str(logs), "--json"])
    assert exited.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["trigger_id"] == trigger_id
    assert document["run_ids"] == sorted(story.run_ids)
    assert [line["event"] for line in document["lines"]] == [line["event"] for _, line in story.lines]

    credentials = running.credentials
    with pytest.raises(SystemExit) as exited:
        cli.main([
            "trace", trigger_id, "--logs", str(logs), "--url", running.stack.gateway_url,
            "--api-key", credentials.api_key, "--team", credentials.team_id,
        ])  # fmt: skip
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "Tracker: completed" in text
    assert "obs-welcome v1: matched" in text and "mail (email): sent" in text


def test_trace_says_when_no_line_names_the_trigger(
    running: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = running.stack.log_directory
    assert logs is not None
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(TraceError, match=f"No log line in .* names trigger {missing}"):
        trace(logs, missing)
    with pytest.raises(SystemExit) as exited:
        cli.main(["trace", missing, "--logs", str(logs)])
    assert exited.value.code == 2
    assert f"names trigger {missing}: check the id" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        cli.main(["trace", missing, "--logs", str(logs / "nowhere")])
    assert exited.value.code == 2
    assert "No log directory at" in capsys.readouterr().err
    with pytest.raises(TraceError, match="Give the trigger id"):
        trace(logs, "  ")
