"""The tracker's bus consumer: every tracking record, from the TRACKING stream.

A message is a TrackingBatch (what one transaction reported of one project) or, published before
batches, a TrackingRecord alone. A record that can never be applied (no trigger id, no kind) is
dead-lettered on its own: the other records of its batch are applied all the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import structlog

from herald.bus.v1 import tracking_pb2
from kernel.bus import BatchHandler, Delivery, Handler, PartlyPoison, Poison, PoisonPart, decode
from kernel.tracking import is_batch, record_subject
from services.tracker import handlers

DURABLE, FILTER = "tracker", "tracking.>"


def _problem(record: tracking_pb2.TrackingRecord) -> str | None:
    """Why the tracker can never apply `record`; None when it can."""
    if not record.trigger_id or record.WhichOneof("kind") is None:
        return "a tracking record needs a trigger id and a kind"
    try:
        uuid.UUID(record.trigger_id)
    except ValueError:
        return f"a tracking record's trigger id must be a UUID, not {record.trigger_id[:64]!r}"
    return None


def _read(delivery: Delivery) -> tuple[list[tracking_pb2.TrackingRecord], list[PoisonPart]]:
    """The records a message carries that can be applied, and those that never can (each as the
    message it would be alone). Poison when the message cannot be read at all."""
    if not is_batch(delivery.subject):
        record = decode(tracking_pb2.TrackingRecord, delivery)
        problem = _problem(record)
        if problem is not None:
            raise Poison(problem)
        return [record], []
    records: list[tracking_pb2.TrackingRecord] = []
    invalid: list[PoisonPart] = []
    for index, record in enumerate(decode(tracking_pb2.TrackingBatch, delivery).records):
        problem = _problem(record)
        if problem is None:
            records.append(record)
        else:
            subject = record_subject(delivery.project_id, record.WhichOneof("kind") or "record")
            reason = f"record {index} of the batch: {problem}"
            invalid.append(PoisonPart(index, subject, record.SerializeToString(), reason))
    return records, invalid


def tracking_handler(unit_of_work: Callable[[], handlers.TrackerUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        records, invalid = _read(delivery)
        # Left bound for the consumer's own lines about this message (each runs in its own task).
        structlog.contextvars.bind_contextvars(trigger_ids=sorted({record.trigger_id for record in records}))
        if records:
            await handlers.record_facts(records, unit_of_work())
        if invalid:
            raise PartlyPoison(invalid)

    return handle


def tracking_batch_handler(unit_of_work: Callable[[], handlers.TrackerUnitOfWork]) -> BatchHandler:
    """Every record of a fetch in one transaction: the facts of a busy trigger (a direct trigger
    of thousands of contacts) then take its lock once per fetch rather than once each. A fetch
    holding a record that can never be applied is handled again a message at a time (nothing of
    it is applied here), where that record is dead-lettered alone."""

    async def handle(deliveries: Sequence[Delivery]) -> None:
        records: list[tracking_pb2.TrackingRecord] = []
        for delivery in deliveries:
            good, invalid = _read(delivery)
            if invalid:
                raise Poison(f"a batch on {delivery.subject} holds records that can never be applied")
            records += good
        await handlers.record_facts(records, unit_of_work())

    return handle
