"""The matcher's use cases: keep workflow definitions, and decide which workflows an event starts."""

from __future__ import annotations

import uuid
from typing import Protocol

import structlog

from herald.bus.v1 import event_pb2
from kernel.clock import utcnow
from kernel.errors import AlreadyExists, NotFound
from kernel.unit_of_work import UnitOfWork
from services.matcher import messages
from services.matcher.domain import (
    Decision,
    MatchedEvent,
    Workflow,
    WorkflowDefinition,
    decide,
    validate_definition,
)

log = structlog.get_logger(__name__)


class WorkflowRepository(Protocol):
    async def latest(self, team_id: str, key: str) -> Workflow | None: ...

    async def all_latest(self, team_id: str) -> list[Workflow]: ...

    async def listening_to(self, team_id: str, event_name: str) -> list[Workflow]:
        """The latest version of every workflow whose trigger names `event_name`."""
        ...

    async def add(self, workflow: Workflow) -> None: ...


class DecisionRepository(Protocol):
    async def already_decided(self, event_id: uuid.UUID) -> bool: ...

    async def add(self, event: MatchedEvent, decisions: list[Decision]) -> None: ...


class MatcherUnitOfWork(UnitOfWork, Protocol):
    @property
    def workflows(self) -> WorkflowRepository: ...

    @property
    def decisions(self) -> DecisionRepository: ...


async def create_workflow(team_id: str, definition: WorkflowDefinition, uow: MatcherUnitOfWork) -> Workflow:
    definition = validate_definition(definition)
    async with uow:
        if await uow.workflows.latest(team_id, definition.key) is not None:
            raise AlreadyExists(
                f"Workflow {definition.key!r} already exists",
                reason="WORKFLOW_EXISTS",
                metadata={"key": definition.key},
            )
        workflow = Workflow(team_id=team_id, definition=definition, version=1, created_at=utcnow())
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def get_workflow(team_id: str, key: str, uow: MatcherUnitOfWork) -> Workflow:
    async with uow:
        workflow = await uow.workflows.latest(team_id, key)
    if workflow is None:
        raise NotFound(f"Workflow {key!r} not found", reason="WORKFLOW_NOT_FOUND", metadata={"key": key})
    return workflow


async def list_workflows(team_id: str, uow: MatcherUnitOfWork) -> list[Workflow]:
    async with uow:
        return await uow.workflows.all_latest(team_id)


async def match_event(event: event_pb2.Event, uow: MatcherUnitOfWork) -> list[Decision]:
    """Decide, once per event, which workflows run; request their runs and report the decisions.

    A redelivered event finds its decisions already stored (with the messages they published
    in the same transaction) and does nothing more.
    """
    matched = messages.matched_event(event)
    async with uow:
        if await uow.decisions.already_decided(matched.event_id):
            log.info("match.already_decided", event_id=event.event_id)
            return []
        workflows = await uow.workflows.listening_to(matched.team_id, matched.name)
        decisions = decide(matched, workflows)
        await uow.decisions.add(matched, decisions)
        for decision in decisions:
            if decision.matched:
                uow.publish(messages.run_start(decision, event))
        uow.publish(messages.matched_record(matched, decisions))
        await uow.commit()
    log.info(
        "match.decided",
        event_id=event.event_id,
        trigger_id=event.trigger_id,
        matched=sum(d.matched for d in decisions),
        filtered=sum(not d.matched for d in decisions),
    )
    return decisions
