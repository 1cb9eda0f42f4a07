"""The ingest process: wiring of its adapters, servicer and outbox relay."""

from __future__ import annotations

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.grpc_server import ServiceRegistration
from kernel.service import Runtime, run_service
from services.ingest.adapters import OUTBOX, IngestSqlUnitOfWork
from services.ingest.servicer import IngestServicer

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


async def serve(runtime: Runtime) -> None:
    outbox = runtime.outbox(OUTBOX)
    servicer = IngestServicer(runtime.authenticator(), lambda: IngestSqlUnitOfWork(runtime.sessions, outbox))
    await runtime.serve(
        [ServiceRegistration(SERVICE_NAME, servicer, ingest_pb2_grpc.add_IngestServiceServicer_to_server)],
        background=[outbox.run_relay],
    )


def main() -> None:
    run_service("ingest", serve)
