"""The executor process: run starts, one worker per channel, waits, timers, its gRPC services and
the outbox relay."""

from __future__ import annotations

import asyncio
from datetime import datetime
from email.utils import parseaddr

import structlog

from herald.executor.v1 import devmail_pb2_grpc, executor_pb2, executor_pb2_grpc
from kernel.clients import channel
from kernel.grpc_server import ServiceRegistration
from kernel.loops import every
from kernel.retention import Retention, purge_project
from kernel.service import Runtime, run_service
from kernel.settings import Settings
from kernel.steps import MAX_ATTEMPTS
from services.executor import handlers
from services.executor.adapters import OUTBOX, ExecutorSqlUnitOfWork
from services.executor.consumers import (
    CHANNELS,
    RUNS_DURABLE,
    RUNS_FILTER,
    WAITS_DURABLE,
    WAITS_FILTER,
    JetStreamEventLog,
    run_start_batch_handler,
    run_start_handler,
    step_batch_handler,
    step_consumer,
    step_handler,
    wait_batch_handler,
    wait_handler,
)
from services.executor.metrics import dead_letter_sampler
from services.executor.senders import (
    MAX_IDLE_SESSIONS,
    Destinations,
    HttpTextSender,
    SmtpEmailSender,
    SmtpServer,
    WebhookHttpSender,
    http_client,
)
from services.executor.servicer import ExecutorServicer

log = structlog.get_logger(__name__)
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
TIMER_INTERVAL = 0.2
# The most step tasks a channel worker fetches, and so sends at once in one transaction
# (handlers.perform_steps): as many as the SMTP sender keeps sessions open for, so that full
# fetches reuse them rather than connect again; a slow provider holds up at most this many.
STEP_FETCH = MAX_IDLE_SESSIONS


def smtp_url(settings: Settings) -> str:
    """HERALD_SMTP_URL, or the development capture inbox when it is not set."""
    if settings.smtp_url:
        return settings.smtp_url
    return f"smtp://127.0.0.1:{settings.devmail_smtp_port}"


def channels(settings: Settings) -> handlers.Channels:
    url = smtp_url(settings)
    if not settings.smtp_url:
        log.warning(
            "executor.dev_mail",
            detail=f"HERALD_SMTP_URL is not set: email goes to the capture inbox at {url}",
        )
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "herald.local"
    client = http_client()
    destinations = Destinations(allow_private=settings.allow_private_destinations)
    return handlers.Channels(
        email=SmtpEmailSender(SmtpServer.from_url(url), settings.mail_from),
        text=HttpTextSender(client, destinations),
        webhook=WebhookHttpSender(client, destinations),
        message_domain=domain,
        max_attempts=settings.max_delivery_attempts,
    )


async def serve(runtime: Runtime) -> None:
    if runtime.settings.smtp_url:
        await _serve(runtime, None)
        return
    # Email goes to the development capture inbox: erasing a contact erases its mail there too.
    async with channel(runtime.settings.target("devmail")) as devmail_channel:
        await _serve(runtime, devmail_pb2_grpc.DevMailServiceStub(devmail_channel))


async def _serve(runtime: Runtime, devmail: devmail_pb2_grpc.DevMailServiceAsyncStub | None) -> None:
    outbox = runtime.outbox(OUTBOX)
    senders = channels(runtime.settings)
    events = JetStreamEventLog(runtime.bus_client)
    runtime.sample(dead_letter_sampler(runtime.sessions, runtime.js))

    def unit_of_work() -> ExecutorSqlUnitOfWork:
        return ExecutorSqlUnitOfWork(runtime.sessions, outbox)

    async def timers(stop: asyncio.Event) -> None:
        await every(TIMER_INTERVAL, "timers", lambda: handlers.fire_timers(unit_of_work), stop)

    async def catch_up(stop: asyncio.Event) -> None:
        await every(
            TIMER_INTERVAL, "wait-catch-up", lambda: handlers.catch_up_waits(unit_of_work(), events), stop
        )

    async def purge(team_id: str, before: datetime, limit: int) -> dict[str, int]:
        return await purge_project(team_id, before, limit, unit_of_work())

    retention = Retention.for_service("executor", runtime, purge)

    # A step's own attempt budget (up to MAX_ATTEMPTS) decides when it fails; the bus's limit
    # only catches a worker that crashes on a message again and again. A worker takes its fetch
    # at once, without lingering for more: it is on the way to the inbox.
    step_workers = [
        runtime.consumer(
            "STEPS",
            *step_consumer(channel),
            step_handler(unit_of_work, senders, channel),
            max_attempts=MAX_ATTEMPTS + 5,
            batch_handler=step_batch_handler(unit_of_work, senders, channel),
            batch_size=STEP_FETCH,
        )
        for channel in CHANNELS
    ]
    await runtime.serve(
        [
            ServiceRegistration(
                SERVICE_NAME,
                ExecutorServicer(runtime.authenticator(), unit_of_work, unit_of_work, devmail),
                executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
            )
        ],
        consumers=[
            runtime.consumer(
                "RUNS",
                RUNS_DURABLE,
                RUNS_FILTER,
                run_start_handler(unit_of_work),
                batch_handler=run_start_batch_handler(unit_of_work),
            ),
            runtime.consumer(
                "EVENTS",
                WAITS_DURABLE,
                WAITS_FILTER,
                wait_handler(unit_of_work),
                batch_handler=wait_batch_handler(unit_of_work),
            ),
            *step_workers,
        ],
        background=[outbox.run_relay, timers, catch_up, retention.run],
    )


def main() -> None:
    run_service("executor", serve)
