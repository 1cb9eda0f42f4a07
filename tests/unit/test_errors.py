"""Herald's errors on the gRPC wire and back (kernel.errors)."""

from __future__ import annotations

import grpc
import psycopg
import pytest
import sqlalchemy.exc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kernel.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    ConfigurationError,
    FailedPrecondition,
    HeraldError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    error_info,
    from_rpc_error,
    internal_status,
    is_unavailable,
    to_status,
)
from tests.unit.fakes import failed_call


class PayloadTooLarge(InvalidArgument):
    http_status = 413
    default_reason = "PAYLOAD_TOO_LARGE"


def rich_status(status: grpc.Status) -> status_pb2.Status:
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def unpacked_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    [detail] = rich_status(status).details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    return info


def test_to_status_carries_code_message_and_one_error_info() -> None:
    error = InvalidArgument(
        "Event name is required", reason="EVENT_NAME_REQUIRED", metadata={"field": "event_name"}
    )

    status = to_status(error)

    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "Event name is required"
    assert rich_status(status).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = unpacked_info(status)
    assert info.reason == "EVENT_NAME_REQUIRED"
    assert info.domain == ERROR_DOMAIN == "herald.dev"
    assert dict(info.metadata) == {"field": "event_name"}


def test_to_status_adds_a_finer_http_status_to_the_metadata() -> None:
    status = to_status(PayloadTooLarge("Payload too large", metadata={"limit": "1024"}))

    info = unpacked_info(status)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "PAYLOAD_TOO_LARGE"
    assert dict(info.metadata) == {"limit": "1024", "http_status": "413"}


def test_to_status_leaves_the_errors_own_metadata_alone() -> None:
    error = PayloadTooLarge("Payload too large")

    to_status(error)

    assert error.metadata == {}


@pytest.mark.parametrize(
    ("error_type", "code", "reason"),
    [
        (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
        (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
        (Unavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
        (ConfigurationError, grpc.StatusCode.INTERNAL, "CONFIGURATION"),
        (HeraldError, grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_each_error_has_its_code_and_default_reason(
    error_type: type[HeraldError], code: grpc.StatusCode, reason: str
) -> None:
    status = to_status(error_type("went wrong"))

    assert status.code == code
    assert unpacked_info(status).reason == reason


def test_internal_status_says_nothing_more() -> None:
    status = internal_status()

    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "Internal server error"
    assert list(rich_status(status).details) == []


def test_internal_status_with_a_message() -> None:
    assert internal_status("database is gone").details == "database is gone"


def test_error_info_reads_the_detail_of_a_failed_call() -> None:
    call = failed_call(to_status(NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND")))

    info = error_info(call)

    assert info is not None
    assert info.reason == "TRIGGER_NOT_FOUND"


def test_error_info_is_none_without_details() -> None:
    call = grpc.aio.AioRpcError(
        grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom"
    )

    assert error_info(call) is None


def test_error_info_is_none_when_the_details_carry_no_error_info() -> None:
    status = rpc_status.to_status(status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="gone"))

    assert error_info(failed_call(status)) is None


def test_from_rpc_error_gives_back_the_error_the_server_raised() -> None:
    sent = NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": "t-1"})

    received = from_rpc_error(failed_call(to_status(sent)))

    assert type(received) is NotFound
    assert received.message == "Trigger not found"
    assert received.reason == "TRIGGER_NOT_FOUND"
    assert received.metadata == {"trigger_id": "t-1"}


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_unreachable_service_is_unavailable(code: grpc.StatusCode) -> None:
    call = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="connect failed")

    received = from_rpc_error(call)

    assert type(received) is Unavailable
    assert received.reason == "UNAVAILABLE"
    assert received.message == "connect failed"


def test_an_unknown_failure_is_a_plain_herald_error_named_by_its_code() -> None:
    call = grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata())

    received = from_rpc_error(call)

    assert type(received) is HeraldError
    assert received.code == grpc.StatusCode.INTERNAL
    assert received.message == "UNKNOWN"
    assert received.reason == "INTERNAL"


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (Unavailable("NATS is down"), True),
        (ConnectionRefusedError("refused"), True),
        (TimeoutError(), True),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError()), True),
        (sqlalchemy.exc.TimeoutError("QueuePool limit reached"), True),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate")), False),
        # Raised by the psycopg connection itself (the hot paths' fixed-text statements).
        (psycopg.OperationalError("consuming input failed: server closed the connection"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (FileNotFoundError("template.txt"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_an_outage_is_told_apart_from_a_failure_of_the_work(error: Exception, unavailable: bool) -> None:
    assert is_unavailable(error) is unavailable
