"""Ingest as two replicas: HERALD_INGEST_ADDR lists two addresses, the launcher runs one ingest
process on each, the gateway spreads its calls over both and keeps answering when one dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stack.embedded import free_port
from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack, session_settings, started
from tests.e2e.support import SmtpSink, eventually

SEND = "/api/v1/events/send"


@pytest.fixture(scope="module")
def running(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """A platform whose ingest runs as two replicas."""
    settings = session_settings(tmp_path_factory.mktemp("replicas"), infrastructure, smtp_sink)
    ingest = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    settings = settings.with_changes(
        service_addresses={**settings.service_addresses, "ingest": ingest},
        metrics_addresses={**settings.metrics_addresses, "ingest": metrics},
    )
    with started(settings, smtp_sink) as running:
        yield running


def served_calls(running: RunningStack, process: str) -> int:
    """How many SendEvents calls the ingest process `process` has logged."""
    assert running.stack.log_directory is not None
    log = (running.stack.log_directory / f"{process}.log").read_text(errors="replace")
    return log.count("IngestService/SendEvents")


def send(running: RunningStack, index: int) -> httpx.Response:
    body = {"event_name": "replica.test", "event_data": {"index": index}}
    return running.http.post(SEND, json=body, headers=running.credentials.headers)


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_each_replica_runs_on_its_own_address(running: RunningStack) -> None:
    stack = running.stack
    assert [name for name in stack.processes if name.startswith("ingest")] == ["ingest", "ingest-2"]
    first, second = stack.settings.addresses("ingest")
    assert (stack.replica_address("ingest"), stack.replica_address("ingest-2")) == (first, second)
    assert serving(first) and serving(second)
    assert stack.supervisor.pid("ingest") != stack.supervisor.pid("ingest-2")


def test_the_gateway_spreads_single_sends_over_both_replicas(running: RunningStack) -> None:
    before = {name: served_calls(running, name) for name in ("ingest", "ingest-2")}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: send(running, i), range(60)))
    assert [a.status_code for a in answers] == [201] * 60, [a.text for a in answers if a.status_code != 201]
    eventually(
        lambda: all(served_calls(running, name) > before[name] for name in before),
        timeout=5,
    )


def test_single_sends_go_on_while_a_replica_is_dead_and_it_serves_again_once_restarted(
    running: RunningStack,
) -> None:
    running.stack.kill("ingest")
    try:
        answers = [send(running, i) for i in range(30)]
        statuses = [answer.status_code for answer in answers]
        # A call already on its way to the killed process may fail (503); nothing after it does.
        assert statuses.count(201) >= 29 and set(statuses[1:]) == {201}, [a.text for a in answers]
    finally:
        running.stack.restart("ingest")
    before = served_calls(running, "ingest")

    def restarted_replica_serves() -> bool:
        assert send(running, 0).status_code == 201
        time.sleep(0.05)
        return served_calls(running, "ingest") > before

    eventually(restarted_replica_serves, timeout=15)
