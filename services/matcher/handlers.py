"""The matcher's use cases: keep workflow definitions, and decide which workflows an event starts."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

import structlog

from herald.bus.v1 import event_pb2
from kernel.clock import utcnow
from kernel.documents import contact_document
from kernel.errors import AlreadyExists, InvalidArgument, NotFound
from kernel.unit_of_work import UnitOfWork
from services.matcher import messages
from services.matcher.domain import (
    Decision,
    MatchedEvent,
    Segment,
    Workflow,
    WorkflowDefinition,
    decide,
    in_cooldown,
    validate_definition,
    validate_segment,
)

log = structlog.get_logger(__name__)


class WorkflowRepository(Protocol):
    async def latest(self, team_id: str, key: str) -> Workflow | None: ...

    async def all_latest(self, team_id: str) -> list[Workflow]: ...

    async def listening_to(self, team_id: str, event_name: str) -> list[Workflow]:
        """The latest version of every workflow whose trigger names `event_name`."""
        ...

    async def versions(self, team_id: str, key: str) -> list[Workflow]:
        """Every stored version of the workflow, newest first (not the deletion marker)."""
        ...

    async def add(self, workflow: Workflow) -> None: ...


class CooldownRepository(Protocol):
    async def claim(
        self, team_id: str, workflow_key: str, contact_id: str, now: datetime, until: datetime
    ) -> datetime | None:
        """Start the workflow's cooldown for the contact and return None, or return when the
        cooldown already running ends."""
        ...


class DecisionRepository(Protocol):
    async def claim(self, events: Sequence[MatchedEvent]) -> set[uuid.UUID]:
        """Record that the events are decided in this transaction; the ids of those claimed now
        (a redelivered event's is not among them). A concurrent claim of an event waits for
        this one."""
        ...

    async def add(self, decided: Sequence[tuple[MatchedEvent, list[Decision]]]) -> None:
        """Store the decisions of claimed events."""
        ...


class SegmentRepository(Protocol):
    async def get(self, team_id: str, key: str) -> Segment | None: ...

    async def all(self, team_id: str) -> list[Segment]: ...

    async def put(self, segment: Segment, *, replace: bool) -> Segment | None:
        """Store `segment`; None when it exists and `replace` is false."""
        ...

    async def delete(self, team_id: str, key: str) -> bool: ...

    async def set_memberships(
        self, members: Sequence[tuple[str, str, frozenset[str]]], now: datetime
    ) -> list[tuple[str, str, str]]:
        """Record that each (team, contact) is in exactly the segments given (one entry per
        contact); the (team, contact, segment key) of each segment newly entered."""
        ...


# The segments of a project, from wherever the caller keeps them (a cache, or the database).
SegmentSource = Callable[[str], Awaitable[list[Segment]]]
# The workflows of a project by the event they listen to (see `workflows_by_event`), likewise.
WorkflowSource = Callable[[str], Awaitable[dict[str, list[Workflow]]]]


class MatcherUnitOfWork(UnitOfWork, Protocol):
    @property
    def workflows(self) -> WorkflowRepository: ...

    @property
    def segments(self) -> SegmentRepository: ...

    @property
    def decisions(self) -> DecisionRepository: ...

    @property
    def cooldowns(self) -> CooldownRepository: ...


async def create_workflow(team_id: str, definition: WorkflowDefinition, uow: MatcherUnitOfWork) -> Workflow:
    definition = validate_definition(definition)
    async with uow:
        latest = await uow.workflows.latest(team_id, definition.key)
        if latest is not None and not latest.deleted:
            raise AlreadyExists(
                f"Workflow {definition.key!r} already exists: change it with PUT /api/v1/workflows/"
                f"{definition.key}",
                reason="WORKFLOW_EXISTS",
                metadata={"key": definition.key},
            )
        await _check_segment(team_id, definition, uow)
        workflow = _next_version(team_id, definition, latest)
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def _check_segment(team_id: str, definition: WorkflowDefinition, uow: MatcherUnitOfWork) -> None:
    key = definition.filters.segment
    if key and await uow.segments.get(team_id, key) is None:
        raise InvalidArgument(
            f"Invalid workflow: filters.segment: no segment {key!r} (create it with POST /api/v1/segments)",
            reason="INVALID_WORKFLOW",
            metadata={"problems": f"filters.segment: no segment {key!r}"},
        )


async def update_workflow(
    team_id: str, key: str, definition: WorkflowDefinition, uow: MatcherUnitOfWork
) -> tuple[Workflow, bool]:
    """Store the definition as the workflow's next version (the first, when the key is new);
    the same definition again stores nothing. Returns the version and whether it is new."""
    if definition.key and definition.key != key:
        raise InvalidArgument(
            f"The body's key {definition.key!r} differs from the path's {key!r}: a workflow's key "
            "cannot change (create a workflow under the new key instead)",
            reason="WORKFLOW_KEY_MISMATCH",
        )
    definition = validate_definition(replace(definition, key=key))
    async with uow:
        latest = await uow.workflows.latest(team_id, key)
        if latest is not None and not latest.deleted and latest.definition == definition:
            return latest, False
        await _check_segment(team_id, definition, uow)
        workflow = _next_version(team_id, definition, latest)
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow, True


async def set_workflow_active(
    team_id: str, key: str, active: bool, uow: MatcherUnitOfWork
) -> tuple[Workflow, bool]:
    """Activate or pause the workflow: its next version is the latest with `active` set, as a PUT
    of the same definition would store it; already so, nothing is stored. Returns the workflow
    and whether a version was stored. NotFound for an unknown or deleted key."""
    async with uow:
        latest = await uow.workflows.latest(team_id, key)
        if latest is None or latest.deleted:
            raise _not_found(key)
        if latest.definition.active == active:
            return latest, False
        definition = replace(latest.definition, active=active)
        if active:
            await _check_segment(team_id, definition, uow)
        workflow = _next_version(team_id, definition, latest)
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow, True


async def delete_workflow(team_id: str, key: str, uow: MatcherUnitOfWork) -> Workflow:
    """Delete the workflow; its versions stay for the runs that used them."""
    async with uow:
        latest = await uow.workflows.latest(team_id, key)
        if latest is None or latest.deleted:
            raise _not_found(key)
        marker = Workflow(team_id, latest.definition, latest.version + 1, utcnow(), deleted=True)
        await uow.workflows.add(marker)
        await uow.commit()
    return latest


def _next_version(team_id: str, definition: WorkflowDefinition, latest: Workflow | None) -> Workflow:
    version = latest.version + 1 if latest is not None else 1
    return Workflow(team_id=team_id, definition=definition, version=version, created_at=utcnow())


def _not_found(key: str) -> NotFound:
    return NotFound(f"Workflow {key!r} not found", reason="WORKFLOW_NOT_FOUND", metadata={"key": key})


async def get_workflow(team_id: str, key: str, uow: MatcherUnitOfWork) -> Workflow:
    async with uow:
        workflow = await uow.workflows.latest(team_id, key)
    if workflow is None or workflow.deleted:
        raise _not_found(key)
    return workflow


async def list_versions(team_id: str, key: str, uow: MatcherUnitOfWork) -> list[Workflow]:
    async with uow:
        latest = await uow.workflows.latest(team_id, key)
        if latest is None or latest.deleted:
            raise _not_found(key)
        return await uow.workflows.versions(team_id, key)


async def list_workflows(team_id: str, uow: MatcherUnitOfWork) -> list[Workflow]:
    async with uow:
        return await uow.workflows.all_latest(team_id)


async def match_event(
    event: event_pb2.Event,
    uow: MatcherUnitOfWork,
    segments_of: SegmentSource | None = None,
    workflows_of: WorkflowSource | None = None,
) -> list[Decision]:
    """Decide which workflows `event` starts (see `match_events`); its decisions."""
    decided = await match_events([event], uow, segments_of, workflows_of)
    return decided.get(event.event_id, [])


async def match_events(
    events: Sequence[event_pb2.Event],
    uow: MatcherUnitOfWork,
    segments_of: SegmentSource | None = None,
    workflows_of: WorkflowSource | None = None,
) -> dict[str, list[Decision]]:
    """Decide, once per event, which workflows run; request their runs and report the
    decisions: all of `events` in one transaction, in their order. The decisions of each event
    decided now, by event id.

    A redelivered event finds its claim already stored (with the messages its decisions
    published in the same transaction) and does nothing more. A system event from a run
    (depth > 0) that no workflow listens to is dropped without a trace: most are, and they are
    many.
    """
    decided: dict[str, list[Decision]] = {}
    triggers: dict[str, str] = {}
    async with uow:
        considered = []
        for event in events:
            workflows = await _considered(event, uow, workflows_of)
            # A run's system event nobody listens to: no trigger to track, nothing to remember.
            if workflows or not event.depth:
                considered.append((event, messages.matched_event(event), workflows))
        if not considered:
            return decided
        claimed = await uow.decisions.claim([matched for _, matched, _ in considered])
        stored: list[tuple[MatchedEvent, list[Decision]]] = []
        memberships: Memberships = {}
        # Contact by contact (each contact's events in the order they came): the membership and
        # cooldown rows they lock are then taken in one order by every batch of every replica.
        considered.sort(key=lambda each: (each[1].team_id, each[1].contact_id))
        for event, matched, workflows in considered:
            if matched.event_id not in claimed:
                log.info("match.already_decided", event_id=event.event_id)
                continue
            claimed.discard(matched.event_id)  # the same event twice in this batch is decided once
            matched = await _with_segments(event, matched, uow, segments_of, record=memberships)
            decisions = [await _claim_cooldown(d, matched, uow) for d in decide(matched, workflows)]
            decided[event.event_id] = decisions
            triggers[event.event_id] = event.trigger_id
            stored.append((matched, decisions))
            for decision in decisions:
                if decision.matched:
                    uow.publish(messages.run_start(decision, event))
            if event.depth:
                # The executor's system events become triggers of their own only when they matter.
                uow.publish(messages.system_trigger_record(event))
            uow.publish(messages.matched_record(matched, decisions, event.trigger_events))
        await uow.decisions.add(stored)
        await _record_memberships(memberships, uow)
        await uow.commit()
    for event_id, decisions in decided.items():
        log.info(
            "match.decided",
            event_id=event_id,
            trigger_id=triggers[event_id],
            matched=sum(d.matched for d in decisions),
            filtered=sum(not d.matched for d in decisions),
        )
    return decided


async def _considered(
    event: event_pb2.Event, uow: MatcherUnitOfWork, workflows_of: WorkflowSource | None = None
) -> list[Workflow]:
    """The workflows that consider `event`: those listening to its name or, for an event of a
    direct trigger, the one workflow it names (even if deleted since, so the reason is shown):
    from the cache like any other, or from the database when the cache does not have it."""
    if event.workflow_key:
        if workflows_of is not None:
            for listening in (await workflows_of(event.project_id)).values():
                for workflow in listening:
                    if workflow.key == event.workflow_key:
                        return [workflow]
        latest = await uow.workflows.latest(event.project_id, event.workflow_key)
        return [latest] if latest is not None else []
    if workflows_of is not None:
        return (await workflows_of(event.project_id)).get(event.name, [])
    return await uow.workflows.listening_to(event.project_id, event.name)


async def workflows_by_event(team_id: str, uow: MatcherUnitOfWork) -> dict[str, list[Workflow]]:
    """The latest version of each of the project's workflows (active or not), by the event it
    listens to, in key order."""
    async with uow:
        workflows = await uow.workflows.all_latest(team_id)
    by_event: dict[str, list[Workflow]] = {}
    for workflow in workflows:
        by_event.setdefault(workflow.definition.trigger_event, []).append(workflow)
    return by_event


async def dry_run(event: event_pb2.Event, uow: MatcherUnitOfWork) -> list[Decision]:
    """What `match_event` would decide for `event` now, changing nothing: the same filters and
    cooldown claims, in a transaction that is rolled back, with nothing published."""
    matched = messages.matched_event(event)
    async with uow:
        workflows = await _considered(event, uow)
        matched = await _with_segments(event, matched, uow, None, record=None)
        return [await _claim_cooldown(decision, matched, uow) for decision in decide(matched, workflows)]


# The segments each contact of a batch is in, as its last customer event says, with that event
# and the project's segments by key: (team, contact) -> (event, members, segments).
Memberships = dict[tuple[str, str], tuple[event_pb2.Event, frozenset[str], dict[str, Segment]]]


async def _with_segments(
    event: event_pb2.Event,
    matched: MatchedEvent,
    uow: MatcherUnitOfWork,
    segments_of: SegmentSource | None,
    *,
    record: Memberships | None,
) -> MatchedEvent:
    """`matched` with the segments its contact is in; with `record`, the membership is noted
    there, to be stored for the whole batch (`_record_memberships`)."""
    if not matched.contact_id:
        return matched
    segments = await segments_of(matched.team_id) if segments_of else await uow.segments.all(matched.team_id)
    if not segments:
        return matched
    contact = contact_document(event.contact)
    members = frozenset(segment.key for segment in segments if segment.holds_for(contact))
    if record is not None and not event.depth:
        # Only customers' events move membership: a run's system event carries the contact as it
        # was when the run started, which may be older than what was recorded since.
        record[(matched.team_id, matched.contact_id)] = (
            event,
            members,
            {segment.key: segment for segment in segments},
        )
    return replace(matched, segments=members)


async def _record_memberships(memberships: Memberships, uow: MatcherUnitOfWork) -> None:
    """Store the batch's memberships (two statements, whatever the number of contacts); a
    contact newly in a segment announces it (`herald.audience.entered`), once per batch."""
    if not memberships:
        return
    entered = await uow.segments.set_memberships(
        [(team_id, contact_id, members) for (team_id, contact_id), (_, members, _) in memberships.items()],
        utcnow(),
    )
    for team_id, contact_id, key in entered:
        event, _, segments = memberships[(team_id, contact_id)]
        uow.publish(messages.audience_entered(event, segments[key]))


async def put_segment(
    team_id: str, segment: Segment, uow: MatcherUnitOfWork, *, create_only: bool
) -> Segment:
    segment = validate_segment(replace(segment, team_id=team_id))
    async with uow:
        stored = await uow.segments.put(segment, replace=not create_only)
        if stored is None:
            raise AlreadyExists(
                f"Segment {segment.key!r} already exists: change it with PUT /api/v1/segments/{segment.key}",
                reason="SEGMENT_EXISTS",
                metadata={"key": segment.key},
            )
        await uow.commit()
    return stored


async def get_segment(team_id: str, key: str, uow: MatcherUnitOfWork) -> Segment:
    async with uow:
        segment = await uow.segments.get(team_id, key)
    if segment is None:
        raise NotFound(f"Segment {key!r} not found", reason="SEGMENT_NOT_FOUND", metadata={"key": key})
    return segment


async def list_segments(team_id: str, uow: MatcherUnitOfWork) -> list[Segment]:
    async with uow:
        return await uow.segments.all(team_id)


async def delete_segment(team_id: str, key: str, uow: MatcherUnitOfWork) -> None:
    async with uow:
        if not await uow.segments.delete(team_id, key):
            raise NotFound(f"Segment {key!r} not found", reason="SEGMENT_NOT_FOUND", metadata={"key": key})
        await uow.commit()


async def _claim_cooldown(decision: Decision, event: MatchedEvent, uow: MatcherUnitOfWork) -> Decision:
    """A matched workflow with a cooldown runs only if no run for this contact is within it."""
    period = decision.workflow.definition.filters.cooldown_period
    if not decision.matched or period is None:
        return decision
    now = utcnow()
    held_until = await uow.cooldowns.claim(
        event.team_id, decision.workflow.key, event.contact_id, now, now + period
    )
    return decision if held_until is None else in_cooldown(decision, held_until)
