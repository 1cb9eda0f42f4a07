"""TrackerService over gRPC: what became of a trigger."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.auth import Authenticator
from kernel.clients import CALL_TIMEOUT_SECONDS, forwarded_metadata
from kernel.clock import isoformat_ms
from kernel.errors import from_rpc_error
from services.tracker import handlers
from services.tracker.domain import FLOW_TYPE, Summary, TriggerView

Context = grpc.aio.ServicerContext[Any, Any]


def trigger_to_proto(view: TriggerView) -> tracker_pb2.Trigger:
    message = tracker_pb2.Trigger(
        id=str(view.id),
        flow_type=FLOW_TYPE,
        trigger_type=FLOW_TYPE,
        status=view.status,
        created_at=isoformat_ms(view.created_at),
        summary=tracker_pb2.TriggerSummary(
            total_contacts=view.summary.total_contacts,
            sent=view.summary.sent,
            failed=view.summary.failed,
            filtered=view.summary.filtered,
        ),
        details_endpoint=view.details_endpoint,
    )
    if view.started_at:
        message.started_at = isoformat_ms(view.started_at)
    if view.completed_at:
        message.completed_at = isoformat_ms(view.completed_at)
    return message


class IngestTriggerRecords:
    """Asks ingest about a trigger, with the caller's own credentials."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceAsyncStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    async def find(self, trigger_id: str) -> TriggerView | None:
        try:
            record = await self._stub.GetTriggerRecord(
                ingest_pb2.GetTriggerRecordRequest(trigger_id=trigger_id),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise from_rpc_error(error) from error
        return TriggerView(
            id=uuid.UUID(record.trigger_id),
            status=record.status,
            created_at=datetime.fromisoformat(record.created_at),
            started_at=None,
            completed_at=None,
            summary=Summary(total_contacts=record.contacts),
        )


class TrackerServicer(tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        unit_of_work: Callable[[], handlers.TrackerUnitOfWork],
        ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    ):
        self._auth = authenticator
        self._uow = unit_of_work
        self._ingest = ingest

    async def GetTrigger(
        self, request: tracker_pb2.GetTriggerRequest, context: Context
    ) -> tracker_pb2.GetTriggerResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        records = IngestTriggerRecords(self._ingest, forwarded_metadata(metadata))
        view = await handlers.get_trigger(team.id, request.trigger_id, self._uow(), records)
        return tracker_pb2.GetTriggerResponse(trigger=trigger_to_proto(view))
