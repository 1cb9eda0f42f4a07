"""What every Herald service process does around its own code.

`run_service(name, serve)` configures logging, builds the settings from the environment, runs
`serve(runtime)` on an event loop and turns SIGTERM/SIGINT into a graceful stop. `Runtime`
owns the connections (PostgreSQL, NATS) and `Runtime.serve` runs the gRPC server, the bus
consumers and background loops until the stop, then stops them in order: stop taking requests,
finish in-flight messages, drain NATS, close the database pool.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kernel import bus
from kernel.auth import Authenticator
from kernel.database import create_engine, session_factory
from kernel.errors import ConfigurationError, HeraldError
from kernel.grpc_server import ServiceRegistration, create_server
from kernel.logs import configure_logging
from kernel.outbox import Outbox
from kernel.settings import Settings

log = structlog.get_logger(__name__)

GRACE_SECONDS = 5.0


@dataclass
class Runtime:
    name: str
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    nats: NatsClient | None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

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
        return Outbox(table, self.sessions, bus.BusPublisher(self.bus_client))

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
            js=self.js,
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
            )
        finally:
            if nats_client is not None and not nats_client.is_closed:
                try:
                    await asyncio.wait_for(nats_client.drain(), timeout=GRACE_SECONDS)
                except Exception:
                    await nats_client.close()
            await engine.dispose()

    async def serve(
        self,
        registrations: Iterable[ServiceRegistration],
        *,
        consumers: Iterable[bus.Consumer] = (),
        background: Iterable[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        server, port, health = await create_server(self.settings.listen_address(self.name), registrations)
        await server.start()
        tasks = [
            asyncio.create_task(consumer.run(self.stop), name=consumer.durable) for consumer in consumers
        ]
        tasks += [asyncio.create_task(loop(self.stop)) for loop in background]
        log.info("service.started", grpc=f"{self.settings.grpc_listen_host}:{port}")
        stop_waiter = asyncio.create_task(self.stop.wait())
        await asyncio.wait([stop_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and task.exception() is not None:
                log.error("service.task_crashed", task=task.get_name(), error=repr(task.exception()))
        self.stop.set()
        log.info("service.stopping")
        await health.enter_graceful_shutdown()
        await server.stop(GRACE_SECONDS)
        if tasks:
            await asyncio.wait(tasks, timeout=GRACE_SECONDS)
        for task in tasks:
            task.cancel()
        log.info("service.stopped")


def run_service(name: str, serve: Callable[[Runtime], Awaitable[None]], *, use_bus: bool = True) -> None:
    """The `main` of a service: settings from the environment, logging, signals, graceful stop."""
    settings = Settings.from_env()
    configure_logging(name, log_format=settings.log_format, level=settings.log_level)

    async def main() -> None:
        async with Runtime.open(name, settings, use_bus=use_bus) as runtime:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, runtime.stop.set)
            await serve(runtime)

    try:
        asyncio.run(main())
    except HeraldError as error:
        log.error("service.failed", error=error.message)
        sys.exit(2)
