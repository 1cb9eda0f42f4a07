"""Events and contacts as templates, conditions and segments read them: plain JSON documents."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from herald.bus.v1 import event_pb2
from kernel.clock import from_timestamp, isoformat_ms
from kernel.structs import from_struct


def contact_document(contact: event_pb2.Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "external_id": contact.external_id,
        "email": contact.email,
        "phone": contact.phone,
        "name": contact.name,
        "tags": list(contact.tags),
        "topics": list(contact.topics),
        "custom_fields": from_struct(contact.custom_fields),
    }


def event_document(event: event_pb2.Event) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "name": event.name,
        "data": from_struct(event.data),
        "source": {"type": event.source.type, "ip": event.source.ip, "user_agent": event.source.user_agent},
        "occurred_at": isoformat_ms(from_timestamp(event.occurred_at))
        if event.HasField("occurred_at")
        else "",
        "accepted_at": isoformat_ms(from_timestamp(event.accepted_at))
        if event.HasField("accepted_at")
        else "",
        "depth": event.depth,
    }


def _iso(stamp: Timestamp) -> str:
    return isoformat_ms(from_timestamp(stamp))


def condition_data(event: event_pb2.Event) -> dict[str, Any]:
    """What a condition reads: `event`, `contact` and `variables`."""
    return {
        "event": event_document(event),
        "contact": contact_document(event.contact),
        "variables": from_struct(event.variables),
    }
