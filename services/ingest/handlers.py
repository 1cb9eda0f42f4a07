"""Ingest's use cases, as plain functions over a unit of work."""

from __future__ import annotations

import uuid
from typing import Protocol

from kernel.clock import utcnow
from kernel.errors import NotFound
from kernel.event_names import validate_customer_event_name
from kernel.unit_of_work import UnitOfWork
from services.ingest import messages
from services.ingest.domain import (
    AcceptedEvent,
    Contact,
    EventQueued,
    SendEvent,
    TriggerRecord,
    UserInfo,
    new_contact,
    normalize_email,
    updated_contact,
)

QUEUED_MESSAGE = "Event queued successfully"


class ContactRepository(Protocol):
    async def by_external_id(self, team_id: str, external_id: str) -> Contact | None: ...

    async def by_email(self, team_id: str, email: str) -> Contact | None: ...

    async def add(self, contact: Contact) -> Contact:
        """Store a new contact; when another request created the same identity first, update and
        return that one instead."""
        ...

    async def update(self, contact: Contact) -> Contact:
        """Store what changed of a contact found earlier (same id)."""
        ...


class EventRepository(Protocol):
    async def add(self, event: AcceptedEvent) -> None: ...

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None: ...


class IngestUnitOfWork(UnitOfWork, Protocol):
    @property
    def contacts(self) -> ContactRepository: ...

    @property
    def events(self) -> EventRepository: ...


async def send_event(command: SendEvent, uow: IngestUnitOfWork) -> EventQueued:
    """Store the event and its trigger, queue the event for matching, and say how to track it."""
    name = validate_customer_event_name(command.event_name)
    now = utcnow()
    async with uow:
        contact = await resolve_contact(command.team_id, command.user_info, uow.contacts)
        event = AcceptedEvent(
            id=uuid.uuid4(),
            trigger_id=uuid.uuid4(),
            team_id=command.team_id,
            name=name,
            contact=contact,
            data=command.event_data,
            variables=command.variables,
            source=command.source,
            occurred_at=now,
            accepted_at=now,
        )
        await uow.events.add(event)
        uow.publish(messages.event_message(event))
        uow.publish(messages.accepted_record(event))
        receipts = await uow.commit()
    sequence = receipts.get(str(event.id))
    return EventQueued(
        trigger_id=event.trigger_id,
        event_id=event.id,
        job_id=str(sequence) if sequence is not None else "",
        message=QUEUED_MESSAGE,
    )


async def resolve_contact(team_id: str, info: UserInfo, contacts: ContactRepository) -> Contact | None:
    """The contact an event is about: by external id, then by normalized email; created if new.

    Known contacts are updated with what the event says about them. An event that identifies
    nobody is about no contact.
    """
    if not info.identifies_someone:
        return None
    found = None
    if info.external_id:
        found = await contacts.by_external_id(team_id, info.external_id)
    if found is None and info.email:
        by_email = await contacts.by_email(team_id, normalize_email(info.email))
        if by_email is not None and (not info.external_id or by_email.external_id is None):
            found = by_email
    if found is None:
        return await contacts.add(new_contact(team_id, info))
    contact = updated_contact(found, info)
    if contact == found:
        return found
    return await contacts.update(contact)


async def get_trigger_record(team_id: str, trigger_id: str, uow: IngestUnitOfWork) -> TriggerRecord:
    try:
        parsed = uuid.UUID(trigger_id)
    except ValueError:
        raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND") from None
    async with uow:
        record = await uow.events.trigger(team_id, parsed)
    if record is None:
        raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id})
    return record
