"""The ingest process: wiring of its adapters and servicers, the outbox relay, the timer that
fires scheduled events and the retention purge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.executor.v1 import executor_pb2, executor_pb2_grpc
from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.auth import Authenticator
from kernel.clients import channel
from kernel.grpc_server import ServiceRegistration
from kernel.loops import every
from kernel.outbox import Outbox
from kernel.policy import PolicyCache
from kernel.retention import Retention
from kernel.service import Runtime, run_service
from services.ingest import handlers
from services.ingest.adapters import OUTBOX, IngestGroupUnitOfWork, IngestSqlUnitOfWork, SqlRateLimiter
from services.ingest.groups import GroupCommit
from services.ingest.servicer import (
    RESWEEP_SECONDS,
    ContactServicer,
    EraseRpc,
    IngestServicer,
    ProjectServicer,
)

log = structlog.get_logger(__name__)

SERVICES = ingest_pb2.DESCRIPTOR.services_by_name
# Scheduled events fire within this long of their time.
TIMER_INTERVAL_SECONDS = 0.2


def registrations(
    authenticator: Authenticator,
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None,
    erase_rpcs: Sequence[EraseRpc] = (),
    resweep_seconds: Sequence[float] = RESWEEP_SECONDS,
) -> tuple[list[ServiceRegistration], handlers.Intake]:
    """Ingest's three gRPC services over `sessions` and `outbox`, and the intake they share;
    `matcher` answers dry runs (POST /api/v1/events/match); `erase_rpcs` erase a deleted
    contact in the other services."""

    def unit_of_work() -> IngestSqlUnitOfWork:
        return IngestSqlUnitOfWork(sessions, outbox)

    def group_unit_of_work() -> IngestGroupUnitOfWork:
        return IngestGroupUnitOfWork(sessions, outbox)

    alone = handlers.Intake(unit_of_work, PolicyCache(sessions), SqlRateLimiter(sessions))
    groups = GroupCommit(group_unit_of_work, lambda draft: handlers.store_alone(draft, alone))
    intake = replace(alone, groups=groups)
    services = [
        ServiceRegistration(
            SERVICES["IngestService"].full_name,
            IngestServicer(authenticator, intake, matcher),
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
        ),
        ServiceRegistration(
            SERVICES["ContactService"].full_name,
            ContactServicer(authenticator, intake, erase_rpcs, resweep_seconds),
            ingest_pb2_grpc.add_ContactServiceServicer_to_server,
        ),
        ServiceRegistration(
            SERVICES["ProjectService"].full_name,
            ProjectServicer(authenticator, unit_of_work),
            ingest_pb2_grpc.add_ProjectServiceServicer_to_server,
        ),
    ]
    return services, intake


async def serve(runtime: Runtime) -> None:
    settings = runtime.settings
    async with (
        channel(settings.target("matcher")) as matcher_channel,
        channel(settings.target("executor")) as executor_channel,
        channel(settings.target("tracker")) as tracker_channel,
    ):
        matcher = matcher_pb2_grpc.MatcherServiceStub(matcher_channel)
        executor = executor_pb2_grpc.ExecutorServiceStub(executor_channel)
        tracker = tracker_pb2_grpc.TrackerServiceStub(tracker_channel)
        erase_rpcs = [
            EraseRpc("matcher", matcher.EraseContact, matcher_pb2.EraseContactRequest),
            EraseRpc("executor", executor.EraseContact, executor_pb2.EraseContactRequest),
            EraseRpc("tracker", tracker.EraseContact, tracker_pb2.EraseContactRequest),
        ]
        await _serve(runtime, matcher, erase_rpcs)


async def _serve(
    runtime: Runtime, matcher: matcher_pb2_grpc.MatcherServiceAsyncStub, erase_rpcs: Sequence[EraseRpc]
) -> None:
    outbox = runtime.outbox(OUTBOX)
    services, intake = registrations(runtime.authenticator(), runtime.sessions, outbox, matcher, erase_rpcs)

    async def fire_due() -> int:
        return await handlers.fire_due(intake.unit_of_work())

    async def purge(team_id: str, before: datetime, limit: int) -> dict[str, int]:
        return await handlers.purge(team_id, before, limit, intake.unit_of_work())

    retention = Retention.for_service("ingest", runtime, purge)
    await runtime.serve(
        services,
        background=[
            outbox.run_relay,
            lambda stop: every(TIMER_INTERVAL_SECONDS, "timer", fire_due, stop),
            retention.run,
        ],
    )


def main() -> None:
    run_service("ingest", serve)
