"""ExecutorService over gRPC: runs and their steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from herald.executor.v1 import executor_pb2, executor_pb2_grpc
from kernel.auth import Authenticator
from kernel.clock import isoformat_ms
from services.executor import handlers
from services.executor.domain import Run

Context = grpc.aio.ServicerContext[Any, Any]


def run_to_proto(run: Run) -> executor_pb2.Run:
    message = executor_pb2.Run(
        id=str(run.id),
        trigger_id=str(run.trigger_id),
        event_id=str(run.event_id),
        workflow_key=run.workflow_key,
        workflow_version=run.workflow_version,
        contact_id=run.contact_id,
        status=run.status,
        created_at=isoformat_ms(run.created_at) if run.created_at else "",
    )
    if run.finished_at:
        message.finished_at = isoformat_ms(run.finished_at)
    for step in run.steps:
        proto_step = message.steps.add(
            step_id=step.spec.id,
            type=step.spec.type,
            status=step.status,
            attempts=step.attempts,
            detail=step.detail,
        )
        if step.finished_at:
            proto_step.finished_at = isoformat_ms(step.finished_at)
    return message


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, authenticator: Authenticator, unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]):
        self._auth = authenticator
        self._uow = unit_of_work

    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Context
    ) -> executor_pb2.GetRunResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        run = await handlers.get_run(team.id, request.run_id, self._uow())
        return executor_pb2.GetRunResponse(run=run_to_proto(run))
