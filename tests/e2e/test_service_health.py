"""gRPC health follows the dependencies: every service reads NOT_SERVING (overall and for each of
its services) while its NATS connection is down, and the gateway's /readyz says 503; both come
back once NATS is back.

The platform here has a NATS server of its own, so the test can stop it without disturbing the
other tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from herald.executor.v1 import executor_pb2
from herald.ingest.v1 import ingest_pb2
from herald.matcher.v1 import matcher_pb2
from herald.tracker.v1 import tracker_pb2
from stack.embedded import EmbeddedNats
from stack.launcher import Stack
from tests.conftest import Infrastructure
from tests.e2e.conftest import stack_on_own_nats
from tests.e2e.support import SmtpSink, eventually

# Each service process and the names its health answers for ("" is the process as a whole).
HEALTH_NAMES = {
    "ingest": ["", ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name],
    "matcher": ["", matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name],
    "executor": ["", executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name],
    "tracker": ["", tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name],
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def platform(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, EmbeddedNats]]:
    with stack_on_own_nats(infrastructure, smtp_sink, tmp_path_factory.mktemp("health")) as platform:
        yield platform


def statuses(stack: Stack) -> dict[tuple[str, str], int]:
    """Each service's health status, by process and service name (-1 when it does not answer)."""
    found = {}
    for process, names in HEALTH_NAMES.items():
        with grpc.insecure_channel(stack.replica_address(process)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in names:
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                    found[(process, name)] = answer.status
                except grpc.RpcError:
                    found[(process, name)] = -1
    return found


def all_are(stack: Stack, status: int) -> bool:
    return all(value == status for value in statuses(stack).values())


def nats_up(stack: Stack, process: str) -> float | None:
    """The herald_dependency_up{dependency="nats"} gauge of `process`."""
    text = httpx.get(stack.metrics_url(process), timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "herald_dependency_up" and sample.labels == {"dependency": "nats"}:
                return sample.value
    return None


def readiness(stack: Stack) -> tuple[int, dict[str, str]]:
    answer = httpx.get(f"{stack.gateway_url}/readyz", timeout=5)
    return answer.status_code, answer.json()["services"]


def test_health_is_not_serving_while_nats_is_down_and_serving_once_it_is_back(
    platform: tuple[Stack, EmbeddedNats],
) -> None:
    stack, nats = platform
    assert all_are(stack, SERVING), statuses(stack)
    assert readiness(stack)[0] == 200
    assert nats_up(stack, "matcher") == 1

    nats.stop()
    try:
        eventually(lambda: all_are(stack, NOT_SERVING), timeout=20)
        status, services = readiness(stack)
        assert status == 503
        assert set(services.values()) == {"NOT_SERVING"}, services
        assert nats_up(stack, "matcher") == 0
        assert nats_up(stack, "tracker") == 0
    finally:
        nats.start()  # on the same port: the services' connections reconnect

    eventually(lambda: all_are(stack, SERVING), timeout=30)
    eventually(lambda: readiness(stack)[0] == 200, timeout=10)
    assert nats_up(stack, "matcher") == 1
    assert stack.supervisor.pid("matcher") is not None  # it waited for NATS rather than crash
    assert stack.log_directory is not None
    log = (stack.log_directory / "executor.log").read_text()
    assert '"event": "health.not_serving"' in log and '"down": ["nats"]' in log
    assert '"event": "health.serving"' in log
