"""The gRPC server every service runs, on a real port: errors, health and reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.errors import ERROR_DOMAIN, HTTP_STATUS_KEY, InvalidArgument, NotFound, error_info
from kernel.grpc_server import ServiceRegistration, create_server

INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
SECRET_IN_THE_TRACEBACK = "postgres://herald:s3cr3t@db/herald"


class PayloadTooLarge(InvalidArgument):
    http_status = 413


class ScriptedIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Answers SendEvent as the event name says: ok, not_found, too_large or crash.

    GetTriggerRecord is left to the generated default on purpose: it is not implemented.
    """

    async def SendEvent(
        self, request: ingest_pb2.SendEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.SendEventResponse:
        if request.event_name == "not_found":
            raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": "t-1"})
        if request.event_name == "too_large":
            raise PayloadTooLarge("Payload too large", reason="PAYLOAD_TOO_LARGE")
        if request.event_name == "crash":
            raise RuntimeError(f"cannot connect to {SECRET_IN_THE_TRACEBACK}")
        return ingest_pb2.SendEventResponse(success=True, trigger_id="t-ok", job_id="7", message="queued")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    registration = ServiceRegistration(
        INGEST_SERVICE,
        ScriptedIngest(),  # type: ignore[abstract]  # GetTriggerRecord stays unimplemented
        ingest_pb2_grpc.add_IngestServiceServicer_to_server,
    )
    server, port, _health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    try:
        assert port > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(None)


async def send(channel: grpc.aio.Channel, event_name: str) -> ingest_pb2.SendEventResponse:
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    return await stub.SendEvent(ingest_pb2.SendEventRequest(event_name=event_name), timeout=5)


async def failure(channel: grpc.aio.Channel, event_name: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await send(channel, event_name)
    return raised.value


async def test_a_successful_call_passes_through(channel: grpc.aio.Channel) -> None:
    response = await send(channel, "ok")
    assert (response.success, response.trigger_id, response.job_id) == (True, "t-ok", "7")


async def test_herald_error_becomes_its_code_with_error_info(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "not_found")

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Trigger not found"
    info = error_info(error)
    assert info is not None
    assert info.reason == "TRIGGER_NOT_FOUND"
    assert info.domain == ERROR_DOMAIN == "herald.dev"
    assert dict(info.metadata) == {"trigger_id": "t-1"}


async def test_finer_http_status_travels_in_error_info(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "too_large")

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None
    assert info.reason == "PAYLOAD_TOO_LARGE"
    assert info.metadata[HTTP_STATUS_KEY] == "413"


async def test_unexpected_exception_is_internal_without_leaking_details(channel: grpc.aio.Channel) -> None:
    error = await failure(channel, "crash")

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "Internal server error"
    everything_sent = (
        repr(error.details()) + repr(error.trailing_metadata()) + repr(error.debug_error_string())
    )
    assert SECRET_IN_THE_TRACEBACK not in everything_sent
    assert "RuntimeError" not in everything_sent
    assert "Traceback" not in everything_sent
    assert error_info(error) is None


async def test_health_check_answers_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    overall = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    ingest = await health.Check(health_pb2.HealthCheckRequest(service=INGEST_SERVICE), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)

    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert ingest.status == health_pb2.HealthCheckResponse.SERVING
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [response async for response in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    response = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {service.name for service in response.list_services_response.service}
    assert names == {INGEST_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_reflection_describes_a_service(channel: grpc.aio.Channel) -> None:
    response = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=INGEST_SERVICE)
    )

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    ingest_file = next(file for file in files if file.package == "herald.ingest.v1")
    methods = {method.name for service in ingest_file.service for method in service.method}
    assert {"SendEvent", "GetTriggerRecord"} <= methods


async def test_an_rpc_the_servicer_does_not_implement_is_unimplemented(channel: grpc.aio.Channel) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetTriggerRecord(ingest_pb2.GetTriggerRecordRequest(trigger_id="t-1"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
