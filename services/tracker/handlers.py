"""The tracker's use cases: apply each reported fact once, and answer what became of a trigger."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from herald.bus.v1 import tracking_pb2
from kernel.clock import from_timestamp, utcnow
from kernel.errors import InvalidArgument, NotFound
from kernel.lag import ConsumerLag
from kernel.unit_of_work import UnitOfWork
from services.tracker.domain import (
    DEFAULT_WINDOW,
    Accepted,
    EventLatency,
    Outcome,
    Page,
    Position,
    Progress,
    QueueLagSample,
    Stats,
    StatsBucket,
    StatsTimeline,
    StepState,
    TimelineEntry,
    TimelineKind,
    TriggerDetail,
    TriggerListing,
    TriggerListRequest,
    TriggerQuery,
    TriggerState,
    TriggerStatus,
    TriggerView,
    bad_parameter,
    bucket_starts,
    cancel,
    decode_cursor,
    next_status,
    note_step_done,
    page_size,
    parse_contact_id,
    parse_event_name,
    parse_moment,
    parse_statuses,
    parse_step,
    parse_window,
)

log = structlog.get_logger(__name__)


class TriggerRepository(Protocol):
    """Facts are applied a fetch at a time, each kind for every trigger at once, each fact at
    most once: a repeated fact (from an earlier fetch, or twice in this one) changes nothing."""

    async def lock(self, teams: Mapping[uuid.UUID, str]) -> dict[uuid.UUID, TriggerState]:
        """The triggers (each created empty if no fact named it yet, in its team), locked until
        the unit of work ends."""
        ...

    async def save(self, states: Sequence[TriggerState]) -> None: ...

    async def record_accepted(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.TriggerAccepted]]
    ) -> None: ...

    async def record_matched(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.EventMatched, datetime]]
    ) -> None: ...

    async def record_runs_started(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.RunStarted, datetime]]
    ) -> None: ...

    async def record_runs_finished(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.RunFinished, datetime]]
    ) -> None: ...

    async def record_deliveries(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.DeliveryRecorded, datetime]]
    ) -> None: ...

    def progress_of(self, trigger_id: uuid.UUID) -> Progress:
        """The progress of a trigger this unit of work locked, with the facts recorded since."""
        ...

    async def progress(self, trigger_id: uuid.UUID) -> Progress: ...

    async def view(self, team_id: str, trigger_id: uuid.UUID) -> TriggerView | None: ...

    async def outcomes(self, trigger_id: uuid.UUID, limit: int) -> tuple[list[Outcome], int]:
        """The first `limit` decisions about the trigger, with their runs; and how many there are."""
        ...

    async def list_triggers(self, team_id: str, query: TriggerQuery, now: datetime) -> Page[TriggerListing]:
        """A page of the team's triggers, newest first, with their status as of `now`."""
        ...

    async def timeline(
        self, team_id: str, contact_id: str, limit: int, after: Position | None, now: datetime
    ) -> Page[TimelineEntry]:
        """A page of the contact's events, run starts and ends and deliveries, newest first."""
        ...

    async def latency(
        self, team_id: str, since: datetime, until: datetime, event_name: str | None = None
    ) -> list[EventLatency]:
        """Per event name (or for `event_name` only), the latency of the triggers accepted
        between `since` and `until`."""
        ...


class StatsRepository(Protocol):
    async def fill_timeline(
        self, team_id: str, buckets: Sequence[StatsBucket], step: timedelta, now: datetime
    ) -> None:
        """Fill the buckets (consecutive, `step` long, oldest first) with the project's figures."""
        ...

    async def add_queue_lag(self, sample: QueueLagSample, keep_after: datetime) -> None:
        """Store the sample and forget those sampled before `keep_after`."""
        ...


class TrackerUnitOfWork(UnitOfWork, Protocol):
    @property
    def triggers(self) -> TriggerRepository: ...

    @property
    def stats(self) -> StatsRepository: ...


class RunSteps(Protocol):
    """The executor's steps of a run."""

    async def of(self, run_id: uuid.UUID) -> tuple[StepState, ...]:
        """The run's steps; none when the executor has not started the run yet."""
        ...


class EventSender(Protocol):
    """Accepts an event as POST /api/v1/events/send does (ingest, with the caller's credentials)."""

    async def send(self) -> Accepted: ...


class ContactDirectory(Protocol):
    """Ingest's contacts, by external id."""

    async def id_of(self, external_id: str) -> str | None:
        """Herald's id of the contact; None when the project has no such contact."""
        ...


class QueueLag(Protocol):
    """How far each durable consumer of the bus is behind (kernel.lag.queue_lag)."""

    async def __call__(self) -> list[ConsumerLag]: ...


class TriggerRecords(Protocol):
    """Ingest's own record of a trigger, for one the tracker has not heard of yet."""

    async def find(self, trigger_id: str) -> TriggerView | None: ...


async def record_fact(record: tracking_pb2.TrackingRecord, uow: TrackerUnitOfWork) -> None:
    """Apply one tracking record to its trigger and move the trigger's status on."""
    await record_facts([record], uow)


async def record_facts(records: Sequence[tracking_pb2.TrackingRecord], uow: TrackerUnitOfWork) -> None:
    """Apply tracking records in one transaction: their triggers are locked together (in id
    order, so two batches never wait on each other in a cycle), each kind of fact is recorded
    for all of them at once (the counters they move do not depend on the order facts come in),
    and then each trigger's status moves on."""
    by_trigger: dict[uuid.UUID, list[tracking_pb2.TrackingRecord]] = {}
    for record in records:
        by_trigger.setdefault(uuid.UUID(record.trigger_id), []).append(record)
    async with uow:
        moved = await _apply(by_trigger, uow.triggers)
        await uow.commit()
    if moved:
        # One line per batch, not per record: the triggers whose status moved, and to what.
        ids = [str(trigger.id) for trigger in moved]
        log.info(
            "triggers.moved",
            trigger_ids=ids,
            statuses={trigger_id: trigger.status for trigger_id, trigger in zip(ids, moved, strict=True)},
        )


async def _apply(
    by_trigger: dict[uuid.UUID, list[tracking_pb2.TrackingRecord]], repository: TriggerRepository
) -> list[TriggerState]:
    """Apply the records; the triggers whose status (or its times) changed."""
    triggers = await repository.lock(
        {trigger_id: records[0].project_id for trigger_id, records in by_trigger.items()}
    )
    before = {trigger_id: _saved(t) for trigger_id, t in triggers.items()}
    accepted: list[tuple[uuid.UUID, tracking_pb2.TriggerAccepted]] = []
    matched: list[tuple[uuid.UUID, tracking_pb2.EventMatched, datetime]] = []
    started: list[tuple[uuid.UUID, tracking_pb2.RunStarted, datetime]] = []
    finished: list[tuple[uuid.UUID, tracking_pb2.RunFinished, datetime]] = []
    deliveries: list[tuple[uuid.UUID, tracking_pb2.DeliveryRecorded, datetime]] = []
    last_at: dict[uuid.UUID, datetime] = {}
    for trigger_id, records in by_trigger.items():
        trigger = triggers[trigger_id]
        for record in records:
            at = from_timestamp(record.recorded_at) if record.HasField("recorded_at") else utcnow()
            last_at[trigger_id] = at
            kind = record.WhichOneof("kind")
            if kind == "trigger_accepted":
                accepted.append((trigger_id, record.trigger_accepted))
                trigger.scheduled_for = (
                    from_timestamp(record.trigger_accepted.scheduled_for)
                    if record.trigger_accepted.HasField("scheduled_for")
                    else None
                )
            elif kind == "event_matched":
                matched.append((trigger_id, record.event_matched, at))
            elif kind == "run_started":
                started.append((trigger_id, record.run_started, at))
            elif kind == "run_finished":
                finished.append((trigger_id, record.run_finished, at))
            elif kind == "delivery_recorded":
                deliveries.append((trigger_id, record.delivery_recorded, at))
                note_step_done(trigger, at)
            elif kind == "trigger_cancelled":
                cancel(trigger, from_timestamp(record.trigger_cancelled.cancelled_at))
    if accepted:
        await repository.record_accepted(accepted)
    if matched:
        await repository.record_matched(matched)
    if started:
        await repository.record_runs_started(started)
    if deliveries:
        await repository.record_deliveries(deliveries)
    if finished:
        await repository.record_runs_finished(finished)
    # Once, after all of them: the status follows from the counters, whatever order facts came in.
    now = utcnow()
    for trigger_id, trigger in triggers.items():
        next_status(trigger, repository.progress_of(trigger_id), last_at[trigger_id], now=now)
    changed = [t for trigger_id, t in triggers.items() if _saved(t) != before[trigger_id]]
    if changed:
        await repository.save(changed)
    return changed


def _saved(trigger: TriggerState) -> tuple[object, ...]:
    """What `TriggerRepository.save` writes of a trigger."""
    return (trigger.status, trigger.started_at, trigger.completed_at, trigger.first_step_at)


async def get_trigger(
    team_id: str, trigger_id: str, uow: TrackerUnitOfWork, records: TriggerRecords
) -> TriggerView:
    try:
        parsed = uuid.UUID(trigger_id)
    except ValueError:
        raise NotFound(
            "Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id}
        ) from None
    async with uow:
        view = await uow.triggers.view(team_id, parsed)
    if view is None:
        view = await records.find(trigger_id)
    if view is None:
        raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id})
    return view


# A trigger's detail lists this many outcomes, and the steps of this many runs.
MAX_OUTCOMES = 1000
MAX_RUNS_WITH_STEPS = 50
# POST /api/v1/events/trigger waits this long by default, and at most this long.
DEFAULT_WAIT_SECONDS = 10
MAX_WAIT_SECONDS = 30
# How often a waiting trigger is looked at: soon at first, then less often.
FIRST_LOOK_SECONDS = 0.02
LOOK_SECONDS = 0.2


async def get_trigger_detail(
    team_id: str,
    trigger_id: str,
    uow: TrackerUnitOfWork,
    records: TriggerRecords,
    steps: RunSteps,
) -> TriggerDetail:
    """The trigger, every workflow its events were considered by (matched with its run and the
    run's steps, or filtered with the reason), as far as it has gone."""
    view = await get_trigger(team_id, trigger_id, uow, records)
    async with uow:
        outcomes, total = await uow.triggers.outcomes(view.id, MAX_OUTCOMES)
        progress = await uow.triggers.progress(view.id)
    with_runs = [outcome for outcome in outcomes if outcome.run_id is not None][:MAX_RUNS_WITH_STEPS]
    found = await asyncio.gather(*(steps.of(outcome.run_id) for outcome in with_runs if outcome.run_id))
    steps_of = {outcome.run_id: run_steps for outcome, run_steps in zip(with_runs, found, strict=True)}
    outcomes = [replace(outcome, steps=steps_of.get(outcome.run_id, ())) for outcome in outcomes]
    decided = progress.matched and not progress.undecided_events
    return TriggerDetail(view, outcomes, total, decided)


def wait_period(wait_seconds: int) -> int:
    if wait_seconds == 0:
        return DEFAULT_WAIT_SECONDS
    if not 1 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise InvalidArgument(
            f"wait_seconds must be 1 to {MAX_WAIT_SECONDS} (default {DEFAULT_WAIT_SECONDS}); "
            f"got {wait_seconds}",
            reason="INVALID_WAIT",
            metadata={"field": "wait_seconds"},
        )
    return wait_seconds


async def trigger_event(
    sender: EventSender,
    wait_seconds: int,
    team_id: str,
    unit_of_work: Callable[[], TrackerUnitOfWork],
    records: TriggerRecords,
    steps: RunSteps,
) -> tuple[Accepted, TriggerDetail]:
    """Send the event, wait (bounded) until its trigger is finished, and tell everything that
    happened to it. A scheduled event is answered at once: it will not fire within the wait."""
    deadline = time.monotonic() + wait_period(wait_seconds)
    accepted = await sender.send()
    pause = FIRST_LOOK_SECONDS
    while accepted.scheduled_for is None and time.monotonic() < deadline:
        view = await get_trigger(team_id, accepted.trigger_id, unit_of_work(), records)
        if view.status in TriggerStatus.FINAL:
            break
        await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 2, LOOK_SECONDS)
    detail = await get_trigger_detail(team_id, accepted.trigger_id, unit_of_work(), records, steps)
    return accepted, detail


async def list_triggers(
    team_id: str, request: TriggerListRequest, uow: TrackerUnitOfWork, contacts: ContactDirectory
) -> Page[TriggerListing]:
    """A page of the project's triggers that pass the request's filters, newest first."""
    if request.contact and request.contact_id:
        raise bad_parameter("contact", "Filter by contact (an external id) or by contact_id, not both")
    query = TriggerQuery(
        statuses=parse_statuses(request.status),
        event_name=parse_event_name(request.event_name),
        contact_id=parse_contact_id(request.contact_id),
        created_after=parse_moment(request.created_after, "created_after"),
        created_before=parse_moment(request.created_before, "created_before"),
        limit=page_size(request.limit),
        after=decode_cursor(request.cursor),
    )
    if request.contact:
        contact_id = await contacts.id_of(request.contact)
        if contact_id is None:
            raise NotFound(
                f"Contact not found: no contact has the external id {request.contact[:256]!r} "
                "(parameter contact)",
                reason="CONTACT_NOT_FOUND",
                metadata={"parameter": "contact", "external_id": request.contact[:256]},
            )
        query = replace(query, contact_id=contact_id)
    async with uow:
        return await uow.triggers.list_triggers(team_id, query, utcnow())


async def contact_timeline(
    team_id: str,
    external_id: str,
    limit: int,
    cursor: str,
    uow: TrackerUnitOfWork,
    contacts: ContactDirectory,
) -> tuple[str, Page[TimelineEntry]]:
    """The contact's id and a page of its story, newest first; NotFound for an unknown contact."""
    size, after = page_size(limit), decode_cursor(cursor)
    if after is not None and after.rank not in TimelineKind.RANK.values():
        raise bad_parameter("cursor", "cursor is not one of this timeline's: start again without it")
    contact_id = await contacts.id_of(external_id)
    if contact_id is None:
        raise NotFound(
            "Contact not found", reason="CONTACT_NOT_FOUND", metadata={"external_id": external_id[:256]}
        )
    async with uow:
        return contact_id, await uow.triggers.timeline(team_id, contact_id, size, after, utcnow())


async def get_stats(team_id: str, window_text: str, uow: TrackerUnitOfWork, lag: QueueLag) -> Stats:
    """Latency per event name over the window ending now, and the bus's queue lag now."""
    window = parse_window(window_text)
    until = utcnow()
    since = until - window
    async with uow:
        events = await uow.triggers.latency(team_id, since, until)
    return Stats(window_text or DEFAULT_WINDOW, since, until, events, await lag())


async def event_latency(
    team_id: str, event_name: str, window_text: str, uow: TrackerUnitOfWork
) -> tuple[str, EventLatency | None]:
    """One event name's latency over the window ending now (its catalog page shows it)."""
    window = parse_window(window_text)
    until = utcnow()
    async with uow:
        found = await uow.triggers.latency(team_id, until - window, until, event_name)
    return window_text or DEFAULT_WINDOW, (found[0] if found else None)


async def stats_timeline(
    team_id: str, window_text: str, step_text: str, uow: TrackerUnitOfWork
) -> StatsTimeline:
    """The project's activity over the window ending now, a bucket per step, oldest first."""
    window = parse_window(window_text)
    step = parse_step(step_text, window)
    now = utcnow()
    buckets = [StatsBucket(at) for at in bucket_starts(now, window, step)]
    async with uow:
        await uow.stats.fill_timeline(team_id, buckets, step, now)
    return StatsTimeline(window_text or DEFAULT_WINDOW, step, buckets[0].at, now, buckets)


# How long the queue lag samples are kept (the timeline shows none older).
QUEUE_LAG_KEPT = timedelta(hours=24)


async def sample_queue_lag(lag: QueueLag, uow: TrackerUnitOfWork) -> QueueLagSample:
    """Record the bus's lag now, over every consumer (the most messages waiting and the oldest's
    age), for the stats timeline; forget samples older than QUEUE_LAG_KEPT."""
    lags = await lag()
    now = utcnow()
    sample = QueueLagSample(
        sampled_at=now,
        pending=sum(found.pending + found.ack_pending for found in lags),
        oldest_age_seconds=max((found.oldest_pending_age_seconds for found in lags), default=0.0),
    )
    async with uow:
        await uow.stats.add_queue_lag(sample, now - QUEUE_LAG_KEPT)
        await uow.commit()
    return sample
