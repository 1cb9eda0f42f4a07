"""IngestService over gRPC: translate requests into commands and results into responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.auth import Authenticator
from kernel.clock import isoformat_ms
from kernel.structs import from_struct
from services.ingest import handlers
from services.ingest.domain import EventSource, SendEvent, UserInfo

Context = grpc.aio.ServicerContext[Any, Any]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, authenticator: Authenticator, unit_of_work: Callable[[], handlers.IngestUnitOfWork]):
        self._auth = authenticator
        self._uow = unit_of_work

    async def SendEvent(
        self, request: ingest_pb2.SendEventRequest, context: Context
    ) -> ingest_pb2.SendEventResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        command = SendEvent(
            team_id=team.id,
            event_name=request.event_name,
            user_info=UserInfo(
                external_id=request.user_info.contact_external_id,
                email=request.user_info.email,
                phone=request.user_info.phone,
                name=request.user_info.name,
                custom_fields=from_struct(request.user_info.custom_fields),
            ),
            source=EventSource(
                type=request.source.type, ip=request.source.ip, user_agent=request.source.user_agent
            ),
            event_data=from_struct(request.event_data),
            variables=from_struct(request.variables),
        )
        queued = await handlers.send_event(command, self._uow())
        return ingest_pb2.SendEventResponse(
            success=True,
            trigger_id=str(queued.trigger_id),
            job_id=queued.job_id,
            message=queued.message,
        )

    async def GetTriggerRecord(
        self, request: ingest_pb2.GetTriggerRecordRequest, context: Context
    ) -> ingest_pb2.GetTriggerRecordResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        record = await handlers.get_trigger_record(team.id, request.trigger_id, self._uow())
        response = ingest_pb2.GetTriggerRecordResponse(
            trigger_id=str(record.id),
            event_id=str(record.event_id),
            event_name=record.event_name,
            created_at=isoformat_ms(record.created_at),
            status=record.status,
        )
        if record.scheduled_for is not None:
            response.scheduled_for = isoformat_ms(record.scheduled_for)
        return response
