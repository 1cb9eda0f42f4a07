"""What every Herald service process does around its own code.

`run_service(name, serve)` configures logging, builds the settings from the environment, runs
`serve(runtime)` on an event loop and turns SIGTERM/SIGINT into a graceful stop. `Runtime`
owns the connections (PostgreSQL, NATS) and `Runtime.serve` runs the gRPC server, the bus
consumers and background loops until the stop, then stops them in order: stop taking requests,
finish in-flight messages, drain NATS, close the database pool.

While it serves, a process also serves Prometheus `/metrics` (kernel.metrics) on its metrics
address, and checks its dependencies every HEALTH_INTERVAL_SECONDS: while the database does not
answer `SELECT 1` or the NATS connection is down, its gRPC health (overall and for each of its
services) reads NOT_SERVING, and SERVING again once both are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from grpc_health.v1 import health, health_pb2
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kernel import bus
from kernel.auth import Authenticator
from kernel.database import create_engine, session_factory
from kernel.errors import ConfigurationError, HeraldError
from kernel.grpc_server import ServiceRegistration, create_server
from kernel.heap import settle_heap
from kernel.lag import lag_sampler
from kernel.logs import configure_logging
from kernel.metrics import DEPENDENCY_UP, Sampler, run_samplers, serve_metrics
from kernel.outbox import Outbox
from kernel.settings import Settings

log = structlog.get_logger(__name__)

GRACE_SECONDS = 5.0
HEALTH_INTERVAL_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 1.0
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Runtime:
    name: str
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    nats: NatsClient | None
    # One connection of its own for the health check, so a busy pool never reads as a database down.
    probe_engine: AsyncEngine | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    samplers: list[Sampler] = field(default_factory=list)

    @property
    def bus_client(self) -> NatsClient:
        if self.nats is None:
            raise ConfigurationError(f"{self.name} was started without a bus connection")
        return self.nats

    @property
    def js(self) -> JetStreamContext:
        return self.bus_client.jetstream()

    def authenticator(self) -> Authenticator:
        return Authenticator(self.sessions)

    def outbox(self, table: Table) -> Outbox:
        """The outbox of `table`; its pending rows are sampled for /metrics."""
        outbox = Outbox(table, self.sessions, bus.BusPublisher(self.bus_client))
        self.sample(outbox.sample_pending)
        return outbox

    def sample(self, sampler: Sampler) -> None:
        """Have `sampler` set its gauges every few seconds while the process serves (kernel.metrics)."""
        self.samplers.append(sampler)

    def consumer(
        self,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: bus.Handler,
        max_attempts: int | None = None,
        batch_handler: bus.BatchHandler | None = None,
        batch_size: int | None = None,
        linger_seconds: float = 0.0,
    ) -> bus.Consumer:
        """A durable consumer; after `max_attempts` deliveries (default HERALD_MAX_DELIVERY_ATTEMPTS)
        a message that still fails goes to the DLQ stream. With `batch_handler`, each fetch (of up to
        `batch_size` messages, lingering `linger_seconds` for more) is handled at once (see
        bus.Consumer)."""
        return bus.Consumer(
            client=self.bus_client,
            stream=stream,
            durable=durable,
            filter_subject=filter_subject,
            handler=handler,
            max_attempts=max_attempts or self.settings.max_delivery_attempts,
            concurrency=self.settings.consumer_concurrency,
            batch_handler=batch_handler,
            batch_size=batch_size,
            linger_seconds=linger_seconds,
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, name: str, settings: Settings, *, use_bus: bool = True) -> AsyncIterator[Runtime]:
        engine = create_engine(settings.require_database_url())
        probe_engine = create_engine(settings.require_database_url(), pool_size=1)
        nats_client: NatsClient | None = None
        try:
            if use_bus:
                nats_client = await bus.connect(settings.require_nats_url(), name=f"herald-{name}")
                await bus.ensure_streams(nats_client.jetstream())
            yield cls(
                name=name,
                settings=settings,
                engine=engine,
                sessions=session_factory(engine),
                nats=nats_client,
                probe_engine=probe_engine,
            )
        finally:
            if nats_client is not None and not nats_client.is_closed:
                try:
                    await asyncio.wait_for(nats_client.drain(), timeout=GRACE_SECONDS)
                except Exception:
                    await nats_client.close()
            await engine.dispose()
            await probe_engine.dispose()

    async def serve(
        self,
        registrations: Iterable[ServiceRegistration],
        *,
        consumers: Iterable[bus.Consumer] = (),
        background: Iterable[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        registrations = list(registrations)
        server, port, health_servicer = await create_server(
            self.settings.listen_address(self.name), registrations
        )
        metrics_host, _, metrics_port = self.settings.metrics_listen_address(self.name).rpartition(":")
        metrics, metrics_port_bound = await serve_metrics(metrics_host, int(metrics_port))
        await server.start()
        consumers = list(consumers)
        if consumers:
            self.sample(lag_sampler(self.js, [(consumer.stream, consumer.durable) for consumer in consumers]))
        tasks = [
            asyncio.create_task(consumer.run(self.stop), name=consumer.durable) for consumer in consumers
        ]
        tasks += [asyncio.create_task(loop(self.stop)) for loop in background]
        names = ["", *(registration.name for registration in registrations)]
        tasks.append(asyncio.create_task(self.watch_health(health_servicer, names), name="health"))
        if self.samplers:
            tasks.append(asyncio.create_task(run_samplers(self.samplers, self.stop), name="metrics"))
        log.info(
            "service.started",
            grpc=f"{self.settings.grpc_listen_host}:{port}",
            metrics=f"http://{metrics_host}:{metrics_port_bound}/metrics",
        )
        stop_waiter = asyncio.create_task(self.stop.wait())
        await asyncio.wait([stop_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and task.exception() is not None:
                log.error("service.task_crashed", task=task.get_name(), error=repr(task.exception()))
        self.stop.set()
        log.info("service.stopping")
        await health_servicer.enter_graceful_shutdown()
        await server.stop(GRACE_SECONDS)
        if tasks:
            await asyncio.wait(tasks, timeout=GRACE_SECONDS)
        for task in tasks:
            task.cancel()
        await metrics.cleanup()
        log.info("service.stopped")

    async def watch_health(self, servicer: health.aio.HealthServicer, names: list[str]) -> None:
        """Every HEALTH_INTERVAL_SECONDS until the stop: NOT_SERVING for every name in `names`
        while a dependency is down, SERVING once all are back; each change is logged."""
        serving = True
        while not self.stop.is_set():
            down = await self.dependencies_down()
            if serving == bool(down) and not self.stop.is_set():
                serving = not down
                status = SERVING if serving else NOT_SERVING
                for name in names:
                    await servicer.set(name, status)
                if serving:
                    log.info("health.serving")
                else:
                    log.warning("health.not_serving", down=down)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), HEALTH_INTERVAL_SECONDS)

    async def dependencies_down(self) -> list[str]:
        """The dependencies this process cannot reach now: `database`, `nats`."""
        down = []
        database_up = await self._database_answers()
        DEPENDENCY_UP.labels("database").set(database_up)
        if not database_up:
            down.append("database")
        if self.nats is not None:
            nats_up = self.nats.is_connected
            DEPENDENCY_UP.labels("nats").set(nats_up)
            if not nats_up:
                down.append("nats")
        return down

    async def _database_answers(self) -> bool:
        engine = self.probe_engine or self.engine
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS), engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # refused, broken, timed out: all mean "not now"
            if self.probe_engine is not None:
                await self.probe_engine.dispose()  # the next check starts on a new connection
            return False
        return True


def run_service(name: str, serve: Callable[[Runtime], Awaitable[None]], *, use_bus: bool = True) -> None:
    """The `main` of a service: settings from the environment, logging, signals, graceful stop."""
    settings = Settings.from_env()
    configure_logging(name, log_format=settings.log_format, level=settings.log_level)

    async def main() -> None:
        async with Runtime.open(name, settings, use_bus=use_bus) as runtime:
            settle_heap()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, runtime.stop.set)
            await serve(runtime)

    try:
        asyncio.run(main())
    except HeraldError as error:
        log.error("service.failed", error=error.message)
        sys.exit(2)
