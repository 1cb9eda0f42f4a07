"""TrackerService over gRPC: what became of a trigger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import grpc

from herald.executor.v1 import executor_pb2, executor_pb2_grpc
from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.auth import Authenticator, metadata_dict
from kernel.clients import CALL_TIMEOUT_SECONDS, forwarded_metadata, found_or_none
from kernel.clock import isoformat_ms
from kernel.errors import from_rpc_error
from kernel.grpc_server import RESPONSE_HEADER_NAMES
from kernel.retention import ContactNames, LifecycleUnitOfWork, erase_contact
from services.tracker import catalog_handlers, handlers
from services.tracker.catalog_handlers import CatalogUnitOfWork
from services.tracker.catalog_servicer import CatalogRpcs, event_latency_to_proto
from services.tracker.domain import (
    FLOW_TYPE,
    TRIGGER_STATUSES,
    Accepted,
    Outcome,
    Page,
    Stats,
    StatsBucket,
    StatsTimeline,
    StepState,
    Summary,
    TimelineEntry,
    TriggerDetail,
    TriggerListing,
    TriggerListRequest,
    TriggerView,
    encode_cursor,
    isoformat_duration,
)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_INT32 = 2**31 - 1


def _trigger_fields(view: TriggerView) -> dict[str, Any]:
    """The Sendmator trigger shape's fields of `view` (Trigger, and TriggerListItem's first ones)."""
    return {
        "id": str(view.id),
        "flow_type": FLOW_TYPE,
        "trigger_type": FLOW_TYPE,
        "status": view.status,
        "created_at": isoformat_ms(view.created_at),
        "started_at": isoformat_ms(view.started_at) if view.started_at else None,
        "completed_at": isoformat_ms(view.completed_at) if view.completed_at else None,
        "summary": tracker_pb2.TriggerSummary(
            total_contacts=view.summary.total_contacts,
            sent=view.summary.sent,
            failed=view.summary.failed,
            filtered=view.summary.filtered,
        ),
        "details_endpoint": view.details_endpoint,
    }


def trigger_to_proto(view: TriggerView) -> tracker_pb2.Trigger:
    return tracker_pb2.Trigger(**_trigger_fields(view))


def listing_to_proto(listing: TriggerListing) -> tracker_pb2.TriggerListItem:
    return tracker_pb2.TriggerListItem(
        **_trigger_fields(listing.view), event_name=listing.view.event_name, contact_id=listing.contact_id
    )


def entry_to_proto(entry: TimelineEntry) -> tracker_pb2.TimelineEntry:
    return tracker_pb2.TimelineEntry(
        kind=entry.kind,
        at=isoformat_ms(entry.at),
        trigger_id=str(entry.trigger_id),
        event_name=entry.event_name,
        run_id=str(entry.run_id) if entry.run_id else "",
        workflow_key=entry.workflow_key,
        step_id=entry.step_id,
        channel=entry.channel,
        outcome=entry.outcome,
        detail=entry.detail,
    )


def _status_counts(counts: Mapping[str, int]) -> tracker_pb2.TriggerStatusCounts:
    return tracker_pb2.TriggerStatusCounts(
        **{status: min(counts.get(status, 0), MAX_INT32) for status in TRIGGER_STATUSES}
    )


def _delivery_counts(counts: Mapping[tuple[str, str], int]) -> list[tracker_pb2.DeliveryCount]:
    return [
        tracker_pb2.DeliveryCount(channel=channel, outcome=outcome, count=min(count, MAX_INT32))
        for (channel, outcome), count in sorted(counts.items())
    ]


def stats_bucket_to_proto(bucket: StatsBucket) -> tracker_pb2.StatsBucket:
    message = tracker_pb2.StatsBucket(
        at=isoformat_ms(bucket.at),
        events=min(bucket.events, MAX_INT32),
        triggers=_status_counts(bucket.triggers),
        deliveries=_delivery_counts(bucket.deliveries),
        dead_letters=min(bucket.dead_letters, MAX_INT32),
    )
    if bucket.p50_ms is not None:
        message.p50_ms = bucket.p50_ms
    if bucket.p99_ms is not None:
        message.p99_ms = bucket.p99_ms
    if bucket.queue_pending is not None:
        message.queue_pending = min(bucket.queue_pending, MAX_INT32)
    if bucket.queue_oldest_age_seconds is not None:
        message.queue_oldest_age_seconds = round(bucket.queue_oldest_age_seconds, 3)
    return message


def stats_timeline_to_proto(timeline: StatsTimeline) -> tracker_pb2.GetStatsTimelineResponse:
    return tracker_pb2.GetStatsTimelineResponse(
        window=timeline.window,
        step=isoformat_duration(timeline.step),
        since=isoformat_ms(timeline.since),
        until=isoformat_ms(timeline.until),
        buckets=[stats_bucket_to_proto(bucket) for bucket in timeline.buckets],
        triggers_by_status=_status_counts(timeline.triggers_by_status()),
        deliveries_by_channel=_delivery_counts(timeline.deliveries_by_channel()),
        dead_letters=min(timeline.dead_letters, MAX_INT32),
    )


def stats_to_proto(stats: Stats) -> tracker_pb2.GetStatsResponse:
    return tracker_pb2.GetStatsResponse(
        window=stats.window,
        since=isoformat_ms(stats.since),
        until=isoformat_ms(stats.until),
        events=[event_latency_to_proto(event) for event in stats.events],
        queues=[
            tracker_pb2.QueueLag(
                stream=lag.stream,
                consumer=lag.consumer,
                pending=min(lag.pending, MAX_INT32),
                ack_pending=min(lag.ack_pending, MAX_INT32),
                redelivered=min(lag.redelivered, MAX_INT32),
                oldest_pending_age_seconds=round(lag.oldest_pending_age_seconds, 3),
            )
            for lag in stats.queues
        ],
    )


def cursor_of(page: Page[Any]) -> str:
    return encode_cursor(page.next) if page.next is not None else ""


class IngestTriggerRecords:
    """Asks ingest about a trigger, with the caller's own credentials."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceAsyncStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    async def find(self, trigger_id: str) -> TriggerView | None:
        record = await found_or_none(
            self._stub.GetTriggerRecord(
                ingest_pb2.GetTriggerRecordRequest(trigger_id=trigger_id),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        if record is None:
            return None
        return TriggerView(
            id=uuid.UUID(record.trigger_id),
            status=record.status,
            created_at=datetime.fromisoformat(record.created_at),
            started_at=None,
            # A cancelled trigger is final from when it was cancelled.
            completed_at=datetime.fromisoformat(record.cancelled_at)
            if record.HasField("cancelled_at")
            else None,
            summary=Summary(total_contacts=record.contacts),
            event_name=record.event_name,
        )


def outcome_to_proto(outcome: Outcome) -> tracker_pb2.WorkflowOutcome:
    message = tracker_pb2.WorkflowOutcome(
        workflow_key=outcome.workflow_key,
        workflow_version=outcome.workflow_version,
        contact_id=outcome.contact_id,
        outcome="matched" if outcome.matched else "filtered",
        reason=outcome.reason,
        run_id=str(outcome.run_id) if outcome.run_id else "",
        run_status=outcome.run_status,
        steps=[
            executor_pb2.RunStep(
                step_id=step.step_id,
                type=step.type,
                status=step.status,
                attempts=step.attempts,
                detail=step.detail,
                finished_at=step.finished_at or None,
                waiting_for=step.waiting_for,
                waiting_until=step.waiting_until or None,
            )
            for step in outcome.steps
        ],
    )
    if outcome.run_started_at:
        message.run_started_at = isoformat_ms(outcome.run_started_at)
    if outcome.run_finished_at:
        message.run_finished_at = isoformat_ms(outcome.run_finished_at)
    return message


def detail_to_proto(detail: TriggerDetail) -> tracker_pb2.TriggerDetail:
    return tracker_pb2.TriggerDetail(
        trigger=trigger_to_proto(detail.view),
        event_name=detail.view.event_name,
        workflows=[outcome_to_proto(outcome) for outcome in detail.outcomes],
        note=detail.note,
    )


# An event sent for a synchronous trigger may wait in ingest's queue under load (the caller's
# own wait starts once it is accepted); and how many runs' steps are asked at once.
SEND_TIMEOUT_SECONDS = 10.0
STEP_CALLS = 8


class IngestContacts:
    """Asks ingest for a contact by external id, with the caller's own credentials."""

    def __init__(self, stub: ingest_pb2_grpc.ContactServiceAsyncStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    async def id_of(self, external_id: str) -> str | None:
        answer = await found_or_none(
            self._stub.GetContact(
                ingest_pb2.GetContactRequest(external_id=external_id),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        return answer.contact.id if answer is not None else None


class ExecutorRunSteps:
    """Asks the executor for a run's steps, with the caller's own credentials, a few at a time."""

    def __init__(
        self, stub: executor_pb2_grpc.ExecutorServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ):
        self._stub = stub
        self._metadata = metadata
        self._calls = asyncio.Semaphore(STEP_CALLS)

    async def of(self, run_id: uuid.UUID) -> tuple[StepState, ...]:
        async with self._calls:
            return await self._steps(run_id)

    async def _steps(self, run_id: uuid.UUID) -> tuple[StepState, ...]:
        answer = await found_or_none(
            self._stub.GetRun(
                executor_pb2.GetRunRequest(run_id=str(run_id)),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        if answer is None:
            return ()
        return tuple(
            StepState(
                step.step_id,
                step.type,
                step.status,
                step.attempts,
                step.detail,
                step.finished_at,
                step.waiting_for,
                step.waiting_until,
            )
            for step in answer.run.steps
        )


class IngestEventSender:
    """Sends one event through ingest's SendEvent with the caller's credentials (and idempotency
    key), keeping the headers ingest answered with for the caller."""

    def __init__(
        self,
        stub: ingest_pb2_grpc.IngestServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        request: ingest_pb2.SendEventRequest,
    ):
        self._stub = stub
        self._metadata = metadata
        self._request = request
        self.headers: tuple[tuple[str, str], ...] = ()

    async def send(self) -> Accepted:
        call = self._stub.SendEvent(self._request, metadata=self._metadata, timeout=SEND_TIMEOUT_SECONDS)
        try:
            answer = await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        trailing = metadata_dict(await call.trailing_metadata())
        self.headers = tuple((k, v) for k, v in trailing.items() if k in RESPONSE_HEADER_NAMES)
        return Accepted(
            answer.trigger_id,
            answer.job_id,
            answer.message,
            answer.scheduled_for if answer.HasField("scheduled_for") else None,
        )


class TrackerServicer(CatalogRpcs, tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        unit_of_work: Callable[[], handlers.TrackerUnitOfWork],
        ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
        executor: executor_pb2_grpc.ExecutorServiceAsyncStub,
        catalog: Callable[[], CatalogUnitOfWork],
        contacts: ingest_pb2_grpc.ContactServiceAsyncStub,
        queue_lag: handlers.QueueLag,
        lifecycle: Callable[[], LifecycleUnitOfWork],
    ):
        self._auth = authenticator
        self._catalog = catalog
        self._uow = unit_of_work
        self._ingest = ingest
        self._executor = executor
        self._contacts = contacts
        self._queue_lag = queue_lag
        self._lifecycle = lifecycle

    async def GetTrigger(
        self, request: tracker_pb2.GetTriggerRequest, context: Context
    ) -> tracker_pb2.GetTriggerResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        records = IngestTriggerRecords(self._ingest, forwarded_metadata(metadata))
        view = await handlers.get_trigger(team.id, request.trigger_id, self._uow(), records)
        return tracker_pb2.GetTriggerResponse(trigger=trigger_to_proto(view))

    async def GetTriggerWorkflow(
        self, request: tracker_pb2.GetTriggerWorkflowRequest, context: Context
    ) -> tracker_pb2.GetTriggerWorkflowResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        forwarded = forwarded_metadata(metadata)
        detail = await handlers.get_trigger_detail(
            team.id,
            request.trigger_id,
            self._uow(),
            IngestTriggerRecords(self._ingest, forwarded),
            ExecutorRunSteps(self._executor, forwarded),
        )
        return tracker_pb2.GetTriggerWorkflowResponse(detail=detail_to_proto(detail))

    async def TriggerEvent(
        self, request: tracker_pb2.TriggerEventRequest, context: Context
    ) -> tracker_pb2.TriggerEventResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        forwarded = forwarded_metadata(metadata)
        handlers.wait_period(request.wait_seconds)  # a bad wait sends nothing
        key = metadata_dict(metadata).get("idempotency-key")
        sender = IngestEventSender(
            self._ingest, forwarded + ((("idempotency-key", key),) if key else ()), request.event
        )
        accepted, detail = await handlers.trigger_event(
            sender,
            request.wait_seconds,
            team.id,
            self._uow,
            IngestTriggerRecords(self._ingest, forwarded),
            ExecutorRunSteps(self._executor, forwarded),
        )
        if sender.headers:
            context.set_trailing_metadata(sender.headers)
        response = tracker_pb2.TriggerEventResponse(
            success=True,
            trigger_id=accepted.trigger_id,
            job_id=accepted.job_id,
            message=accepted.message,
            finished=detail.finished,
            detail=detail_to_proto(detail),
        )
        if accepted.scheduled_for is not None:
            response.scheduled_for = accepted.scheduled_for
        return response

    async def ListTriggers(
        self, request: tracker_pb2.ListTriggersRequest, context: Context
    ) -> tracker_pb2.ListTriggersResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        page = await handlers.list_triggers(
            team.id,
            TriggerListRequest(
                status=request.status,
                event_name=request.event_name,
                contact=request.contact,
                contact_id=request.contact_id,
                created_after=request.created_after,
                created_before=request.created_before,
                limit=request.limit,
                cursor=request.cursor,
            ),
            self._uow(),
            IngestContacts(self._contacts, forwarded_metadata(metadata)),
        )
        return tracker_pb2.ListTriggersResponse(
            triggers=[listing_to_proto(listing) for listing in page.items], next_cursor=cursor_of(page)
        )

    async def GetContactTimeline(
        self, request: tracker_pb2.GetContactTimelineRequest, context: Context
    ) -> tracker_pb2.GetContactTimelineResponse:
        metadata = context.invocation_metadata()
        team = await self._auth.authenticate(metadata)
        contact_id, page = await handlers.contact_timeline(
            team.id,
            request.external_id,
            request.limit,
            request.cursor,
            self._uow(),
            IngestContacts(self._contacts, forwarded_metadata(metadata)),
        )
        return tracker_pb2.GetContactTimelineResponse(
            contact_id=contact_id,
            entries=[entry_to_proto(entry) for entry in page.items],
            next_cursor=cursor_of(page),
        )

    async def GetStatsTimeline(
        self, request: tracker_pb2.GetStatsTimelineRequest, context: Context
    ) -> tracker_pb2.GetStatsTimelineResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        timeline = await handlers.stats_timeline(team.id, request.window, request.step, self._uow())
        return stats_timeline_to_proto(timeline)

    async def GetStats(
        self, request: tracker_pb2.GetStatsRequest, context: Context
    ) -> tracker_pb2.GetStatsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        stats = await handlers.get_stats(team.id, request.window, self._uow(), self._queue_lag)
        return stats_to_proto(stats)

    async def EraseContact(
        self, request: tracker_pb2.EraseContactRequest, context: Context
    ) -> tracker_pb2.EraseContactResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        names = ContactNames.of(request)
        erased = await erase_contact(team.id, names, self._lifecycle())
        erased["tracker.catalog_examples"] = await catalog_handlers.erase_contact_examples(
            team.id, names.contact_id, self._catalog()
        )
        return tracker_pb2.EraseContactResponse(erased=erased)
