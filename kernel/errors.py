"""Herald's exception hierarchy and the one place where it becomes a gRPC status and back.

Every error a caller can cause is a `HeraldError` subclass carrying a canonical gRPC code, an
UPPER_SNAKE `reason` and the values it is about in `metadata`. On the wire it is a `grpc.Status`
with one `google.rpc.ErrorInfo` detail; `http_status` travels in that metadata when the HTTP
status is finer than the gRPC code says (413, 422), so the gateway maps errors in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import grpc
import psycopg
import sqlalchemy.exc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "herald.dev"
HTTP_STATUS_KEY = "http_status"


class HeraldError(Exception):
    """Root of every error Herald reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"
    http_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        # Response metadata for the caller (kernel.grpc_server.RESPONSE_HEADER_NAMES), e.g. retry-after.
        self.headers: dict[str, str] = dict(headers or {})


class InvalidArgument(HeraldError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class Unauthenticated(HeraldError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(HeraldError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(HeraldError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(HeraldError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(HeraldError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PayloadTooLarge(InvalidArgument):
    default_reason = "PAYLOAD_TOO_LARGE"
    http_status = 413


class Unprocessable(InvalidArgument):
    """The request is well-formed but contradicts an earlier one (e.g. a reused idempotency key)."""

    default_reason = "UNPROCESSABLE"
    http_status = 422


class Conflict(HeraldError):
    code = grpc.StatusCode.ABORTED
    default_reason = "CONFLICT"


class ResourceExhausted(HeraldError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(HeraldError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ConfigurationError(HeraldError):
    """The process was started with settings it cannot work with."""

    default_reason = "CONFIGURATION"


HTTP_STATUS_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_phrase(status: int) -> str:
    """The reason phrase of an HTTP status ("Bad Request"); 499 is nginx's "Client Closed Request"."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Error"


def http_status_of(error: HeraldError) -> int:
    """The HTTP status that reports `error` on the REST API."""
    return error.http_status or HTTP_STATUS_OF_CODE.get(error.code, 500)


def to_status(error: HeraldError) -> grpc.Status:
    """The gRPC status (with its ErrorInfo detail) that reports `error`."""
    metadata = dict(error.metadata)
    if error.http_status is not None:
        metadata[HTTP_STATUS_KEY] = str(error.http_status)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def internal_status(message: str = "Internal server error") -> grpc.Status:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if the server sent one."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


_BY_CODE: dict[grpc.StatusCode, type[HeraldError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        ResourceExhausted,
        Unavailable,
    )
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> HeraldError:
    """The HeraldError that a failed call to another Herald service reports."""
    info = error_info(error)
    cls = _BY_CODE.get(error.code(), HeraldError)
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        cls = Unavailable
    converted = cls(
        error.details() or error.code().name,
        reason=info.reason if info else None,
        metadata=dict(info.metadata) if info else None,
    )
    return converted


def is_unavailable(error: BaseException) -> bool:
    """Does `error` say that a server Herald needs (PostgreSQL, NATS, another service) is out of
    reach for now, rather than that the work itself is wrong?"""
    if isinstance(error, (Unavailable, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(
            error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
        )
    # The same, raised by the psycopg connection itself (statements sent on the driver's connection).
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    # The pool had no connection to give within its timeout.
    return isinstance(error, sqlalchemy.exc.TimeoutError)
