"""The executor process: run starts, the email channel worker, GetRun, and the outbox relay."""

from __future__ import annotations

from email.utils import parseaddr

import structlog

from herald.executor.v1 import executor_pb2, executor_pb2_grpc
from kernel.grpc_server import ServiceRegistration
from kernel.service import Runtime, run_service
from kernel.settings import Settings
from services.executor.adapters import OUTBOX, ExecutorSqlUnitOfWork, SmtpEmailSender, SmtpServer
from services.executor.consumers import (
    EMAIL_DURABLE,
    EMAIL_FILTER,
    RUNS_DURABLE,
    RUNS_FILTER,
    run_start_handler,
    step_handler,
)
from services.executor.handlers import Channels
from services.executor.servicer import ExecutorServicer

log = structlog.get_logger(__name__)
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name


def smtp_url(settings: Settings) -> str:
    """HERALD_SMTP_URL, or the development capture inbox when it is not set."""
    if settings.smtp_url:
        return settings.smtp_url
    return f"smtp://127.0.0.1:{settings.devmail_smtp_port}"


def channels(settings: Settings) -> Channels:
    url = smtp_url(settings)
    if not settings.smtp_url:
        log.warning(
            "executor.dev_mail",
            detail=f"HERALD_SMTP_URL is not set: email goes to the capture inbox at {url}",
        )
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "herald.local"
    return Channels(
        email=SmtpEmailSender(SmtpServer.from_url(url), settings.mail_from),
        message_domain=domain,
        max_attempts=settings.max_delivery_attempts,
    )


async def serve(runtime: Runtime) -> None:
    outbox = runtime.outbox(OUTBOX)

    def unit_of_work() -> ExecutorSqlUnitOfWork:
        return ExecutorSqlUnitOfWork(runtime.sessions, outbox)

    await runtime.serve(
        [
            ServiceRegistration(
                SERVICE_NAME,
                ExecutorServicer(runtime.authenticator(), unit_of_work),
                executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
            )
        ],
        consumers=[
            runtime.consumer("RUNS", RUNS_DURABLE, RUNS_FILTER, run_start_handler(unit_of_work)),
            runtime.consumer(
                "STEPS", EMAIL_DURABLE, EMAIL_FILTER, step_handler(unit_of_work, channels(runtime.settings))
            ),
        ],
        background=[outbox.run_relay],
    )


def main() -> None:
    run_service("executor", serve)
