"""Ingest's gRPC services: translate requests into commands and results into responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from herald.bus.v1 import event_pb2
from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from kernel.auth import Authenticator, metadata_dict
from kernel.clients import CALL_TIMEOUT_SECONDS, forwarded_metadata
from kernel.clock import isoformat_ms
from kernel.cursors import encode_cursor
from kernel.errors import (
    HeraldError,
    InvalidArgument,
    Unavailable,
    from_rpc_error,
    http_phrase,
    http_status_of,
)
from kernel.policy import PolicyChange, ProjectPolicy
from kernel.structs import from_struct, to_struct
from services.ingest import handlers
from services.ingest.domain import (
    MAX_BATCH,
    Contact,
    EventQueued,
    EventSource,
    EventType,
    Recipient,
    SendEvent,
    TriggerWorkflow,
    UserInfo,
)

Context = grpc.aio.ServicerContext[Any, Any]
log = structlog.get_logger(__name__)
UnitOfWorkFactory = Callable[[], handlers.IngestUnitOfWork]


def _header_key(context: Context, body_key: str) -> str:
    """The idempotency key: the body's field, or the Idempotency-Key header; both must agree."""
    return idempotency_key(metadata_dict(context.invocation_metadata()).get("idempotency-key", ""), body_key)


def idempotency_key(header_key: str, body_key: str) -> str:
    header_key, body_key = header_key.strip(), body_key.strip()
    if header_key and body_key and header_key != body_key:
        raise InvalidArgument(
            "The Idempotency-Key header and the body's idempotency_key differ: send one of them",
            reason="IDEMPOTENCY_KEY_MISMATCH",
        )
    return body_key or header_key


def send_event_command(team_id: str, request: ingest_pb2.SendEventRequest, idempotency_key: str) -> SendEvent:
    return SendEvent(
        team_id=team_id,
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
        trigger_at=request.trigger_at,
        idempotency_key=idempotency_key,
        occurred_at=request.occurred_at,
        contact_id=request.contact_id,
    )


def bind_accepted(accepted: list[EventQueued]) -> None:
    """The ids of what a request accepted, for its `rpc.done` line (kernel.grpc_server), so that
    `herald trace` finds where a trigger began: one event's ids, or a batch's as lists."""
    if len(accepted) == 1:
        structlog.contextvars.bind_contextvars(
            trigger_id=str(accepted[0].trigger_id), event_id=str(accepted[0].event_id)
        )
    elif accepted:
        structlog.contextvars.bind_contextvars(
            trigger_ids=[str(queued.trigger_id) for queued in accepted],
            event_ids=[str(queued.event_id) for queued in accepted],
        )


def _queued_headers(queued: EventQueued) -> dict[str, str]:
    headers = dict(queued.rate.headers()) if queued.rate else {}
    if queued.replayed:
        headers["idempotent-replayed"] = "true"
    return headers


def _answer_headers(context: Context, queued: EventQueued) -> None:
    headers = _queued_headers(queued)
    if headers:
        context.set_trailing_metadata(tuple(headers.items()))


def send_event_response(queued: EventQueued) -> ingest_pb2.SendEventResponse:
    response = ingest_pb2.SendEventResponse(
        success=True, trigger_id=str(queued.trigger_id), job_id=queued.job_id, message=queued.message
    )
    if queued.scheduled_for is not None:
        response.scheduled_for = isoformat_ms(queued.scheduled_for)
    return response


def batch_error(error: HeraldError) -> ingest_pb2.BatchError:
    """An error as one event of several is answered: the status it would have had on its own."""
    status = http_status_of(error)
    return ingest_pb2.BatchError(
        status_code=status, message=error.message, error=http_phrase(status), reason=error.reason
    )


class MatcherCalls:
    """Asks the matcher about workflows, segments and dry runs, with the caller's own credentials."""

    def __init__(self, stub: matcher_pb2_grpc.MatcherServiceAsyncStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    async def dry_run(self, event: event_pb2.Event) -> list[matcher_pb2.WorkflowMatch]:
        answer = await self._call(self._stub.DryRunMatch, matcher_pb2.DryRunMatchRequest(event=event))
        return list(answer.workflows)

    async def workflow_active(self, key: str) -> bool:
        answer = await self._call(self._stub.GetWorkflow, matcher_pb2.GetWorkflowRequest(key=key))
        return bool(answer.workflow.active)

    async def segment_condition(self, key: str) -> str:
        answer = await self._call(self._stub.GetSegment, matcher_pb2.GetSegmentRequest(key=key))
        return str(answer.segment.condition)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        intake: handlers.Intake,
        matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None,
    ):
        self._auth = authenticator
        self._intake = intake
        self._matcher = matcher

    async def MatchEvent(
        self, request: ingest_pb2.MatchEventRequest, context: Context
    ) -> ingest_pb2.MatchEventResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        if self._matcher is None:
            raise Unavailable("Dry runs need the matcher, which this ingest was started without")
        command = send_event_command(team.id, request.event, "")
        preview = await handlers.preview_match(
            command,
            self._intake.policies,
            self._intake.unit_of_work(),
            MatcherCalls(self._matcher, forwarded_metadata(metadata)),
        )
        contact = preview.contact
        return ingest_pb2.MatchEventResponse(
            event_name=preview.event_name,
            contact=ingest_pb2.MatchedContact(
                id=str(contact.id) if contact and preview.known_contact else "",
                external_id=(contact.external_id or "") if contact else "",
                email=(contact.email or "") if contact else "",
                known=preview.known_contact,
            ),
            workflows=preview.workflows,
        )

    async def SendEvent(
        self, request: ingest_pb2.SendEventRequest, context: Context
    ) -> ingest_pb2.SendEventResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        command = send_event_command(team.id, request, _header_key(context, request.idempotency_key))
        queued = await handlers.send_event(command, self._intake)
        bind_accepted([queued])
        _answer_headers(context, queued)
        return send_event_response(queued)

    async def SendEvents(
        self, request: ingest_pb2.SendEventsRequest, context: Context
    ) -> ingest_pb2.SendEventsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        if not 0 < len(request.items) <= MAX_BATCH:
            raise InvalidArgument(
                f"SendEvents takes 1 to {MAX_BATCH} events; this call has {len(request.items)}",
                reason="EMPTY_BATCH" if not request.items else "BATCH_TOO_LARGE",
            )

        accepted: list[EventQueued] = []

        async def one(item: ingest_pb2.SendEventsItem) -> ingest_pb2.SendEventsResult:
            try:
                key = idempotency_key(item.idempotency_key_header, item.event.idempotency_key)
                queued = await handlers.send_event(send_event_command(team.id, item.event, key), self._intake)
            except HeraldError as error:
                return ingest_pb2.SendEventsResult(error=batch_error(error), headers=error.headers)
            except Exception:
                log.exception("ingest.send_events_failed")
                return ingest_pb2.SendEventsResult(
                    error=ingest_pb2.BatchError(
                        status_code=500, message="Internal server error", error=http_phrase(500), reason=""
                    )
                )
            accepted.append(queued)
            return ingest_pb2.SendEventsResult(
                response=send_event_response(queued), headers=_queued_headers(queued)
            )

        results = await asyncio.gather(*(one(item) for item in request.items))
        bind_accepted(accepted)
        return ingest_pb2.SendEventsResponse(results=results)

    async def PublishEvent(
        self, request: ingest_pb2.PublishEventRequest, context: Context
    ) -> ingest_pb2.PublishEventResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        command = SendEvent(
            team_id=team.id,
            event_name=request.event,
            user_info=UserInfo(external_id=request.external_id, email=request.email),
            dialect="sendrealm",
            event_data=from_struct(request.payload),
            occurred_at=request.occurred_at,
            idempotency_key=_header_key(context, request.idempotency_key),
            contact_id=request.contact_id,
        )
        if not command.event_name:
            raise InvalidArgument("Event name is required: set 'event'", reason="EVENT_NAME_REQUIRED")
        queued = await handlers.send_event(command, self._intake)
        bind_accepted([queued])
        _answer_headers(context, queued)
        return ingest_pb2.PublishEventResponse(
            id=str(queued.event_id),
            event=queued.event_name,
            contact_id=str(queued.contact_id) if queued.contact_id else "",
            trigger_id=str(queued.trigger_id),
            status="queued",
            occurred_at=isoformat_ms(queued.occurred_at) if queued.occurred_at else "",
            accepted_at=isoformat_ms(queued.accepted_at) if queued.accepted_at else "",
            idempotent_replayed=queued.replayed,
        )

    async def SendEventBatch(
        self, request: ingest_pb2.SendEventBatchRequest, context: Context
    ) -> ingest_pb2.SendEventBatchResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        if metadata_dict(context.invocation_metadata()).get("idempotency-key"):
            raise InvalidArgument(
                "The Idempotency-Key header applies to one event; in a batch, set idempotency_key on "
                "each event instead",
                reason="BATCH_IDEMPOTENCY_HEADER",
            )
        commands = [send_event_command(team.id, event, event.idempotency_key) for event in request.events]
        outcomes = await handlers.send_batch(commands, self._intake)
        bind_accepted([outcome for outcome in outcomes if not isinstance(outcome, HeraldError)])
        response = ingest_pb2.SendEventBatchResponse()
        for index, outcome in enumerate(outcomes):
            result = response.results.add(index=index)
            if isinstance(outcome, HeraldError):
                result.error.CopyFrom(batch_error(outcome))
                response.rejected += 1
                continue
            result.success = True
            result.trigger_id = str(outcome.trigger_id)
            result.job_id = outcome.job_id
            result.message = outcome.message
            result.idempotent_replayed = outcome.replayed
            if outcome.scheduled_for is not None:
                result.scheduled_for = isoformat_ms(outcome.scheduled_for)
            response.accepted += 1
        return response

    async def TriggerWorkflow(
        self, request: ingest_pb2.TriggerWorkflowRequest, context: Context
    ) -> ingest_pb2.TriggerWorkflowResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        if self._matcher is None:
            raise Unavailable("Direct triggers need the matcher, which this ingest was started without")
        command = TriggerWorkflow(
            team_id=team.id,
            workflow_key=request.workflow_key.strip(),
            contacts=tuple(
                Recipient(contact_id=r.contact_id, external_id=r.external_id, email=r.email)
                for r in request.contacts
            ),
            segment=request.segment.strip(),
            variables=from_struct(request.variables),
            data=from_struct(request.data),
            idempotency_key=_header_key(context, request.idempotency_key),
        )
        triggered = await handlers.trigger_workflow(
            command, self._intake, MatcherCalls(self._matcher, forwarded_metadata(metadata))
        )
        structlog.contextvars.bind_contextvars(trigger_id=str(triggered.trigger_id))
        if triggered.replayed:
            context.set_trailing_metadata((("idempotent-replayed", "true"),))
        return ingest_pb2.TriggerWorkflowResponse(
            success=True,
            trigger_id=str(triggered.trigger_id),
            message=triggered.message,
            workflow_key=triggered.workflow_key,
            summary=ingest_pb2.TriggerWorkflowSummary(total_contacts=triggered.total_contacts),
        )

    async def CancelTrigger(
        self, request: ingest_pb2.CancelTriggerRequest, context: Context
    ) -> ingest_pb2.CancelTriggerResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        structlog.contextvars.bind_contextvars(trigger_id=request.trigger_id)
        record = await handlers.cancel_trigger(team.id, request.trigger_id, self._intake.unit_of_work())
        return ingest_pb2.CancelTriggerResponse(
            id=str(record.id),
            status=record.status,
            scheduled_for=isoformat_ms(record.scheduled_for) if record.scheduled_for else "",
            cancelled_at=isoformat_ms(record.finished_at) if record.finished_at else "",
        )

    async def GetTriggerRecord(
        self, request: ingest_pb2.GetTriggerRecordRequest, context: Context
    ) -> ingest_pb2.GetTriggerRecordResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        record = await handlers.get_trigger_record(team.id, request.trigger_id, self._intake.unit_of_work())
        response = ingest_pb2.GetTriggerRecordResponse(
            trigger_id=str(record.id),
            event_id=str(record.event_id),
            event_name=record.event_name,
            created_at=isoformat_ms(record.created_at),
            status=record.status,
            contacts=record.contacts or 0,
        )
        if record.scheduled_for is not None:
            response.scheduled_for = isoformat_ms(record.scheduled_for)
        if record.finished_at is not None:
            response.cancelled_at = isoformat_ms(record.finished_at)
        return response


def contact_message(contact: Contact) -> ingest_pb2.Contact:
    return ingest_pb2.Contact(
        id=str(contact.id),
        external_id=contact.external_id or "",
        email=contact.email or "",
        phone=contact.phone or "",
        name=contact.name or "",
        custom_fields=to_struct(contact.custom_fields),
        tags=list(contact.tags),
        topics=list(contact.topics),
        created_at=isoformat_ms(contact.created_at) if contact.created_at else "",
        updated_at=isoformat_ms(contact.updated_at) if contact.updated_at else "",
    )


# Erasing one contact from a service may delete many rows: it gets longer than a usual call.
ERASE_TIMEOUT_SECONDS = 20.0
# After an erasure, the other services erase the contact again this long after: what messages
# still in flight at the DELETE wrote meanwhile goes too (best effort, by the answering process).
RESWEEP_SECONDS = (5.0, 60.0)


@dataclass(frozen=True)
class EraseRpc:
    """The EraseContact RPC of another service: its name, the stub's method and its request type."""

    service: str
    method: Callable[..., Awaitable[Any]]
    request: Callable[..., Any]


def erasing_elsewhere(
    rpcs: Sequence[EraseRpc], metadata: tuple[tuple[str, str], ...]
) -> handlers.EraseElsewhere:
    """Erase a contact in each of the other services at once, with the caller's credentials;
    Unavailable (503: try again) when any of them fails."""

    async def erase_in(rpc: EraseRpc, contact: Contact) -> dict[str, int]:
        request = rpc.request(
            contact_id=str(contact.id),
            external_id=contact.external_id or "",
            email=contact.email or "",
            phone=contact.phone or "",
        )
        try:
            response = await rpc.method(request, metadata=metadata, timeout=ERASE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.warning("contact.erase_failed", service=rpc.service, error=error.details())
            raise Unavailable(
                f"The contact could not be erased from the {rpc.service} service just now; the "
                "contact is kept, so that the same DELETE can erase it: try again",
                reason="ERASURE_INCOMPLETE",
                metadata={"service": rpc.service},
            ) from error
        return dict(response.erased)

    async def erase(contact: Contact) -> dict[str, int]:
        erased: dict[str, int] = {}
        for counts in await asyncio.gather(*(erase_in(rpc, contact) for rpc in rpcs)):
            erased.update(counts)
        return erased

    return erase


class ContactServicer(ingest_pb2_grpc.ContactServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        intake: handlers.Intake,
        erase_rpcs: Sequence[EraseRpc] = (),
        resweep_seconds: Sequence[float] = RESWEEP_SECONDS,
    ):
        self._auth = authenticator
        self._intake = intake
        # The other services' EraseContact, called before ingest erases its own rows.
        self._erase_rpcs = tuple(erase_rpcs)
        self._resweep_seconds = tuple(resweep_seconds)
        self._resweeps: set[asyncio.Task[None]] = set()

    async def _team(self, context: Context) -> str:
        return (await self._auth.authenticate(context.invocation_metadata())).id

    async def PutContact(
        self, request: ingest_pb2.PutContactRequest, context: Context
    ) -> ingest_pb2.PutContactResponse:
        team_id = await self._team(context)
        policy = await self._intake.policies.get(team_id)
        profile = handlers.ContactProfile(
            team_id=team_id,
            external_id=request.external_id,
            email=request.email,
            phone=request.phone,
            name=request.name,
            custom_fields=from_struct(request.custom_fields),
            tags=tuple(request.tags),
        )
        contact = await handlers.put_contact(
            profile, self._intake.unit_of_work(), policy.event_payload_limit_bytes
        )
        return ingest_pb2.PutContactResponse(contact=contact_message(contact))

    async def ListContacts(
        self, request: ingest_pb2.ListContactsRequest, context: Context
    ) -> ingest_pb2.ListContactsResponse:
        page = await handlers.list_contacts(
            await self._team(context), request.q, request.limit, request.cursor, self._intake.unit_of_work()
        )
        after = page.next_after
        return ingest_pb2.ListContactsResponse(
            contacts=[contact_message(contact) for contact in page.contacts],
            next_cursor=encode_cursor(after[0], str(after[1])) if after else "",
        )

    async def GetContact(
        self, request: ingest_pb2.GetContactRequest, context: Context
    ) -> ingest_pb2.GetContactResponse:
        contact = await handlers.get_contact(
            await self._team(context), request.external_id, self._intake.unit_of_work()
        )
        return ingest_pb2.GetContactResponse(contact=contact_message(contact))

    async def DeleteContact(
        self, request: ingest_pb2.DeleteContactRequest, context: Context
    ) -> ingest_pb2.DeleteContactResponse:
        team_id = await self._team(context)
        elsewhere = erasing_elsewhere(self._erase_rpcs, forwarded_metadata(context.invocation_metadata()))
        asked: list[Contact] = []

        async def erase_elsewhere(contact: Contact) -> Mapping[str, int]:
            asked.append(contact)
            return await elsewhere(contact)

        erased = await handlers.erase_contact(
            team_id, request.external_id, self._intake.unit_of_work(), erase_elsewhere
        )
        if self._erase_rpcs and asked and self._resweep_seconds:
            task = asyncio.create_task(self._resweep(elsewhere, asked[-1]), name="contact.resweep")
            self._resweeps.add(task)
            task.add_done_callback(self._resweeps.discard)
        return ingest_pb2.DeleteContactResponse(erased=erased)

    async def _resweep(self, elsewhere: handlers.EraseElsewhere, contact: Contact) -> None:
        """Erase the contact from the other services again, RESWEEP_SECONDS after the erasure."""
        waited = 0.0
        for at in self._resweep_seconds:
            await asyncio.sleep(at - waited)
            waited = at
            try:
                erased = await elsewhere(contact)
            except HeraldError as error:
                log.warning("contact.resweep_failed", contact_id=str(contact.id), error=error.message)
                continue
            log.info("contact.erased_again", contact_id=str(contact.id), erased=erased)

    async def UpdateContactTags(
        self, request: ingest_pb2.UpdateContactTagsRequest, context: Context
    ) -> ingest_pb2.UpdateContactTagsResponse:
        contact = await handlers.change_tags(
            await self._team(context),
            request.external_id,
            list(request.add),
            list(request.remove),
            self._intake.unit_of_work(),
        )
        return ingest_pb2.UpdateContactTagsResponse(contact=contact_message(contact))

    async def SubscribeTopic(
        self, request: ingest_pb2.SubscribeTopicRequest, context: Context
    ) -> ingest_pb2.SubscribeTopicResponse:
        contact = await handlers.subscribe_topic(
            await self._team(context), request.external_id, request.topic, self._intake.unit_of_work()
        )
        return ingest_pb2.SubscribeTopicResponse(contact=contact_message(contact))

    async def UnsubscribeTopic(
        self, request: ingest_pb2.UnsubscribeTopicRequest, context: Context
    ) -> ingest_pb2.UnsubscribeTopicResponse:
        contact = await handlers.unsubscribe_topic(
            await self._team(context), request.external_id, request.topic, self._intake.unit_of_work()
        )
        return ingest_pb2.UnsubscribeTopicResponse(contact=contact_message(contact))


def policy_message(policy: ProjectPolicy) -> ingest_pb2.ProjectPolicy:
    return ingest_pb2.ProjectPolicy(
        event_payload_limit_bytes=policy.event_payload_limit_bytes,
        unknown_events=policy.unknown_events,
        retention_days=policy.retention_days,
        idempotency_window=policy.idempotency_window,
        plan=policy.plan,
        rate_limit_per_hour=policy.rate_limit_per_hour or 0,
        effective_rate_limit_per_hour=policy.effective_rate_limit or 0,
    )


def event_type_message(event_type: EventType) -> ingest_pb2.EventType:
    return ingest_pb2.EventType(
        name=event_type.name,
        description=event_type.description,
        origin=event_type.origin,
        created_at=isoformat_ms(event_type.created_at),
    )


class ProjectServicer(ingest_pb2_grpc.ProjectServiceServicer):
    def __init__(self, authenticator: Authenticator, unit_of_work: UnitOfWorkFactory):
        self._auth = authenticator
        self._uow = unit_of_work

    async def _team(self, context: Context) -> str:
        return (await self._auth.authenticate(context.invocation_metadata())).id

    async def GetProjectPolicy(
        self, request: ingest_pb2.GetProjectPolicyRequest, context: Context
    ) -> ingest_pb2.GetProjectPolicyResponse:
        policy = await handlers.get_policy(await self._team(context), self._uow())
        return ingest_pb2.GetProjectPolicyResponse(policy=policy_message(policy))

    async def UpdateProjectPolicy(
        self, request: ingest_pb2.UpdateProjectPolicyRequest, context: Context
    ) -> ingest_pb2.UpdateProjectPolicyResponse:
        def given(name: Any) -> Any:
            return getattr(request, name) if request.HasField(name) else None

        change = PolicyChange(
            event_payload_limit_bytes=given("event_payload_limit_bytes"),
            unknown_events=given("unknown_events"),
            retention_days=given("retention_days"),
            idempotency_window=given("idempotency_window"),
            plan=given("plan"),
            rate_limit_per_hour=given("rate_limit_per_hour"),
        )
        policy = await handlers.update_policy(await self._team(context), change, self._uow())
        return ingest_pb2.UpdateProjectPolicyResponse(policy=policy_message(policy))

    async def RegisterEventType(
        self, request: ingest_pb2.RegisterEventTypeRequest, context: Context
    ) -> ingest_pb2.RegisterEventTypeResponse:
        registered = await handlers.register_event_type(
            await self._team(context), request.name, request.description, self._uow()
        )
        return ingest_pb2.RegisterEventTypeResponse(event_type=event_type_message(registered))

    async def ListEventTypes(
        self, request: ingest_pb2.ListEventTypesRequest, context: Context
    ) -> ingest_pb2.ListEventTypesResponse:
        found = await handlers.list_event_types(await self._team(context), self._uow())
        return ingest_pb2.ListEventTypesResponse(event_types=[event_type_message(t) for t in found])

    async def DeleteEventType(
        self, request: ingest_pb2.DeleteEventTypeRequest, context: Context
    ) -> ingest_pb2.DeleteEventTypeResponse:
        await handlers.delete_event_type(await self._team(context), request.name, self._uow())
        return ingest_pb2.DeleteEventTypeResponse()
