"""The ingest process: wiring of its adapters and servicers, the outbox relay, the timer that
fires scheduled events and the retention purge."""

from __future__ import annotations

from dataclasses import replace

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.matcher.v1 import matcher_pb2_grpc
from kernel.auth import Authenticator
from kernel.clients import channel
from kernel.grpc_server import ServiceRegistration
from kernel.loops import every
from kernel.outbox import Outbox
from kernel.policy import PolicyCache, retention_by_team
from kernel.service import Runtime, run_service
from services.ingest import handlers
from services.ingest.adapters import OUTBOX, IngestGroupUnitOfWork, IngestSqlUnitOfWork, SqlRateLimiter
from services.ingest.groups import GroupCommit
from services.ingest.servicer import ContactServicer, IngestServicer, ProjectServicer

log = structlog.get_logger(__name__)

SERVICES = ingest_pb2.DESCRIPTOR.services_by_name
# Scheduled events fire within this long of their time.
TIMER_INTERVAL_SECONDS = 0.2
PURGE_INTERVAL_SECONDS = 600.0


def registrations(
    authenticator: Authenticator,
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None,
) -> tuple[list[ServiceRegistration], handlers.Intake]:
    """Ingest's three gRPC services over `sessions` and `outbox`, and the intake they share;
    `matcher` answers dry runs (POST /api/v1/events/match)."""

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
            ContactServicer(authenticator, intake),
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
    async with channel(runtime.settings.target("matcher")) as matcher_channel:
        await _serve(runtime, matcher_pb2_grpc.MatcherServiceStub(matcher_channel))


async def _serve(runtime: Runtime, matcher: matcher_pb2_grpc.MatcherServiceAsyncStub) -> None:
    outbox = runtime.outbox(OUTBOX)
    services, intake = registrations(runtime.authenticator(), runtime.sessions, outbox, matcher)

    async def fire_due() -> int:
        return await handlers.fire_due(intake.unit_of_work())

    async def purge() -> int:
        async with runtime.sessions() as session:
            teams = await retention_by_team(session)
        removed = await handlers.purge(teams, intake.unit_of_work)
        if removed:
            log.info("retention.purged", rows=removed)
        return 0

    await runtime.serve(
        services,
        background=[
            outbox.run_relay,
            lambda stop: every(TIMER_INTERVAL_SECONDS, "timer", fire_due, stop),
            lambda stop: every(PURGE_INTERVAL_SECONDS, "retention", purge, stop),
        ],
    )


def main() -> None:
    run_service("ingest", serve)
