"""The tracker process: the TRACKING consumer and TrackerService."""

from __future__ import annotations

from datetime import datetime

from herald.executor.v1 import executor_pb2_grpc
from herald.ingest.v1 import ingest_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.clients import channel
from kernel.grpc_server import ServiceRegistration
from kernel.retention import Retention, purge_project
from kernel.service import Runtime, run_service
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.consumers import DURABLE, FILTER, tracking_batch_handler, tracking_handler
from services.tracker.servicer import TrackerServicer

# Tracking is off the delivery path: a fetch takes up to this many records, and one that came
# back short waits this long for more, so that facts share transactions under moderate load too.
TRACKING_BATCH = 128
TRACKING_LINGER_SECONDS = 0.05

SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name


async def serve(runtime: Runtime) -> None:
    def unit_of_work() -> TrackerSqlUnitOfWork:
        return TrackerSqlUnitOfWork(runtime.sessions)

    async with (
        channel(runtime.settings.target("ingest")) as ingest_channel,
        channel(runtime.settings.target("executor")) as executor_channel,
    ):
        servicer = TrackerServicer(
            runtime.authenticator(),
            unit_of_work,
            ingest_pb2_grpc.IngestServiceStub(ingest_channel),
            executor_pb2_grpc.ExecutorServiceStub(executor_channel),
            unit_of_work,
        )

        async def purge(team_id: str, before: datetime, limit: int) -> dict[str, int]:
            return await purge_project(team_id, before, limit, unit_of_work())

        retention = Retention.for_service("tracker", runtime, purge)
        await runtime.serve(
            [
                ServiceRegistration(
                    SERVICE_NAME, servicer, tracker_pb2_grpc.add_TrackerServiceServicer_to_server
                )
            ],
            consumers=[
                runtime.consumer(
                    "TRACKING",
                    DURABLE,
                    FILTER,
                    tracking_handler(unit_of_work),
                    batch_handler=tracking_batch_handler(unit_of_work),
                    batch_size=TRACKING_BATCH,
                    linger_seconds=TRACKING_LINGER_SECONDS,
                )
            ],
            background=[retention.run],
        )


def main() -> None:
    run_service("tracker", serve)
