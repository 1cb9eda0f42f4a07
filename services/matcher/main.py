"""The matcher process: wiring of its adapters, servicer, EVENTS consumer and outbox relay."""

from __future__ import annotations

from datetime import datetime

from herald.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from kernel.grpc_server import ServiceRegistration
from kernel.retention import Retention, purge_project
from kernel.service import Runtime, run_service
from services.matcher.adapters import OUTBOX, MatcherSqlUnitOfWork
from services.matcher.consumers import DURABLE, FILTER, ProjectCaches, event_batch_handler, event_handler
from services.matcher.servicer import MatcherServicer

SERVICE_NAME = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name


async def serve(runtime: Runtime) -> None:
    outbox = runtime.outbox(OUTBOX)

    def unit_of_work() -> MatcherSqlUnitOfWork:
        return MatcherSqlUnitOfWork(runtime.sessions, outbox)

    caches = ProjectCaches.over(unit_of_work)

    async def purge(team_id: str, before: datetime, limit: int) -> dict[str, int]:
        return await purge_project(team_id, before, limit, unit_of_work())

    retention = Retention.for_service("matcher", runtime, purge)

    await runtime.serve(
        [
            ServiceRegistration(
                SERVICE_NAME,
                MatcherServicer(runtime.authenticator(), unit_of_work, unit_of_work, on_change=caches.forget),
                matcher_pb2_grpc.add_MatcherServiceServicer_to_server,
            )
        ],
        consumers=[
            runtime.consumer(
                "EVENTS",
                DURABLE,
                FILTER,
                event_handler(unit_of_work, caches),
                batch_handler=event_batch_handler(unit_of_work, caches),
            )
        ],
        background=[outbox.run_relay, retention.run],
    )


def main() -> None:
    run_service("matcher", serve)
