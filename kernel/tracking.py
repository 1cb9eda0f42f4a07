"""Tracking records: the facts every service reports about a trigger, for the tracker."""

from __future__ import annotations

from herald.bus.v1 import tracking_pb2
from kernel.bus import OutgoingMessage
from kernel.clock import to_timestamp, utcnow


def tracking_message(record: tracking_pb2.TrackingRecord, fact_id: str) -> OutgoingMessage:
    """The bus message for `record`; `fact_id` names the fact, so a republish is dropped."""
    kind = record.WhichOneof("kind")
    if kind is None:
        raise ValueError("a tracking record needs a kind")
    if not record.HasField("recorded_at"):
        record.recorded_at.CopyFrom(to_timestamp(utcnow()))
    return OutgoingMessage(
        subject=f"tracking.{record.project_id}.{kind}",
        payload=record.SerializeToString(),
        msg_id=f"{kind}:{fact_id}",
        project_id=record.project_id,
    )
