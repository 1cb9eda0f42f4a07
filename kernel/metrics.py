"""Prometheus metrics: one registry per process, served on `/metrics`.

Every Herald metric lives in `REGISTRY` (not prometheus_client's global default, so nothing a
library registers there mixes in unasked), with the process's CPU, memory and GC collectors. The
families shared by every process are defined here; a service defines its own next to its code
(services/executor/metrics.py), in the same registry.

Hot paths take their labelled children once (`labels()` is a dictionary lookup under a lock)
and then only call `inc()` / `observe()`.

Two ways to add a figure:
- a prometheus_client Collector whose `collect()` is cheap and needs no I/O: `register(collector)`;
- a figure that needs the database or the bus (the DLQ size, outbox rows, consumer lag): a
  `Sampler`, a coroutine that sets gauges, given to `Runtime.sample` (kernel.service). The
  process awaits every sampler every SAMPLE_INTERVAL_SECONDS in a background loop, so a scrape
  never waits on I/O and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

SAMPLE_INTERVAL_SECONDS = 5.0
SAMPLE_TIMEOUT_SECONDS = 3.0
# Seconds: from a cached answer (~1 ms) to the gateway's call timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Sampler = Callable[[], Awaitable[None]]
"""Sets gauges from the database or the bus; awaited in the background, never at scrape time."""


def register(collector: Collector) -> None:
    """Add a collector to the process's registry (its collect() runs at every scrape)."""
    REGISTRY.register(collector)


GRPC_REQUESTS = Counter(
    "herald_grpc_requests",
    "gRPC requests handled, by service, method and status code",
    ["service", "method", "code"],
    registry=REGISTRY,
)
GRPC_LATENCY = Histogram(
    "herald_grpc_request_duration_seconds",
    "Time to handle a gRPC request, by service, method and status code",
    ["service", "method", "code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "herald_http_requests",
    "REST requests answered by the gateway, by route template, HTTP method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "herald_http_request_duration_seconds",
    "Time the gateway took to answer a REST request, by route template and HTTP method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BUS_MESSAGES = Counter(
    "herald_bus_messages",
    "Bus messages handled by a durable consumer, by outcome: ack (handled), retry (nak'ed, "
    "comes back later) or dead_letter (recorded on the DLQ stream and terminated)",
    ["stream", "durable", "outcome"],
    registry=REGISTRY,
)
BUS_FETCH_LATENCY = Histogram(
    "herald_bus_fetch_duration_seconds",
    "Time a durable consumer took to handle one fetch (one batch of messages), acks included",
    ["stream", "durable"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BUS_FETCH_SIZE = Histogram(
    "herald_bus_fetch_size",
    "Messages in one fetch of a durable consumer (how much each batch of work carries)",
    ["stream", "durable"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
BUS_OUTCOMES = ("ack", "retry", "dead_letter")
OUTBOX_PUBLISHED = Counter(
    "herald_outbox_published",
    "Outbox messages the bus acknowledged, by schema and path (commit: right after the "
    "commit; relay: by the relay, later)",
    ["schema", "path"],
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "herald_outbox_pending",
    "Outbox rows not yet deleted (published or not), by schema; sampled",
    ["schema"],
    registry=REGISTRY,
)
CONSUMER_PENDING = Gauge(
    "herald_consumer_pending",
    "Stream messages a durable consumer has not delivered yet, by stream and consumer; sampled",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "herald_consumer_ack_pending",
    "Messages delivered and not acknowledged yet, by stream and consumer; sampled",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_REDELIVERED = Gauge(
    "herald_consumer_redelivered",
    "Messages redelivered and not acknowledged yet, by stream and consumer; sampled",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_OLDEST_PENDING_AGE = Gauge(
    "herald_consumer_oldest_pending_age_seconds",
    "How long the oldest message a consumer has not acknowledged has waited (0: none); sampled",
    ["stream", "consumer"],
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "herald_dependency_up",
    "1 while the process reaches a dependency (database, nats), else 0; checked every second",
    ["dependency"],
    registry=REGISTRY,
)


class ConsumerCounters:
    """One durable consumer's children, taken once: counting a message is one `inc()`."""

    def __init__(self, stream: str, durable: str):
        self.ack = BUS_MESSAGES.labels(stream, durable, "ack")
        self.retry = BUS_MESSAGES.labels(stream, durable, "retry")
        self.dead_letter = BUS_MESSAGES.labels(stream, durable, "dead_letter")
        self.fetch_seconds = BUS_FETCH_LATENCY.labels(stream, durable)
        self.fetch_size = BUS_FETCH_SIZE.labels(stream, durable)


class RpcCounters:
    """The gRPC children by full method path and status code, each taken on first use."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            service, _, name = method.lstrip("/").rpartition("/")
            children = (GRPC_REQUESTS.labels(service, name, code), GRPC_LATENCY.labels(service, name, code))
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)


class HttpCounters:
    """The gateway's children by route template, method and status, each taken on first use."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            children = (HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method))
            self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)


def exposition() -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(REGISTRY)


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_metrics(host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics on host:port (0: any free port) on this event loop; the runner (to
    `cleanup()` when stopping) and the port it listens on."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"cannot serve /metrics on {host}:{port}: {error.strerror or error}") from error
    return runner, int(runner.addresses[0][1])


async def run_samplers(samplers: Sequence[Sampler], stop: asyncio.Event) -> None:
    """Await every sampler every SAMPLE_INTERVAL_SECONDS until `stop`; one that fails or takes
    too long is logged (once until it works again) and tried next round."""
    failing: set[int] = set()
    while not stop.is_set():
        for index, sampler in enumerate(samplers):
            try:
                await asyncio.wait_for(sampler(), SAMPLE_TIMEOUT_SECONDS)
            except Exception as error:
                if index not in failing:
                    log.warning("metrics.sample_failed", sampler=_name(sampler), error=repr(error)[:300])
                failing.add(index)
            else:
                failing.discard(index)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL_SECONDS)


def _name(sampler: Sampler) -> str:
    return str(getattr(sampler, "__qualname__", None) or sampler)
