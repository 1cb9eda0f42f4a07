"""MatcherService over gRPC: translate requests into handler calls and results into responses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc

from herald.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from kernel.auth import Authenticator
from kernel.errors import InvalidArgument
from kernel.retention import ContactNames, LifecycleUnitOfWork, erase_contact
from services.matcher import handlers
from services.matcher.messages import (
    definition_from_proto,
    segment_from_proto,
    segment_to_proto,
    workflow_to_proto,
)

Context = grpc.aio.ServicerContext[Any, Any]


class MatcherServicer(matcher_pb2_grpc.MatcherServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        unit_of_work: Callable[[], handlers.MatcherUnitOfWork],
        lifecycle: Callable[[], LifecycleUnitOfWork],
        on_change: Callable[[str], None] = lambda team_id: None,
    ):
        self._auth = authenticator
        self._uow = unit_of_work
        self._lifecycle = lifecycle
        self._changed = on_change  # a project's workflows or segments changed

    async def CreateWorkflow(
        self, request: matcher_pb2.CreateWorkflowRequest, context: Context
    ) -> matcher_pb2.CreateWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow = await handlers.create_workflow(
            team.id, definition_from_proto(request.workflow), self._uow()
        )
        self._changed(team.id)
        return matcher_pb2.CreateWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def GetWorkflow(
        self, request: matcher_pb2.GetWorkflowRequest, context: Context
    ) -> matcher_pb2.GetWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow = await handlers.get_workflow(team.id, request.key, self._uow())
        return matcher_pb2.GetWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def ListWorkflows(
        self, request: matcher_pb2.ListWorkflowsRequest, context: Context
    ) -> matcher_pb2.ListWorkflowsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflows = await handlers.list_workflows(team.id, self._uow())
        return matcher_pb2.ListWorkflowsResponse(workflows=[workflow_to_proto(w) for w in workflows])

    async def UpdateWorkflow(
        self, request: matcher_pb2.UpdateWorkflowRequest, context: Context
    ) -> matcher_pb2.UpdateWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow, _stored = await handlers.update_workflow(
            team.id, request.key, definition_from_proto(request.workflow), self._uow()
        )
        self._changed(team.id)
        return matcher_pb2.UpdateWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def ActivateWorkflow(
        self, request: matcher_pb2.ActivateWorkflowRequest, context: Context
    ) -> matcher_pb2.ActivateWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow, stored = await handlers.set_workflow_active(team.id, request.key, True, self._uow())
        if stored:
            self._changed(team.id)
        return matcher_pb2.ActivateWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def PauseWorkflow(
        self, request: matcher_pb2.PauseWorkflowRequest, context: Context
    ) -> matcher_pb2.PauseWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow, stored = await handlers.set_workflow_active(team.id, request.key, False, self._uow())
        if stored:
            self._changed(team.id)
        return matcher_pb2.PauseWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def DeleteWorkflow(
        self, request: matcher_pb2.DeleteWorkflowRequest, context: Context
    ) -> matcher_pb2.DeleteWorkflowResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        workflow = await handlers.delete_workflow(team.id, request.key, self._uow())
        self._changed(team.id)
        return matcher_pb2.DeleteWorkflowResponse(key=workflow.key, version=workflow.version, deleted=True)

    async def ListWorkflowVersions(
        self, request: matcher_pb2.ListWorkflowVersionsRequest, context: Context
    ) -> matcher_pb2.ListWorkflowVersionsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        versions = await handlers.list_versions(team.id, request.key, self._uow())
        return matcher_pb2.ListWorkflowVersionsResponse(versions=[workflow_to_proto(w) for w in versions])

    async def DryRunMatch(
        self, request: matcher_pb2.DryRunMatchRequest, context: Context
    ) -> matcher_pb2.DryRunMatchResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        request.event.project_id = team.id  # only ever the caller's own workflows
        decisions = await handlers.dry_run(request.event, self._uow())
        return matcher_pb2.DryRunMatchResponse(
            workflows=[
                matcher_pb2.WorkflowMatch(
                    workflow_key=decision.workflow.key,
                    workflow_version=decision.workflow.version,
                    would_run=decision.matched,
                    reason=decision.reason,
                )
                for decision in decisions
            ]
        )

    async def CreateSegment(
        self, request: matcher_pb2.CreateSegmentRequest, context: Context
    ) -> matcher_pb2.CreateSegmentResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        segment = await handlers.put_segment(
            team.id, segment_from_proto(team.id, request.segment), self._uow(), create_only=True
        )
        self._changed(team.id)
        return matcher_pb2.CreateSegmentResponse(segment=segment_to_proto(segment))

    async def PutSegment(
        self, request: matcher_pb2.PutSegmentRequest, context: Context
    ) -> matcher_pb2.PutSegmentResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        given = segment_from_proto(team.id, request.segment)
        if given.key and given.key != request.key:
            raise InvalidArgument(
                f"The body's key {given.key!r} differs from the path's {request.key!r}",
                reason="SEGMENT_KEY_MISMATCH",
            )
        segment = await handlers.put_segment(
            team.id, replace(given, key=request.key), self._uow(), create_only=False
        )
        self._changed(team.id)
        return matcher_pb2.PutSegmentResponse(segment=segment_to_proto(segment))

    async def GetSegment(
        self, request: matcher_pb2.GetSegmentRequest, context: Context
    ) -> matcher_pb2.GetSegmentResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        segment = await handlers.get_segment(team.id, request.key, self._uow())
        return matcher_pb2.GetSegmentResponse(segment=segment_to_proto(segment))

    async def ListSegments(
        self, request: matcher_pb2.ListSegmentsRequest, context: Context
    ) -> matcher_pb2.ListSegmentsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        segments = await handlers.list_segments(team.id, self._uow())
        return matcher_pb2.ListSegmentsResponse(segments=[segment_to_proto(s) for s in segments])

    async def DeleteSegment(
        self, request: matcher_pb2.DeleteSegmentRequest, context: Context
    ) -> matcher_pb2.DeleteSegmentResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        await handlers.delete_segment(team.id, request.key, self._uow())
        self._changed(team.id)
        return matcher_pb2.DeleteSegmentResponse(key=request.key, deleted=True)

    async def EraseContact(
        self, request: matcher_pb2.EraseContactRequest, context: Context
    ) -> matcher_pb2.EraseContactResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        erased = await erase_contact(team.id, ContactNames.of(request), self._lifecycle())
        return matcher_pb2.EraseContactResponse(erased=erased)
