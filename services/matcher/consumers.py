"""The matcher's bus consumer: every accepted event, from the EVENTS stream."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from herald.bus.v1 import event_pb2
from kernel.bus import Delivery, Handler, decode
from kernel.cache import TtlCache
from services.matcher import handlers

DURABLE = "matcher"
FILTER = "events.>"


# How long the matcher trusts its list of the event names a project's workflows listen to.
LISTENED_SECONDS = 1.0


def listened_cache(unit_of_work: Callable[[], handlers.MatcherUnitOfWork]) -> TtlCache[str, frozenset[str]]:
    """The event names each project's workflows listen to, as of at most LISTENED_SECONDS ago
    (this process forgets a project's entry when it changes one of its workflows)."""
    return TtlCache(LISTENED_SECONDS, lambda team_id: handlers.listened_events(team_id, unit_of_work()))


def event_handler(
    unit_of_work: Callable[[], handlers.MatcherUnitOfWork], listened: TtlCache[str, frozenset[str]]
) -> Handler:
    async def handle(delivery: Delivery) -> None:
        event = decode(event_pb2.Event, delivery)
        if event.depth and event.name not in await listened.get(event.project_id):
            return  # most of the system events runs emit: nobody listens, so nothing to decide
        with structlog.contextvars.bound_contextvars(event_id=event.event_id, trigger_id=event.trigger_id):
            await handlers.match_event(event, unit_of_work())

    return handle
