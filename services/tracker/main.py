"""The tracker process: the TRACKING consumer and TrackerService."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from herald.executor.v1 import executor_pb2_grpc
from herald.ingest.v1 import ingest_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.bus import STREAMS
from kernel.clients import channel
from kernel.clock import isoformat_ms, utcnow
from kernel.errors import Unavailable
from kernel.grpc_server import ServiceRegistration
from kernel.lag import queue_lag
from kernel.loops import every
from kernel.retention import Retention, purge_project
from kernel.service import Runtime, run_service
from services.tracker import catalog_consumers, catalog_handlers, handlers
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.catalog_adapters import CatalogSqlUnitOfWork
from services.tracker.consumers import DURABLE, FILTER, tracking_batch_handler, tracking_handler
from services.tracker.servicer import TrackerServicer

# Tracking is off the delivery path: a fetch takes up to this many messages (each the facts one
# transaction reported of a project), and one that came back short waits this long for more, so
# that facts share transactions under moderate load too.
TRACKING_BATCH = 128
TRACKING_LINGER_SECONDS = 0.15
# The catalog reads every event off the delivery path too, a fetch per transaction. A batch
# costs the same few statements and at most 5 examples per name however many events it holds:
# the catalog lingers longer for a fuller fetch (an event still shows up within a second).
CATALOG_BATCH = 512
CATALOG_LINGER_SECONDS = 0.5

# How often the bus's queue lag is sampled for the stats timeline.
QUEUE_LAG_SAMPLE_SECONDS = 15.0

EVENTS_MAX_AGE_SECONDS = next(spec.max_age_seconds for spec in STREAMS if spec.name == "EVENTS")
# The catalog remembers the events it counted a day longer than the EVENTS stream keeps them.
COUNTED_EVENTS_KEPT = timedelta(seconds=EVENTS_MAX_AGE_SECONDS) + timedelta(days=1)

log = structlog.get_logger(__name__)
SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name


async def serve(runtime: Runtime) -> None:
    def unit_of_work() -> TrackerSqlUnitOfWork:
        return TrackerSqlUnitOfWork(runtime.sessions)

    def catalog_unit_of_work() -> CatalogSqlUnitOfWork:
        return CatalogSqlUnitOfWork(runtime.sessions)

    async with (
        channel(runtime.settings.target("ingest")) as ingest_channel,
        channel(runtime.settings.target("executor")) as executor_channel,
    ):
        servicer = TrackerServicer(
            runtime.authenticator(),
            unit_of_work,
            ingest_pb2_grpc.IngestServiceStub(ingest_channel),
            executor_pb2_grpc.ExecutorServiceStub(executor_channel),
            catalog_unit_of_work,
            ingest_pb2_grpc.ContactServiceStub(ingest_channel),
            lambda: queue_lag(runtime.js),
            unit_of_work,
        )

        async def purge(team_id: str, before: datetime, limit: int) -> dict[str, int]:
            purged = await purge_project(team_id, before, limit, unit_of_work())
            purged["tracker.catalog_examples"] = await catalog_handlers.purge_examples(
                team_id, before, limit, catalog_unit_of_work()
            )
            return purged

        retention = Retention.for_service("tracker", runtime, purge)

        async def sample_queue_lag() -> int:
            # The stats timeline's queue lag over time (platform-wide, as GET /api/v1/stats's).
            try:
                await handlers.sample_queue_lag(lambda: queue_lag(runtime.js), unit_of_work())
            except Unavailable as error:
                log.warning("stats.queue_lag_not_sampled", error=error.message)
            return 0

        async def forget_counted_events() -> int:
            # The catalog's claims of events the bus can no longer redeliver (past the EVENTS
            # stream's max age), whatever the project.
            before = utcnow() - COUNTED_EVENTS_KEPT
            forgotten = await catalog_handlers.forget_counted_events(
                before, runtime.settings.retention_batch_size, catalog_unit_of_work()
            )
            if forgotten:
                log.info("catalog.forgot_counted_events", events=forgotten, before=isoformat_ms(before))
            return forgotten

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
                ),
                runtime.consumer(
                    "EVENTS",
                    catalog_consumers.DURABLE,
                    catalog_consumers.FILTER,
                    catalog_consumers.catalog_handler(catalog_unit_of_work),
                    batch_handler=catalog_consumers.catalog_batch_handler(catalog_unit_of_work),
                    batch_size=CATALOG_BATCH,
                    linger_seconds=CATALOG_LINGER_SECONDS,
                ),
            ],
            background=[
                retention.run,
                lambda stop: every(
                    runtime.settings.retention_interval_seconds, "catalog.forget", forget_counted_events, stop
                ),
                lambda stop: every(
                    QUEUE_LAG_SAMPLE_SECONDS, "stats.sample_queue_lag", sample_queue_lag, stop
                ),
            ],
        )


def main() -> None:
    run_service("tracker", serve)
