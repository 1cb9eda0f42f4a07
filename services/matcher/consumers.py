"""The matcher's bus consumer: every accepted event, from the EVENTS stream."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from herald.bus.v1 import event_pb2
from kernel.bus import Delivery, Handler, decode
from services.matcher import handlers

DURABLE = "matcher"
FILTER = "events.>"


def event_handler(unit_of_work: Callable[[], handlers.MatcherUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        event = decode(event_pb2.Event, delivery)
        with structlog.contextvars.bound_contextvars(event_id=event.event_id, trigger_id=event.trigger_id):
            await handlers.match_event(event, unit_of_work())

    return handle
