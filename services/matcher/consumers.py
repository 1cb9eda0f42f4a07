"""The matcher's bus consumer: every accepted event, from the EVENTS stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from herald.bus.v1 import event_pb2
from kernel.bus import BatchHandler, Delivery, Handler, decode
from kernel.cache import TtlCache
from services.matcher import handlers
from services.matcher.domain import Segment, Workflow

DURABLE = "matcher"
FILTER = "events.>"


# How long the matcher trusts what it remembers of a project's workflows and segments.
PROJECT_SECONDS = 1.0


@dataclass
class ProjectCaches:
    """What the matcher reads for every event but rarely changes, per project, as of at most
    PROJECT_SECONDS ago: its workflows (by the event they listen to) and its segments. This
    process forgets a project's entries as soon as it changes one of its workflows or segments."""

    workflows: TtlCache[str, dict[str, list[Workflow]]]
    segments: TtlCache[str, list[Segment]]

    @classmethod
    def over(cls, unit_of_work: Callable[[], handlers.MatcherUnitOfWork]) -> ProjectCaches:
        return cls(
            TtlCache(PROJECT_SECONDS, lambda team_id: handlers.workflows_by_event(team_id, unit_of_work())),
            TtlCache(PROJECT_SECONDS, lambda team_id: handlers.list_segments(team_id, unit_of_work())),
        )

    def forget(self, team_id: str) -> None:
        self.workflows.forget(team_id)
        self.segments.forget(team_id)

    async def listened(self, team_id: str, event_name: str) -> bool:
        """Whether an active workflow of the project listens to `event_name`."""
        listening = (await self.workflows.get(team_id)).get(event_name, [])
        return any(workflow.definition.active for workflow in listening)


def event_handler(unit_of_work: Callable[[], handlers.MatcherUnitOfWork], caches: ProjectCaches) -> Handler:
    async def handle(delivery: Delivery) -> None:
        event = decode(event_pb2.Event, delivery)
        if event.depth and not await caches.listened(event.project_id, event.name):
            return  # most of the system events runs emit: nobody listens, so nothing to decide
        # Left bound for the consumer's own lines about this message (each runs in its own task).
        structlog.contextvars.bind_contextvars(event_id=event.event_id, trigger_id=event.trigger_id)
        await handlers.match_event(event, unit_of_work(), caches.segments.get, caches.workflows.get)

    return handle


def event_batch_handler(
    unit_of_work: Callable[[], handlers.MatcherUnitOfWork], caches: ProjectCaches
) -> BatchHandler:
    """Every event of a fetch decided in one transaction (one claim, one insert of decisions,
    one of outgoing messages), the system events nobody listens to left out first."""

    async def handle(deliveries: Sequence[Delivery]) -> None:
        events = []
        for delivery in deliveries:
            event = decode(event_pb2.Event, delivery)
            if not event.depth or await caches.listened(event.project_id, event.name):
                events.append(event)
        if events:
            await handlers.match_events(events, unit_of_work(), caches.segments.get, caches.workflows.get)

    return handle
