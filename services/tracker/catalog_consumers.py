"""The catalog's bus consumer: every event on the EVENTS stream, customer and `herald.*` alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from herald.bus.v1 import event_pb2
from kernel.bus import BatchHandler, Delivery, Handler, Poison, decode
from kernel.clock import from_timestamp, utcnow
from kernel.structs import from_struct
from services.tracker import catalog_handlers
from services.tracker.catalog_handlers import CatalogUnitOfWork, ObservedEvent

DURABLE, FILTER = "tracker-catalog", "events.>"
# The source of an event that names none.
UNKNOWN_SOURCE = "unknown"


def user_info(contact: event_pb2.Contact) -> dict[str, Any]:
    """The contact snapshot an event carries, as the catalog's `user_info` section: the fields a
    sender gives in `user_info` (external id, email, phone, name, custom fields), those set."""
    info: dict[str, Any] = {
        key: value
        for key, value in (
            ("external_id", contact.external_id),
            ("email", contact.email),
            ("phone", contact.phone),
            ("name", contact.name),
        )
        if value
    }
    if contact.custom_fields.fields:
        info["custom_fields"] = from_struct(contact.custom_fields)
    return info


def observed(delivery: Delivery) -> ObservedEvent:
    event = decode(event_pb2.Event, delivery)
    if not event.event_id or not event.project_id or not event.name:
        raise Poison("an event needs an id, a project and a name")
    return ObservedEvent(
        team_id=event.project_id,
        event_id=event.event_id,
        name=event.name[:128],
        source=(event.source.type or UNKNOWN_SOURCE)[:64],
        accepted_at=from_timestamp(event.accepted_at) if event.HasField("accepted_at") else utcnow(),
        contact_id=event.contact.id or None,
        sections={
            "data": from_struct(event.data),
            "variables": from_struct(event.variables),
            "user_info": user_info(event.contact),
        },
    )


def catalog_handler(unit_of_work: Callable[[], CatalogUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        await catalog_handlers.record_events([observed(delivery)], unit_of_work())

    return handle


def catalog_batch_handler(unit_of_work: Callable[[], CatalogUnitOfWork]) -> BatchHandler:
    """A whole fetch in one transaction (see catalog_handlers.record_events)."""

    async def handle(deliveries: Sequence[Delivery]) -> None:
        await catalog_handlers.record_events([observed(d) for d in deliveries], unit_of_work())

    return handle
