"""The kernel's observability against real servers: gRPC and bus figures in the process's
registry, /metrics over HTTP, the ids a request or message binds on its log lines, and the
dependency check behind gRPC health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.bus import Consumer, Delivery, Poison, RetryLater
from kernel.database import create_engine, session_factory
from kernel.grpc_server import ServiceRegistration, create_server
from kernel.metrics import REGISTRY, serve_metrics
from kernel.service import Runtime
from kernel.settings import Settings
from stack.embedded import free_port
from tests.conftest import Infrastructure
from tests.integration.test_consumer import Lane, publish, running, settled
from tests.integration.waiting import eventually

INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


class NamingIngest(ingest_pb2_grpc.IngestServiceServicer):
    """SendEvent binds the ids of what it accepted, as ingest's servicer does; "bad" fails."""

    async def SendEvent(
        self, request: ingest_pb2.SendEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.SendEventResponse:
        structlog.contextvars.bind_contextvars(trigger_id=f"t-{request.event_name}", event_id="e-1")
        if request.event_name == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad event")
        return ingest_pb2.SendEventResponse(success=True, trigger_id=f"t-{request.event_name}")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def ingest_channel() -> AsyncIterator[grpc.aio.Channel]:
    registration = ServiceRegistration(
        INGEST_SERVICE,
        NamingIngest(),  # type: ignore[abstract]  # only SendEvent is needed here
        ingest_pb2_grpc.add_IngestServiceServicer_to_server,
    )
    server, port, _health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(None)


async def test_requests_are_counted_by_method_and_code_and_served_on_metrics(
    ingest_channel: grpc.aio.Channel,
) -> None:
    labels = {"service": INGEST_SERVICE, "method": "SendEvent"}
    ok_before = sample("herald_grpc_requests_total", **labels, code="OK")
    invalid_before = sample("herald_grpc_request_duration_seconds_count", **labels, code="INVALID_ARGUMENT")
    stub = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
        await stub.SendEvent(ingest_pb2.SendEventRequest(event_name="one"), timeout=5)
        await stub.SendEvent(ingest_pb2.SendEventRequest(event_name="two"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SendEvent(ingest_pb2.SendEventRequest(event_name="bad"), timeout=5)

    assert sample("herald_grpc_requests_total", **labels, code="OK") - ok_before == 2
    count = sample("herald_grpc_request_duration_seconds_count", **labels, code="INVALID_ARGUMENT")
    assert count - invalid_before == 1
    # Each request's line names what it was about, and only that: nothing leaks to the next.
    done = [line for line in logged if line["event"] == "rpc.done"]
    assert [line["trigger_id"] for line in done] == ["t-one", "t-two", "t-bad"]
    assert structlog.contextvars.get_contextvars().get("trigger_id") is None

    runner, port = await serve_metrics("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{port}/metrics")
            missing = await http.get(f"http://127.0.0.1:{port}/nothing")
    finally:
        await runner.cleanup()
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/plain; version=")
    expected = f'herald_grpc_requests_total{{code="OK",method="SendEvent",service="{INGEST_SERVICE}"}}'
    assert expected in page.text
    assert missing.status_code == 404


async def test_a_busy_metrics_port_says_which(ingest_channel: grpc.aio.Channel) -> None:
    runner, port = await serve_metrics("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
            await serve_metrics("127.0.0.1", port)
    finally:
        await runner.cleanup()


async def test_consumer_outcomes_are_counted_and_its_lines_carry_the_handlers_ids(
    nats_client: NatsClient,
) -> None:
    lane = Lane()
    attempts: dict[bytes, int] = {}

    async def handle(delivery: Delivery) -> None:
        structlog.contextvars.bind_contextvars(trigger_id=f"t-{delivery.data.decode()}")
        attempts[delivery.data] = attempts.get(delivery.data, 0) + 1
        if delivery.data == b"poison":
            raise Poison("cannot be read")
        if delivery.data == b"later" and attempts[delivery.data] == 1:
            raise RetryLater("not yet", delay=0.1)

    js = nats_client.jetstream()
    consumer = Consumer(nats_client, "EVENTS", lane.durable, lane.filter_subject, handle, concurrency=4)
    labels = {"stream": "EVENTS", "durable": lane.durable}
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
        async with running(consumer):
            for payload in (b"fine", b"later", b"poison"):
                last = await publish(js, lane, payload)

            async def done() -> bool:
                return await settled(js, lane, last)

            await eventually(done, what="every message settled")

    assert sample("herald_bus_messages_total", **labels, outcome="ack") == 2
    assert sample("herald_bus_messages_total", **labels, outcome="retry") == 1
    assert sample("herald_bus_messages_total", **labels, outcome="dead_letter") == 1
    assert sample("herald_bus_fetch_duration_seconds_count", **labels) >= 2
    retry = next(line for line in logged if line["event"] == "consumer.retry")
    dead = next(line for line in logged if line["event"] == "consumer.dead_letter")
    assert (retry["trigger_id"], dead["trigger_id"]) == ("t-later", "t-poison")


async def test_the_dependency_check_names_what_is_down(infrastructure: Infrastructure) -> None:
    """A database nobody answers at is down; the session's is up (the NATS half is seen going
    down and up in tests/e2e/test_service_health.py)."""
    settings = Settings(database_url=infrastructure.database_url)
    nowhere = f"postgresql://herald@127.0.0.1:{free_port()}/herald"
    for url, expected in ((infrastructure.database_url, []), (nowhere, ["database"])):
        engine = create_engine(url, pool_size=1)
        probe = create_engine(url, pool_size=1)
        runtime = Runtime("test", settings, engine, session_factory(engine), None, probe_engine=probe)
        try:
            assert await runtime.dependencies_down() == expected
            up = 0.0 if expected else 1.0
            assert sample("herald_dependency_up", dependency="database") == up
        finally:
            await engine.dispose()
            await probe.dispose()


async def test_health_reads_not_serving_while_the_database_is_unreachable(
    infrastructure: Infrastructure,
) -> None:
    registration = ServiceRegistration(
        INGEST_SERVICE,
        NamingIngest(),  # type: ignore[abstract]
        ingest_pb2_grpc.add_IngestServiceServicer_to_server,
    )
    server, port, health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    nowhere = f"postgresql://herald@127.0.0.1:{free_port()}/herald"
    engine = create_engine(nowhere, pool_size=1)
    runtime = Runtime("test", Settings(), engine, session_factory(engine), None, probe_engine=engine)
    watching = asyncio.create_task(runtime.watch_health(health, ["", INGEST_SERVICE]))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def not_serving() -> bool:
                answers = [
                    await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                    for name in ("", INGEST_SERVICE)
                ]
                return all(a.status == health_pb2.HealthCheckResponse.NOT_SERVING for a in answers)

            await eventually(not_serving, what="NOT_SERVING while the database is away")
    finally:
        runtime.stop.set()
        await asyncio.wait_for(watching, timeout=5)
        await engine.dispose()
        await server.stop(None)
