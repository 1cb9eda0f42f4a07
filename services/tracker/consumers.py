"""The tracker's bus consumer: every tracking record, from the TRACKING stream."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import structlog

from herald.bus.v1 import tracking_pb2
from kernel.bus import BatchHandler, Delivery, Handler, Poison, decode
from services.tracker import handlers

DURABLE, FILTER = "tracker", "tracking.>"


def _record(delivery: Delivery) -> tracking_pb2.TrackingRecord:
    record = decode(tracking_pb2.TrackingRecord, delivery)
    if not record.trigger_id or record.WhichOneof("kind") is None:
        raise Poison("a tracking record needs a trigger id and a kind")
    try:
        uuid.UUID(record.trigger_id)
    except ValueError:
        raise Poison(
            f"a tracking record's trigger id must be a UUID, not {record.trigger_id[:64]!r}"
        ) from None
    return record


def tracking_handler(unit_of_work: Callable[[], handlers.TrackerUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        record = _record(delivery)
        # Left bound for the consumer's own lines about this message (each runs in its own task).
        structlog.contextvars.bind_contextvars(trigger_id=record.trigger_id)
        await handlers.record_fact(record, unit_of_work())

    return handle


def tracking_batch_handler(unit_of_work: Callable[[], handlers.TrackerUnitOfWork]) -> BatchHandler:
    """Every record of a fetch in one transaction: the facts of a busy trigger (a direct trigger
    of thousands of contacts) then take its lock once per fetch rather than once each."""

    async def handle(deliveries: Sequence[Delivery]) -> None:
        await handlers.record_facts([_record(delivery) for delivery in deliveries], unit_of_work())

    return handle
