"""Ingest's bus messages: accepted events and their tracking records, as Protobuf."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from herald.bus.v1 import event_pb2, tracking_pb2
from kernel.bus import OutgoingMessage, event_subject
from kernel.clock import to_timestamp
from kernel.structs import to_struct
from kernel.tracking import tracking_message
from services.ingest.domain import AcceptedEvent, Contact, EventSource, TriggerRecord

# The source of the `herald.*` events ingest emits itself.
PLATFORM_SOURCE = EventSource(type="herald")
# The source of a direct workflow trigger's events.
API_SOURCE = EventSource(type="api")


def contact_snapshot(contact: Contact | None) -> event_pb2.Contact:
    if contact is None:
        return event_pb2.Contact()
    return event_pb2.Contact(
        id=str(contact.id),
        external_id=contact.external_id or "",
        email=contact.email or "",
        phone=contact.phone or "",
        name=contact.name or "",
        tags=list(contact.tags),
        custom_fields=to_struct(contact.custom_fields),
        topics=list(contact.topics),
    )


def event_message(event: AcceptedEvent) -> OutgoingMessage:
    message = event_pb2.Event(
        event_id=str(event.id),
        trigger_id=str(event.trigger_id),
        project_id=event.team_id,
        name=event.name,
        contact=contact_snapshot(event.contact),
        data=to_struct(event.data),
        variables=to_struct(event.variables),
        source=event_pb2.Source(
            type=event.source.type, ip=event.source.ip, user_agent=event.source.user_agent
        ),
        occurred_at=to_timestamp(event.occurred_at),
        accepted_at=to_timestamp(event.accepted_at),
    )
    if event.workflow_key:
        message.workflow_key = event.workflow_key
        message.trigger_events = event.trigger_events
    return OutgoingMessage(
        subject=event_subject(event.team_id, event.name),
        payload=message.SerializeToString(),
        msg_id=str(event.id),
        project_id=event.team_id,
    )


def accepted_record(event: AcceptedEvent) -> OutgoingMessage:
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(event.trigger_id),
        project_id=event.team_id,
        trigger_accepted=tracking_pb2.TriggerAccepted(
            event_id=str(event.id),
            event_name=event.name,
            contact_id=str(event.contact.id) if event.contact else "",
            created_at=to_timestamp(event.accepted_at),
        ),
    )
    if event.scheduled_for is not None:
        record.trigger_accepted.scheduled_for.CopyFrom(to_timestamp(event.scheduled_for))
    return tracking_message(record, fact_id=str(event.trigger_id))


def workflow_trigger_record(events: Sequence[AcceptedEvent]) -> OutgoingMessage:
    """The TriggerAccepted of a direct workflow trigger: one per trigger, counting its events
    (one per contact)."""
    first = events[0]
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(first.trigger_id),
        project_id=first.team_id,
        trigger_accepted=tracking_pb2.TriggerAccepted(
            event_id=str(first.id),
            event_name=first.name,
            created_at=to_timestamp(first.accepted_at),
            events=len(events),
            contacts=len(events),
        ),
    )
    return tracking_message(record, fact_id=str(first.trigger_id))


def fired_record(event: AcceptedEvent, at: datetime) -> OutgoingMessage:
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(event.trigger_id),
        project_id=event.team_id,
        trigger_fired=tracking_pb2.TriggerFired(fired_at=to_timestamp(at)),
    )
    return tracking_message(record, fact_id=str(event.trigger_id))


def cancelled_record(team_id: str, trigger: TriggerRecord) -> OutgoingMessage:
    assert trigger.finished_at is not None, "a cancelled trigger has its cancellation time"
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(trigger.id),
        project_id=team_id,
        trigger_cancelled=tracking_pb2.TriggerCancelled(cancelled_at=to_timestamp(trigger.finished_at)),
    )
    return tracking_message(record, fact_id=str(trigger.id))
