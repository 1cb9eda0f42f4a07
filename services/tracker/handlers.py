"""The tracker's use cases: apply each reported fact once, and answer what became of a trigger."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from herald.bus.v1 import tracking_pb2
from kernel.clock import from_timestamp, utcnow
from kernel.errors import Conflict, InvalidArgument, NotFound
from kernel.lag import ConsumerLag
from kernel.unit_of_work import UnitOfWork
from services.tracker.domain import (
    DEFAULT_WINDOW,
    NOT_RECORDED,
    Accepted,
    EventLatency,
    Outcome,
    Page,
    Position,
    Progress,
    QueueLagSample,
    RunEnd,
    RunRecord,
    RunStatus,
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
    """Facts are applied a fetch at a time: each trigger's row is written once per fetch, and
    each kind of fact is stored for every trigger at once, each fact at most once (a repeated
    fact, from an earlier fetch or twice in this one, stores nothing)."""

    async def lock(self, trigger_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TriggerState]:
        """Those of the triggers that exist, locked until the unit of work ends (in id order)."""
        ...

    async def create(self, triggers: Sequence[TriggerState]) -> set[uuid.UUID]:
        """Create the triggers as they are (in id order); the ids of those created (not one that
        another transaction created meanwhile)."""
        ...

    async def save(self, states: Sequence[TriggerState]) -> None:
        """Write the triggers' rows as they are now."""
        ...

    async def add_events_decided(
        self, events: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> set[tuple[uuid.UUID, uuid.UUID]]:
        """Note (trigger id, event id) pairs of triggers of several events as decided; those
        that were not noted yet."""
        ...

    async def add_decisions(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.EventMatched]]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """Store the facts' decisions; the runs that decisions not stored yet started (matched,
        with a run), each with its trigger's id."""
        ...

    async def runs(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunRecord]:
        """What is recorded of the runs (those with neither an end nor a decision are left out)."""
        ...

    async def record_runs_started(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.RunStarted, datetime]]
    ) -> None: ...

    async def record_run_ends(self, ends: Sequence[RunEnd]) -> None:
        """Store the runs' ends (each run's last, one that changed)."""
        ...

    async def record_deliveries(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.DeliveryRecorded, datetime]]
    ) -> None: ...

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
    """Apply tracking records in one transaction: their triggers are locked together, those
    missing created (see _apply), each kind of fact is stored for all of them at once, and each
    trigger's row, folded from what it was and its new facts (the counters they move do not
    depend on the order facts come in), is written once."""
    by_trigger: dict[uuid.UUID, TriggerFacts] = {}
    named: dict[str, TriggerFacts] = {}  # each id as written, parsed once
    for record in records:
        facts = named.get(record.trigger_id)
        if facts is None:
            trigger_id = uuid.UUID(record.trigger_id)
            facts = by_trigger.get(trigger_id) or TriggerFacts(trigger_id, record.project_id)
            by_trigger[trigger_id] = named[record.trigger_id] = facts
        facts.add(record)
    # Each attempt that loses a creation finds one more of its triggers created (committed: a
    # creation waits for the other's to end), so there are at most this many.
    for attempt in range(1, len(by_trigger) + 2):
        async with uow:
            moved = await _apply(by_trigger, uow.triggers)
            if moved is not None:
                await uow.commit()
                break
        # Another transaction created a trigger this one found missing: rolled back, and again.
        log.info("triggers.created_meanwhile", attempt=attempt)
    else:
        raise Conflict(
            "Triggers were created by other transactions while these facts were applied",
            reason="TRIGGERS_CREATED_MEANWHILE",
        )
    if moved:
        # One line per batch, not per record: the triggers whose status moved, and to what.
        ids = [str(trigger.id) for trigger in moved]
        log.info(
            "triggers.moved",
            trigger_ids=ids,
            statuses={trigger_id: trigger.status for trigger_id, trigger in zip(ids, moved, strict=True)},
        )


@dataclass(slots=True)
class TriggerFacts:
    """One trigger's facts in a batch, by kind, each kind in the order its facts came."""

    id: uuid.UUID
    team_id: str
    # When its last fact was recorded.
    last_at: datetime | None = None
    accepted: list[tracking_pb2.TriggerAccepted] = field(default_factory=list)
    cancelled: list[datetime] = field(default_factory=list)
    matched: list[tuple[tracking_pb2.EventMatched, datetime]] = field(default_factory=list)
    started: list[tuple[tracking_pb2.RunStarted, datetime]] = field(default_factory=list)
    deliveries: list[tuple[tracking_pb2.DeliveryRecorded, datetime]] = field(default_factory=list)
    finished: list[tuple[tracking_pb2.RunFinished, datetime]] = field(default_factory=list)

    def add(self, record: tracking_pb2.TrackingRecord) -> None:
        at = from_timestamp(record.recorded_at) if record.HasField("recorded_at") else utcnow()
        self.last_at = at
        kind = record.WhichOneof("kind")
        if kind == "trigger_accepted":
            self.accepted.append(record.trigger_accepted)
        elif kind == "event_matched":
            self.matched.append((record.event_matched, at))
        elif kind == "run_started":
            self.started.append((record.run_started, at))
        elif kind == "run_finished":
            self.finished.append((record.run_finished, at))
        elif kind == "delivery_recorded":
            self.deliveries.append((record.delivery_recorded, at))
        elif kind == "trigger_cancelled":
            self.cancelled.append(from_timestamp(record.trigger_cancelled.cancelled_at))

    def events_of_several(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """The (trigger, event) pairs its decisions about events of a trigger of several name."""
        return [(self.id, uuid.UUID(fact.event_id)) for fact, _ in self.matched if fact.trigger_events > 1]


async def _apply(
    by_trigger: dict[uuid.UUID, TriggerFacts], repository: TriggerRepository
) -> list[TriggerState] | None:
    """Apply the facts; the triggers whose status moved. None (nothing to commit) when another
    transaction created one of the triggers that were missing, after this one looked.

    The triggers that exist are locked first, then those missing are created, each kind in id
    order: a transaction waits only for the locks of those it locks, and for the creations of
    those it creates, so two never wait on each other in a cycle (one that lost a creation to
    another rolls back rather than lock the trigger out of order)."""
    now = utcnow()
    triggers = await repository.lock(list(by_trigger))
    # A trigger no fact named before: its facts are all new (the first time each comes here), so
    # it is folded here alone and created as it ends up (its row written once).
    new: dict[uuid.UUID, TriggerState] = {}
    folded: dict[uuid.UUID, tuple[list[tracking_pb2.EventMatched], list[RunEnd]]] = {}
    for trigger_id, facts in by_trigger.items():
        if trigger_id not in triggers:
            new[trigger_id] = TriggerState(trigger_id, facts.team_id)
            folded[trigger_id] = _fold_new(new[trigger_id], facts, now)
    if new and await repository.create(list(new.values())) != set(new):
        return None
    # The others, from their rows: whether each of their facts is new, the database says.
    before = {trigger_id: replace(trigger) for trigger_id, trigger in triggers.items()}
    # Every trigger's events decided are stored; whether they are new matters to the others only.
    several = [pair for facts in by_trigger.values() for pair in facts.events_of_several()]
    new_events = await repository.add_events_decided(several) if several else set()
    decided = [
        (trigger_id, fact) for trigger_id, (facts_decided, _) in folded.items() for fact in facts_decided
    ]
    for trigger_id, trigger in triggers.items():
        decided += [(trigger_id, fact) for fact in _decide(trigger, by_trigger[trigger_id], new_events)]
    started_by = await repository.add_decisions(decided) if decided else {}
    # The runs whose records move the others' counters: those their new decisions started, and
    # those that ended.
    new_runs: dict[uuid.UUID, list[uuid.UUID]] = {trigger_id: [] for trigger_id in triggers}
    for run_id, trigger_id in started_by.items():
        if trigger_id in new_runs:
            new_runs[trigger_id].append(run_id)
    wanted = [run_id for runs in new_runs.values() for run_id in runs]
    wanted += [
        uuid.UUID(fact.run_id) for trigger_id in triggers for fact, _ in by_trigger[trigger_id].finished
    ]
    known = await repository.runs(wanted) if wanted else {}
    ends = [end for _, trigger_ends in folded.values() for end in trigger_ends]
    for trigger_id, trigger in triggers.items():
        ends += _finish(trigger, by_trigger[trigger_id], new_runs[trigger_id], known, now)
    started = [(facts.id, fact, at) for facts in by_trigger.values() for fact, at in facts.started]
    if started:
        await repository.record_runs_started(started)
    if ends:
        await repository.record_run_ends(ends)
    deliveries = [(facts.id, fact, at) for facts in by_trigger.values() for fact, at in facts.deliveries]
    if deliveries:
        await repository.record_deliveries(deliveries)
    changed = [trigger for trigger_id, trigger in triggers.items() if trigger != before[trigger_id]]
    if changed:
        await repository.save(changed)
    # A trigger created was queued before (as far as the log goes).
    return [trigger for trigger in new.values() if trigger.status != TriggerStatus.QUEUED] + [
        trigger for trigger_id, trigger in triggers.items() if trigger.status != before[trigger_id].status
    ]


def _fold_new(
    trigger: TriggerState, facts: TriggerFacts, now: datetime
) -> tuple[list[tracking_pb2.EventMatched], list[RunEnd]]:
    """Apply the facts to a trigger no fact named before (so none of its facts is stored yet:
    each is new the first time it comes here); the decisions and run ends to store."""
    decided = _decide(trigger, facts, set(facts.events_of_several()))
    new_runs = _runs_of_new_decisions(decided)
    known = {run_id: RunRecord(decided_by=frozenset((trigger.id,))) for run_id in new_runs}
    return decided, _finish(trigger, facts, new_runs, known, now)


def _decide(
    trigger: TriggerState, facts: TriggerFacts, new_events: set[tuple[uuid.UUID, uuid.UUID]]
) -> list[tracking_pb2.EventMatched]:
    """Apply the trigger's accepted facts, its cancellation and the matcher's decisions about its
    events (`new_events`: the pairs of events of a trigger of several not decided before, which
    this takes out); the decisions to store (each event's, the first time it is decided)."""
    for accepted in facts.accepted:
        trigger.event_id = uuid.UUID(accepted.event_id)
        trigger.event_name = accepted.event_name
        trigger.contact_id = accepted.contact_id or None
        trigger.created_at = from_timestamp(accepted.created_at)
        trigger.scheduled_for = (
            from_timestamp(accepted.scheduled_for) if accepted.HasField("scheduled_for") else None
        )
        # Only a trigger of several events says how many; only a direct trigger, how many contacts.
        if accepted.events > 1:
            trigger.expected_events = accepted.events
        if accepted.contacts > 0:
            trigger.contacts = accepted.contacts
    for at in facts.cancelled:
        cancel(trigger, at)
    decided: list[tracking_pb2.EventMatched] = []
    # A trigger of one event is decided once: the first report sets matched_at.
    for fact, at in facts.matched:
        if fact.trigger_events <= 1 and trigger.matched_at is None:
            trigger.matched_at = at
            decided.append(fact)
    # Events of a trigger of several: each is decided once; the trigger is matched when all are.
    first_decided: datetime | None = None
    for fact, at in facts.matched:
        if fact.trigger_events <= 1:
            continue
        pair = (trigger.id, uuid.UUID(fact.event_id))
        if pair not in new_events:
            continue
        new_events.discard(pair)  # the same event twice counts once
        first_decided = at if first_decided is None else min(first_decided, at)
        trigger.expected_events = fact.trigger_events
        trigger.events_matched += 1
        decided.append(fact)
    if trigger.matched_at is None:
        trigger.matched_at = first_decided
    return decided


def _runs_of_new_decisions(decided: Sequence[tracking_pb2.EventMatched]) -> list[uuid.UUID]:
    """The runs the decisions of a trigger no fact named before start (a decision repeated, for
    the same workflow and contact, is stored once: its first)."""
    seen: set[tuple[str, str]] = set()
    runs: dict[uuid.UUID, None] = {}
    for fact in decided:
        for decision in fact.decisions:
            key = (decision.workflow_key, decision.contact_id)
            if key in seen:
                continue
            seen.add(key)
            if decision.outcome == tracking_pb2.MATCH_OUTCOME_MATCHED and decision.run_id:
                runs[uuid.UUID(decision.run_id)] = None
    return list(runs)


def _finish(
    trigger: TriggerState,
    facts: TriggerFacts,
    new_runs: Sequence[uuid.UUID],
    known: Mapping[uuid.UUID, RunRecord],
    now: datetime,
) -> list[RunEnd]:
    """Count the runs its new decisions started (`new_runs`) and the runs that ended (`known`:
    what was recorded of them before these facts), note its steps done and move its status on;
    the ends to store (each run's last here, unless it ended so before)."""
    for run_id in new_runs:
        trigger.runs_expected += 1
        run = known.get(run_id)
        if run is not None and run.finished_at is not None:  # its end came before its decision
            trigger.count_finished(1, run.status == RunStatus.FAILED, run.finished_at)
    last_ends = {uuid.UUID(fact.run_id): (fact, at) for fact, at in facts.finished}
    ends: list[RunEnd] = []
    for run_id, (fact, at) in last_ends.items():
        status = (
            RunStatus.COMPLETED if fact.outcome == tracking_pb2.RUN_OUTCOME_COMPLETED else RunStatus.FAILED
        )
        run = known.get(run_id, NOT_RECORDED)
        if run.finished and run.status == status:
            continue  # the same end again
        ends.append(RunEnd(run_id, trigger.id, status, fact.detail, at))
        # Counted once its decision is known (or when the decision comes); a run that ends the
        # other way after a replay moves the failed count only.
        if trigger.id in run.decided_by:
            was_failed = run.finished and run.status == RunStatus.FAILED
            trigger.count_finished(0 if run.finished else 1, (status == RunStatus.FAILED) - was_failed, at)
    for _, at in facts.deliveries:
        note_step_done(trigger, at)
    # Once, after all of them: the status follows from the counters, whatever order facts came in.
    assert facts.last_at is not None
    next_status(trigger, trigger.progress, facts.last_at, now=now)
    return ends


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
