"""The tracker's bus consumer: every tracking record, from the TRACKING stream."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from herald.bus.v1 import tracking_pb2
from kernel.bus import Delivery, Handler, Poison, decode
from services.tracker import handlers

DURABLE, FILTER = "tracker", "tracking.>"


def tracking_handler(unit_of_work: Callable[[], handlers.TrackerUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        record = decode(tracking_pb2.TrackingRecord, delivery)
        if not record.trigger_id or record.WhichOneof("kind") is None:
            raise Poison("a tracking record needs a trigger id and a kind")
        with structlog.contextvars.bound_contextvars(trigger_id=record.trigger_id):
            await handlers.record_fact(record, unit_of_work())

    return handle
