"""The REST gateway: the public JSON API, translated into gRPC calls to Herald's services.

It holds no business logic and no database. Every annotated RPC is one route (gateway.routes);
a request's path variables, query string and JSON body become the request message; the caller's
credentials travel as gRPC metadata; the response message (or its `response_body` field) is the
JSON answer; every error is `{"statusCode", "message", "error"}` (gateway.errors).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import assets, openapi
from gateway.coalesce import Coalescer, Metadata
from gateway.errors import error_response, from_herald_error, from_rpc_error
from gateway.requests import BadRequest, build_message, check_shape, parse_json, query_document
from gateway.routes import Route, message_of, routes
from herald.ingest.v1 import ingest_pb2
from kernel.clients import channel
from kernel.errors import HeraldError
from kernel.grpc_server import RESPONSE_HEADER_NAMES
from kernel.metrics import HttpCounters, metrics_page
from kernel.settings import Settings

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
MAX_BODY_BYTES = 1024 * 1024
CALL_TIMEOUT_SECONDS = 30.0
HEALTH_TIMEOUT_SECONDS = 1.0
# Request headers that travel to the services as metadata.
FORWARDED_HEADERS = ("x-api-key", "x-team-id", "authorization", "idempotency-key", "x-request-id")
# Response metadata that becomes HTTP response headers (kernel.grpc_server.RESPONSE_HEADERS).
RESPONSE_HEADERS = {name: name.title() for name in RESPONSE_HEADER_NAMES}
RESPONSE_HEADERS["ratelimit-limit"] = "RateLimit-Limit"
RESPONSE_HEADERS["ratelimit-remaining"] = "RateLimit-Remaining"
RESPONSE_HEADERS["ratelimit-reset"] = "RateLimit-Reset"
RESPONSE_HEADERS["ratelimit-policy"] = "RateLimit-Policy"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHANNELS: web.AppKey[dict[str, grpc.aio.Channel]] = web.AppKey("channels", dict)
COALESCER: web.AppKey[Coalescer] = web.AppKey("coalescer", Coalescer)
HTTP_COUNTERS: web.AppKey[HttpCounters] = web.AppKey("http_counters", HttpCounters)
# Single sends travel to ingest together (gateway.coalesce).
COALESCED_METHOD = "herald.ingest.v1.IngestService.SendEvent"
# The processes /readyz waits for: every service but the development capture inbox.
READY_SERVICES = ("ingest", "matcher", "executor", "tracker")
# Operations endpoints: polled often, logged at debug level only.
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")


def request_metadata(request: web.Request, request_id: str) -> tuple[tuple[str, str], ...]:
    metadata = [("x-request-id", request_id)]
    for name in FORWARDED_HEADERS:
        value = request.headers.get(name)
        if value is None or name == "x-request-id":
            continue
        if not value.isascii() or not value.isprintable():
            raise BadRequest(f"Header {name} must be printable ASCII", reason="INVALID_HEADER")
        metadata.append((name, value.strip()))
    if request.remote:
        metadata.append(("x-forwarded-for", request.remote))
    return tuple(metadata)


async def request_document(request: web.Request, route: Route) -> dict[str, Any]:
    """The JSON view of the request message: body, query string and path variables."""
    document: dict[str, Any] = {}
    if route.body:
        raw = await request.read()
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object", reason="INVALID_BODY")
        if route.body == "*":
            document.update(query_document(request.query, route.method.input_type, allowed=()))
            document.update(body)
        else:
            # Errors name fields as the caller wrote them: relative to the body, not the request.
            check_shape(body, message_of(route.method.input_type.fields_by_name[route.body]))
            document[route.body] = body
            document.update(query_document(request.query, route.method.input_type))
    else:
        document.update(query_document(request.query, route.method.input_type))
    for name in route.path_variables:
        document[name] = request.match_info[name]
    return document


def response_document(route: Route, response: Message) -> Any:
    if route.response_body:
        response = getattr(response, route.response_body)
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def response_headers(*metadata: Any) -> dict[str, str]:
    """The HTTP headers a service asked for in its initial or trailing metadata."""
    headers: dict[str, str] = {}
    for entries in metadata:
        for key, value in entries or ():
            name = RESPONSE_HEADERS.get(key.lower())
            if name is not None and isinstance(value, str):
                headers[name] = value
    return headers


def failed_call_response(error: grpc.aio.AioRpcError, service: str) -> web.Response:
    """The HTTP answer to a failed call, with the headers the service asked for."""
    answer = from_rpc_error(error, service)
    answer.headers.update(response_headers(error.initial_metadata(), error.trailing_metadata()))
    return answer


def rpc_handler(route: Route) -> Handler:
    request_class = GetMessageClass(route.method.input_type)
    response_class = GetMessageClass(route.method.output_type)
    service = route.method.containing_service.full_name
    coalesced = route.method.full_name == COALESCED_METHOD

    async def handle(request: web.Request) -> web.StreamResponse:
        request_id = request["request_id"]
        try:
            metadata = request_metadata(request, request_id)
            message = build_message(await request_document(request, route), request_class())
        except BadRequest as error:
            return from_herald_error(error)
        call: grpc.aio.UnaryUnaryMultiCallable[Message, Message] = request.app[CHANNELS][
            route.process
        ].unary_unary(
            route.grpc_path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        if coalesced:
            return await send_coalesced(request, route, message, metadata)
        pending = call(message, metadata=metadata, timeout=route.timeout or CALL_TIMEOUT_SECONDS)
        try:
            response = await pending
        except grpc.aio.AioRpcError as error:
            return failed_call_response(error, service)
        headers = response_headers(await pending.initial_metadata(), await pending.trailing_metadata())
        if route.success_status == 204:
            return web.Response(status=204, headers=headers)
        return web.json_response(
            response_document(route, response), status=route.success_status, headers=headers
        )

    return handle


async def send_coalesced(
    request: web.Request, route: Route, message: Message, metadata: Metadata
) -> web.StreamResponse:
    """A single send, answered as SendEvent would answer it, carried with its caller's other
    concurrent sends in one SendEvents call (gateway.coalesce)."""
    assert isinstance(message, ingest_pb2.SendEventRequest)
    header_key = dict(metadata).get("idempotency-key", "")
    item = ingest_pb2.SendEventsItem(event=message, idempotency_key_header=header_key)
    try:
        result = await request.app[COALESCER].send(metadata, item)
    except grpc.aio.AioRpcError as error:
        return failed_call_response(error, route.method.containing_service.full_name)
    headers = response_headers(list(result.headers.items()))
    if result.WhichOneof("outcome") == "error":
        return error_response(result.error.status_code, result.error.message, headers)
    return web.json_response(
        response_document(route, result.response), status=route.success_status, headers=headers
    )


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, access log, and HTTP-level errors (404, 405, 413) in the JSON error shape."""
    request_id = request.headers.get("X-Request-Id", "") or str(uuid.uuid4())
    if not request_id.isascii() or not request_id.isprintable() or len(request_id) > 200:
        request_id = str(uuid.uuid4())
    request["request_id"] = request_id
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, f"Request body is larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPMethodNotAllowed as error:
        response = error_response(405, f"Cannot {request.method} {request.path}")
        response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))
    except web.HTTPNotFound:
        response = error_response(404, f"Cannot {request.method} {request.path}")
    except web.HTTPException as error:
        response = error_response(error.status, error.reason)
    except HeraldError as error:
        response = from_herald_error(error)
    response.headers["X-Request-Id"] = request_id
    seconds = time.perf_counter() - started
    request.app[HTTP_COUNTERS].observe(route_template(request), request.method, response.status, seconds)
    level = log.debug if request.path in QUIET_PATHS else log.info
    level(
        "http.request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round(seconds * 1000, 2),
        request_id=request_id,
    )
    return response


def route_template(request: web.Request) -> str:
    """The route's path template (`/api/v1/triggers/{trigger_id}`): one metric per route, not
    per trigger; `unmatched` for a path no route takes."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when every service answers its gRPC health check with SERVING."""
    channels = request.app[CHANNELS]

    async def check(name: str) -> tuple[str, str]:
        stub = health_pb2_grpc.HealthStub(channels[name])
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            return name, error.code().name
        return name, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    results = dict(await asyncio.gather(*(check(name) for name in READY_SERVICES)))
    ready = all(state == "SERVING" for state in results.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "services": results}, status=200 if ready else 503
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=MAX_BODY_BYTES)
    all_routes = routes()
    processes = sorted({route.process for route in all_routes})
    app[CHANNELS] = {}
    app[HTTP_COUNTERS] = HttpCounters()
    spec = openapi.document(all_routes, VERSION)

    async def open_channels(app: web.Application) -> None:
        app[CHANNELS].update({p: channel(settings.target(p)) for p in processes})
        app[COALESCER] = Coalescer(
            app[CHANNELS]["ingest"], CALL_TIMEOUT_SECONDS, replicas=len(settings.addresses("ingest"))
        )

    async def close_channels(app: web.Application) -> None:
        await asyncio.gather(*(channel.close() for channel in app[CHANNELS].values()))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.on_startup.append(open_channels)
    app.on_cleanup.append(close_channels)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi_json)
    assets.add_routes(app.router, assets.load())
    for route in all_routes:
        app.router.add_route(route.http_method, route.path, rpc_handler(route))
    return app
