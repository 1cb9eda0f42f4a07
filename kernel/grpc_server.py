"""The gRPC server every service runs: its servicers, health, reflection and one interceptor.

The interceptor turns a `HeraldError` into its status + ErrorInfo (kernel.errors) and anything
unexpected into a logged INTERNAL, so no servicer handles errors itself; it also binds the method
(and the caller's request id) to structlog's context for every line logged while the request
runs, logs the outcome and counts it (kernel.metrics: requests and latency by service, method
and status code). A servicer may bind the ids of what the request is about (`trigger_id`,
`event_id`, their plural lists for a batch) to structlog's context: the request's `rpc.done` line
carries them, and they are unbound when the request ends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kernel.errors import HeraldError, internal_status, to_status
from kernel.metrics import RpcCounters

log = structlog.get_logger(__name__)

# Response metadata a servicer may set that the REST gateway passes on as HTTP headers.
RESPONSE_HEADER_NAMES = (
    "idempotent-replayed",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
)
# What a servicer may bind to structlog's context for the request's own lines.
REQUEST_CONTEXT = ("rpc", "request_id", "trigger_id", "event_id", "trigger_ids", "event_ids")


@dataclass(frozen=True)
class ServiceRegistration:
    """One servicer, the generated function that adds it, and its full service name."""

    name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._counters = RpcCounters()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary
        method: str = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            structlog.contextvars.bind_contextvars(rpc=method, request_id=metadata.get("x-request-id"))
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)  # type: ignore[arg-type]
            except HeraldError as error:
                code = error.code
                status = to_status(error)
                headers = tuple((key, value) for key, value in error.headers.items())
                await context.abort(status.code, status.details, (*status.trailing_metadata, *headers))
            except grpc.aio.AbortError:  # the servicer aborted the call itself
                code = _aborted_code(context)
                raise
            except NotImplementedError:
                code = grpc.StatusCode.UNIMPLEMENTED
                await context.abort(code, f"{method} is not implemented")
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("rpc.failed")
                status = internal_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                seconds = time.perf_counter() - started
                self._counters.observe(method, code.name, seconds)
                level = log.debug if method.startswith("/grpc.health") else log.info
                level("rpc.done", code=code.name, ms=round(seconds * 1000, 2))
                structlog.contextvars.unbind_contextvars(*REQUEST_CONTEXT)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status a servicer's own `context.abort` set (as an enum, whatever gRPC keeps)."""
    raw: Any = context.code()
    if isinstance(raw, grpc.StatusCode):
        return raw
    for code in grpc.StatusCode:
        if code.value[0] == raw:
            return code
    return grpc.StatusCode.UNKNOWN


async def create_server(
    address: str, registrations: Iterable[ServiceRegistration]
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started-ready (not yet started) server bound to `address`, its port and its health servicer."""
    registrations = list(registrations)
    server = grpc.aio.server(interceptors=[RequestInterceptor()])
    for registration in registrations:
        registration.add_to_server(registration.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [registration.name for registration in registrations]
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port, health_servicer
