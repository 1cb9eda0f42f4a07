"""Ingest's use cases, as plain functions over a unit of work and the project's policy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from herald.bus.v1 import event_pb2
from herald.matcher.v1 import matcher_pb2
from kernel.bus import OutgoingMessage
from kernel.clock import utcnow
from kernel.conditions import contact_in_segment
from kernel.cursors import decode_cursor
from kernel.documents import contact_document
from kernel.errors import Conflict, HeraldError, InvalidArgument, NotFound, PayloadTooLarge, Unprocessable
from kernel.event_names import validate_customer_event_name
from kernel.outbox import Receipts
from kernel.policy import PolicyChange, ProjectPolicy
from kernel.unit_of_work import UnitOfWork
from services.ingest import messages
from services.ingest.domain import (
    MAX_BATCH,
    MAX_EXTERNAL_ID,
    MAX_NAME,
    MAX_TRIGGER_CONTACTS,
    WORKFLOW_TRIGGERED,
    AcceptedEvent,
    Contact,
    EventQueued,
    EventType,
    IdempotencyRecord,
    RateState,
    Recipient,
    SendEvent,
    TriggerRecord,
    TriggerStatus,
    TriggerWorkflow,
    UserInfo,
    WorkflowTriggered,
    check_external_id,
    check_idempotency_key,
    check_payload,
    check_source,
    check_tags,
    check_text,
    check_topic,
    json_size,
    new_contact,
    normalize_email,
    normalize_phone,
    normalized_user_info,
    parse_contact_id,
    parse_occurred_at,
    parse_trigger_at,
    queued_message,
    updated_contact,
)

log = structlog.get_logger(__name__)
CONTACT_CREATED = "herald.contact.created"
TOPIC_SUBSCRIBED = "herald.topic.subscribed"
BATCH_CONCURRENCY = 8


class ContactResolver(Protocol):
    """What resolving an event's contact needs of the contacts."""

    async def by_id(self, team_id: str, contact_id: uuid.UUID) -> Contact | None: ...

    async def by_external_id(
        self, team_id: str, external_id: str, *, lock: bool = False
    ) -> Contact | None: ...

    async def by_email(self, team_id: str, email: str) -> Contact | None: ...

    async def add(self, contact: Contact) -> tuple[Contact, bool]:
        """Store a new contact; when another request created the same identity first, update and
        return that one instead. The flag says whether this call created it."""
        ...

    async def update(self, contact: Contact) -> Contact:
        """Store what changed of a contact found earlier (same id)."""
        ...


class ContactRepository(ContactResolver, Protocol):
    async def erase(self, contact: Contact) -> dict[str, int]:
        """Delete the contact and every row of this service that holds its personal data; how
        many rows went, by table ("ingest.events")."""
        ...

    async def named(
        self, team_id: str, ids: Sequence[uuid.UUID], external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        """The contacts with any of these ids, external ids or emails, in one query."""
        ...

    async def page(self, team_id: str, after: uuid.UUID | None, limit: int) -> list[Contact]:
        """Up to `limit` of the team's contacts, by id, after `after`."""
        ...

    async def search(
        self, team_id: str, prefix: str, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[Contact]:
        """Up to `limit` of the team's contacts whose external id starts with `prefix` or whose
        email starts with it lowercased (every contact for an empty prefix), newest first by
        (created_at, id), strictly after `after`."""
        ...


class EventWriter(Protocol):
    """What accepting an event needs of the events."""

    async def add(self, event: AcceptedEvent) -> None: ...

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None: ...


class EventRepository(EventWriter, Protocol):
    async def add_trigger(self, events: Sequence[AcceptedEvent]) -> None:
        """Store the events of one direct trigger, and the trigger."""
        ...

    async def cancel(self, team_id: str, trigger_id: uuid.UUID, now: datetime) -> TriggerRecord | None:
        """Mark a scheduled trigger cancelled at `now`; None when it is not (or no longer) scheduled."""
        ...

    async def claim_due(self, now: datetime, limit: int) -> list[AcceptedEvent]:
        """Scheduled events due at `now`, locked (SKIP LOCKED) and marked queued."""
        ...

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Delete up to `limit` of the team's events accepted before `before` (never one still
        scheduled) and their triggers; how many rows went, by table."""
        ...


class KeyClaims(Protocol):
    async def claim(
        self, team_id: str, key: str, fingerprint: str, trigger_id: uuid.UUID, expires_at: datetime
    ) -> IdempotencyRecord | None:
        """Claim `key` for a new event; the earlier claim still in force when there is one.

        A claim racing another transaction's waits for it to commit or roll back."""
        ...


class IdempotencyRepository(KeyClaims, Protocol):
    async def purge_expired(self, team_id: str, now: datetime, limit: int) -> int: ...


class EventTypeCheck(Protocol):
    async def catalogue(self, team_id: str, name: str) -> None: ...

    async def exists(self, team_id: str, name: str) -> bool: ...


class EventTypeRepository(EventTypeCheck, Protocol):
    async def register(self, team_id: str, name: str, description: str) -> EventType: ...

    async def list(self, team_id: str) -> list[EventType]: ...

    async def delete(self, team_id: str, name: str) -> bool: ...


class PolicyRepository(Protocol):
    async def get(self, team_id: str) -> ProjectPolicy: ...

    async def update(self, team_id: str, change: PolicyChange) -> ProjectPolicy: ...


class IngestUnitOfWork(UnitOfWork, Protocol):
    @property
    def contacts(self) -> ContactRepository: ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def event_types(self) -> EventTypeRepository: ...

    @property
    def policies(self) -> PolicyRepository: ...


class AcceptingUnitOfWork(Protocol):
    """What accepting one event needs of its unit of work: a transaction of its own
    (IngestUnitOfWork) or its share of a group's (services.ingest.groups)."""

    @property
    def contacts(self) -> ContactResolver: ...

    @property
    def events(self) -> EventWriter: ...

    @property
    def idempotency(self) -> KeyClaims: ...

    @property
    def event_types(self) -> EventTypeCheck: ...

    def publish(self, message: OutgoingMessage) -> None: ...


class PolicySource(Protocol):
    """Each project's policy, as fresh as a second."""

    async def get(self, team_id: str) -> ProjectPolicy: ...


class RateLimiter(Protocol):
    async def consume(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        """Count `count` events against the project's hourly `limit`, shared by every replica;
        ResourceExhausted (with Retry-After) when that would exceed it."""
        ...


class EventGroups(Protocol):
    """Accepts events in groups: one transaction for many concurrent events (group commit)."""

    async def submit(self, draft: Draft) -> EventQueued: ...


@dataclass(frozen=True)
class Intake:
    """What accepting an event needs besides its unit of work."""

    unit_of_work: Callable[[], IngestUnitOfWork]
    policies: PolicySource
    rates: RateLimiter
    # When set, events are stored in groups (services.ingest.groups); otherwise each alone.
    groups: EventGroups | None = None


@dataclass(frozen=True)
class Draft:
    """An event that passed every check that needs no storage; its contact is not resolved yet."""

    command: SendEvent
    event: AcceptedEvent
    info: UserInfo
    contact_id: uuid.UUID | None
    policy: ProjectPolicy
    fingerprint: str


async def send_event(command: SendEvent, intake: Intake) -> EventQueued:
    """Check the event against the rules and the project's policy, then store it and its trigger
    and queue it for matching (or hold it until trigger_at), in one transaction."""
    draft = await prepare(command, intake.policies)
    if intake.groups is not None:
        return await intake.groups.submit(draft)
    return await store_alone(draft, intake)


async def prepare(command: SendEvent, policies: PolicySource) -> Draft:
    """Every check of an event that needs no storage: its name, times, identity, source, key and
    size against the project's policy."""
    name = validate_customer_event_name(command.event_name)
    now = utcnow()
    scheduled_for = parse_trigger_at(command.trigger_at, now)
    occurred_at = parse_occurred_at(command.occurred_at, now)
    contact_id = parse_contact_id(command.contact_id)
    info = normalized_user_info(command.user_info, command.dialect)
    source = check_source(command.source)
    key = check_idempotency_key(command.idempotency_key)
    policy = await policies.get(command.team_id)
    check_payload(command.payload_bytes(), policy.event_payload_limit_bytes)
    event = AcceptedEvent(
        id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id=command.team_id,
        name=name,
        contact=None,
        data=command.event_data,
        variables=command.variables,
        source=source,
        occurred_at=occurred_at,
        accepted_at=now,
        scheduled_for=scheduled_for,
        idempotency_key=key or None,
    )
    return Draft(command, event, info, contact_id, policy, command.fingerprint() if key else "")


async def store_alone(draft: Draft, intake: Intake) -> EventQueued:
    """Store one prepared event in a transaction of its own."""
    async with intake.unit_of_work() as uow:
        queued = await accept(draft, uow, intake.rates)
        if queued.replayed:
            return queued
        receipts = await uow.commit()
    return with_receipt(queued, receipts)


def with_receipt(queued: EventQueued, receipts: Receipts) -> EventQueued:
    """`queued` with its job id: the stream sequence of its event message, when it was published."""
    sequence = receipts.get(str(queued.event_id))
    return replace(queued, job_id=str(sequence)) if sequence is not None else queued


async def accept(draft: Draft, uow: AcceptingUnitOfWork, rates: RateLimiter) -> EventQueued:
    """Inside `uow`'s transaction: claim the idempotency key (or answer the earlier request),
    catalogue or check the event type, resolve the contact, count the event against the rate
    limit, then store the event and its trigger and stage its messages. The caller commits."""
    command, event, policy = draft.command, draft.event, draft.policy
    team_id, now, key = event.team_id, event.accepted_at, event.idempotency_key
    if key:
        expires_at = now + policy.idempotency_period
        earlier = await uow.idempotency.claim(team_id, key, draft.fingerprint, event.trigger_id, expires_at)
        if earlier is not None:
            return await _replay(command, draft.fingerprint, earlier, uow)
    await _check_event_type(team_id, event.name, policy, uow)
    contact = await _event_contact(team_id, draft.contact_id, draft.info, now, uow)
    # Only events that passed every check count against the project's hourly limit.
    limit = policy.effective_rate_limit
    rate = await rates.consume(team_id, limit, 1, now) if limit else None
    event = replace(event, contact=contact)
    await uow.events.add(event)
    if event.scheduled_for is None:
        uow.publish(messages.event_message(event))
    uow.publish(messages.accepted_record(event))
    return EventQueued(
        trigger_id=event.trigger_id,
        event_id=event.id,
        job_id="",
        message=queued_message(event.scheduled_for),
        scheduled_for=event.scheduled_for,
        contact_id=contact.id if contact else None,
        event_name=event.name,
        occurred_at=event.occurred_at,
        accepted_at=now,
        rate=rate,
    )


async def _replay(
    command: SendEvent, fingerprint: str, earlier: IdempotencyRecord, uow: AcceptingUnitOfWork
) -> EventQueued:
    """The answer of the earlier request with this key (replays do not count against the rate limit)."""
    record = await _earlier_trigger(command.team_id, command.idempotency_key, fingerprint, earlier, uow)
    return EventQueued(
        trigger_id=record.id,
        event_id=record.event_id,
        job_id="",
        message=queued_message(record.scheduled_for),
        scheduled_for=record.scheduled_for,
        contact_id=record.contact_id,
        event_name=record.event_name,
        occurred_at=record.occurred_at,
        accepted_at=record.created_at,
        replayed=True,
    )


async def _earlier_trigger(
    team_id: str, key: str, fingerprint: str, earlier: IdempotencyRecord, uow: AcceptingUnitOfWork
) -> TriggerRecord:
    """The trigger of the earlier request with idempotency key `key`, if it was the same request."""
    if earlier.fingerprint != fingerprint:
        raise Unprocessable(
            "idempotency_key was already used for a different request: send the same body to "
            "replay it, or use a new key",
            reason="IDEMPOTENCY_KEY_REUSED",
            metadata={"idempotency_key": key},
        )
    record = await uow.events.trigger(team_id, earlier.trigger_id)
    if record is None:
        # The earlier trigger was purged (retention shorter than the idempotency window).
        raise Conflict(
            "idempotency_key belongs to a trigger that no longer exists; use a new key",
            reason="IDEMPOTENCY_KEY_EXPIRED",
        )
    return record


async def _check_event_type(team_id: str, name: str, policy: ProjectPolicy, uow: AcceptingUnitOfWork) -> None:
    if policy.unknown_events == "accept":
        await uow.event_types.catalogue(team_id, name)
    elif not await uow.event_types.exists(team_id, name):
        raise NotFound(
            "Event type not found",
            reason="EVENT_TYPE_NOT_FOUND",
            metadata={"event_name": name, "hint": "register it with POST /api/v1/event-types"},
        )


async def _event_contact(
    team_id: str, contact_id: uuid.UUID | None, info: UserInfo, now: datetime, uow: AcceptingUnitOfWork
) -> Contact | None:
    if contact_id is not None:
        found = await uow.contacts.by_id(team_id, contact_id)
        if found is None:
            raise NotFound(
                "Contact not found", reason="CONTACT_NOT_FOUND", metadata={"contact_id": str(contact_id)}
            )
        return await _updated(found, info, uow)
    return await resolve_contact(team_id, info, now, uow)


async def _updated(found: Contact, info: UserInfo, uow: AcceptingUnitOfWork) -> Contact:
    contact = updated_contact(found, info)
    if contact.same_profile(found):
        return found
    return await uow.contacts.update(contact)


async def resolve_contact(
    team_id: str, info: UserInfo, now: datetime, uow: AcceptingUnitOfWork
) -> Contact | None:
    """The contact a (normalized) `info` is about: by external id, then by normalized email;
    created if new (announcing `herald.contact.created`). Known contacts are updated with what
    the event says about them. An event that identifies nobody is about no contact.
    """
    if not info.identifies_someone:
        return None
    found = await _find_contact(team_id, info, uow.contacts)
    if found is not None:
        return await _updated(found, info, uow)
    contact, created = await uow.contacts.add(new_contact(team_id, info))
    if created:
        await emit_system_event(CONTACT_CREATED, contact, {"contact_id": str(contact.id)}, now, uow)
    return contact


async def _find_contact(team_id: str, info: UserInfo, contacts: ContactResolver) -> Contact | None:
    """The known contact `info` names: by external id, then by normalized email (unless that
    contact has another external id)."""
    found = await contacts.by_external_id(team_id, info.external_id) if info.external_id else None
    if found is None and info.email:
        by_email = await contacts.by_email(team_id, info.email)
        if by_email is not None and (not info.external_id or by_email.external_id is None):
            found = by_email
    return found


async def emit_system_event(
    name: str, contact: Contact, data: dict[str, Any], now: datetime, uow: AcceptingUnitOfWork
) -> AcceptedEvent:
    """Store and queue a `herald.*` event about `contact`, with its own trigger to track."""
    event = AcceptedEvent(
        id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id=contact.team_id,
        name=name,
        contact=contact,
        data=data,
        variables={},
        source=messages.PLATFORM_SOURCE,
        occurred_at=now,
        accepted_at=now,
    )
    await uow.events.add(event)
    uow.publish(messages.event_message(event))
    uow.publish(messages.accepted_record(event))
    return event


class WorkflowMatcher(Protocol):
    async def dry_run(self, event: event_pb2.Event) -> list[matcher_pb2.WorkflowMatch]:
        """Which workflows `event` would run, and why the others would not."""
        ...


@dataclass(frozen=True)
class MatchPreview:
    """The answer of a dry run: the contact the event would be about, and each workflow's fate."""

    event_name: str
    contact: Contact | None
    known_contact: bool
    workflows: list[matcher_pb2.WorkflowMatch]


async def preview_match(
    command: SendEvent, policies: PolicySource, uow: IngestUnitOfWork, matcher: WorkflowMatcher
) -> MatchPreview:
    """Validate the event as `send_event` would, find its contact without creating or changing
    it, and ask the matcher what would run. Nothing is stored or sent."""
    draft = await prepare(command, policies)
    async with uow:
        if draft.policy.unknown_events == "reject":  # only checks: "accept" would catalogue the name
            await _check_event_type(draft.event.team_id, draft.event.name, draft.policy, uow)
        contact, known = await _contact_as_sent(draft, uow)
    event = replace(draft.event, contact=contact)
    workflows = await matcher.dry_run(event_pb2.Event.FromString(messages.event_message(event).payload))
    return MatchPreview(event.name, contact, known, workflows)


async def _contact_as_sent(draft: Draft, uow: IngestUnitOfWork) -> tuple[Contact | None, bool]:
    """The contact as the event would leave it, and whether it exists already."""
    team_id, info = draft.event.team_id, draft.info
    if draft.contact_id is not None:
        found = await uow.contacts.by_id(team_id, draft.contact_id)
        if found is None:
            raise NotFound(
                "Contact not found",
                reason="CONTACT_NOT_FOUND",
                metadata={"contact_id": str(draft.contact_id)},
            )
        return updated_contact(found, info), True
    if not info.identifies_someone:
        return None, False
    found = await _find_contact(team_id, info, uow.contacts)
    if found is not None:
        return updated_contact(found, info), True
    return new_contact(team_id, info), False


async def send_batch(commands: Sequence[SendEvent], intake: Intake) -> list[EventQueued | HeraldError]:
    """Accept each event on its own: one bad event does not sink the others."""
    if not commands:
        raise InvalidArgument("A batch needs at least one event in 'events'", reason="EMPTY_BATCH")
    if len(commands) > MAX_BATCH:
        raise InvalidArgument(
            f"A batch holds at most {MAX_BATCH} events; this one has {len(commands)}",
            reason="BATCH_TOO_LARGE",
            metadata={"events": str(len(commands))},
        )
    # Grouped, the whole batch goes to the group at once; alone, a few transactions at a time.
    gate = asyncio.Semaphore(len(commands) if intake.groups is not None else BATCH_CONCURRENCY)

    async def one(command: SendEvent) -> EventQueued | HeraldError:
        async with gate:
            try:
                return await send_event(command, intake)
            except HeraldError as error:
                return error

    return list(await asyncio.gather(*(one(command) for command in commands)))


async def cancel_trigger(team_id: str, trigger_id: str, uow: IngestUnitOfWork) -> TriggerRecord:
    """Cancel a scheduled trigger that has not fired yet."""
    parsed = _trigger_uuid(trigger_id)
    async with uow:
        cancelled = await uow.events.cancel(team_id, parsed, utcnow())
        if cancelled is None:
            current = await uow.events.trigger(team_id, parsed)
            if current is None:
                raise NotFound(
                    "Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id}
                )
            if current.status == TriggerStatus.CANCELLED:
                return current
            raise Conflict(
                f"Trigger {trigger_id} is not scheduled (it has fired or was never scheduled): "
                "only a scheduled trigger can be cancelled",
                reason="TRIGGER_NOT_SCHEDULED",
                metadata={"trigger_id": trigger_id},
            )
        uow.publish(messages.cancelled_record(team_id, cancelled))
        await uow.commit()
    return cancelled


async def fire_due(uow: IngestUnitOfWork, limit: int = 200) -> int:
    """Queue every scheduled event whose time has come; any replica may run this, none twice."""
    now = utcnow()
    async with uow:
        due = await uow.events.claim_due(now, limit)
        for event in due:
            uow.publish(messages.event_message(event))
            uow.publish(messages.fired_record(event, now))
        await uow.commit()
    return len(due)


def _trigger_uuid(trigger_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(trigger_id)
    except ValueError:
        raise NotFound(
            "Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id[:64]}
        ) from None


async def get_trigger_record(team_id: str, trigger_id: str, uow: IngestUnitOfWork) -> TriggerRecord:
    parsed = _trigger_uuid(trigger_id)
    async with uow:
        record = await uow.events.trigger(team_id, parsed)
    if record is None:
        raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id})
    return record


# Direct workflow triggers


class WorkflowDirectory(Protocol):
    """What a direct trigger needs to know from the matcher, asked with the caller's credentials."""

    async def workflow_active(self, key: str) -> bool:
        """Whether the workflow is active; NotFound when the project has no such workflow."""
        ...

    async def segment_condition(self, key: str) -> str:
        """The segment's condition; NotFound when the project has no such segment."""
        ...


# Contacts read at a time while finding a segment's members.
SEGMENT_PAGE = 1000
# A trigger's data and variables are copied into each of its events: in all, at most this much.
MAX_TRIGGER_BYTES = 64 * 1024 * 1024
# How many unknown contacts an error lists.
SHOWN_UNKNOWN = 5


async def trigger_workflow(
    command: TriggerWorkflow, intake: Intake, directory: WorkflowDirectory
) -> WorkflowTriggered:
    """Run one workflow for the listed contacts, or the members of a segment, as one trigger:
    one event per contact (named `herald.workflow.triggered`, considered by that workflow alone,
    whose filters still apply), stored with the trigger and queued in one transaction."""
    team_id = command.team_id
    recipients = _checked_recipients(command)
    key = check_idempotency_key(command.idempotency_key)
    policy = await intake.policies.get(team_id)
    check_payload(
        command.payload_bytes(), policy.event_payload_limit_bytes, "The trigger's data and variables"
    )
    now, trigger_id = utcnow(), uuid.uuid4()
    async with intake.unit_of_work() as uow:
        # The key first: the same request again answers its trigger even if the workflow or
        # segment has changed since.
        if key:
            fingerprint = command.fingerprint()
            expires_at = now + policy.idempotency_period
            earlier = await uow.idempotency.claim(team_id, key, fingerprint, trigger_id, expires_at)
            if earlier is not None:
                return await _trigger_replay(command, fingerprint, earlier, uow)
        if not await directory.workflow_active(command.workflow_key):
            raise Conflict(
                f'Workflow {command.workflow_key!r} is paused: activate it ("active": true) to trigger it',
                reason="WORKFLOW_INACTIVE",
                metadata={"key": command.workflow_key},
            )
        condition = await directory.segment_condition(command.segment) if command.segment else ""
        if command.segment:
            contacts = await _segment_members(team_id, command.segment, condition, uow.contacts)
        else:
            contacts = await _listed_contacts(team_id, recipients, uow.contacts)
        total = command.payload_bytes() * len(contacts)
        if total > MAX_TRIGGER_BYTES:
            raise PayloadTooLarge(
                f"The trigger's data and variables, copied into the event of each of its {len(contacts)} "
                f"contacts, come to {total} bytes; at most {MAX_TRIGGER_BYTES} are taken: send less "
                "data, or split the contacts over several triggers",
                metadata={"size": str(total), "limit": str(MAX_TRIGGER_BYTES)},
            )
        limit = policy.effective_rate_limit
        if limit:
            await intake.rates.consume(team_id, limit, 1, now)  # one request, however many contacts
        events = [
            AcceptedEvent(
                id=uuid.uuid4(),
                trigger_id=trigger_id,
                team_id=team_id,
                name=WORKFLOW_TRIGGERED,
                contact=contact,
                data=command.data,
                variables=command.variables,
                source=messages.API_SOURCE,
                occurred_at=now,
                accepted_at=now,
                workflow_key=command.workflow_key,
                trigger_events=len(contacts),
            )
            for contact in contacts
        ]
        await uow.events.add_trigger(events)
        for event in events:
            uow.publish(messages.event_message(event))
        uow.publish(messages.workflow_trigger_record(events))
        await uow.commit()
    return WorkflowTriggered(trigger_id, command.workflow_key, len(events))


def _checked_recipients(command: TriggerWorkflow) -> list[Recipient]:
    """The listed contacts, each named one way, checked and normalized; InvalidArgument saying
    what to fix otherwise."""
    if not command.workflow_key.strip():
        raise InvalidArgument(
            "workflow_key is required: the key of the workflow to run", reason="MISSING_WORKFLOW"
        )
    if bool(command.contacts) == bool(command.segment):
        raise InvalidArgument(
            "Name the audience with exactly one of 'contacts' (a list of {contact_id | external_id | "
            "email}) or 'segment' (a segment's key)",
            reason="INVALID_AUDIENCE",
        )
    if len(command.contacts) > MAX_TRIGGER_CONTACTS:
        raise InvalidArgument(
            f"A trigger takes at most {MAX_TRIGGER_CONTACTS} contacts; this one lists "
            f"{len(command.contacts)}: split it, or target a segment",
            reason="TOO_MANY_CONTACTS",
        )
    checked = []
    for index, recipient in enumerate(command.contacts):
        where = f"contacts[{index}]"
        named = [
            value for value in (recipient.contact_id, recipient.external_id, recipient.email) if value.strip()
        ]
        if len(named) != 1:
            raise InvalidArgument(
                f"{where}: name the contact by exactly one of contact_id, external_id or email",
                reason="INVALID_RECIPIENT",
                metadata={"field": where},
            )
        if recipient.contact_id.strip():
            contact_id = parse_contact_id(recipient.contact_id, f"{where}.contact_id")
            checked.append(Recipient(contact_id=str(contact_id)))
        elif recipient.external_id.strip():
            external_id = check_text(recipient.external_id.strip(), f"{where}.external_id", MAX_EXTERNAL_ID)
            checked.append(Recipient(external_id=external_id))
        else:
            checked.append(Recipient(email=normalize_email(recipient.email, f"{where}.email")))
    return checked


async def _listed_contacts(
    team_id: str, recipients: list[Recipient], contacts: ContactRepository
) -> list[Contact]:
    """The contacts `recipients` name, each once, in the order first named; NotFound listing the
    ones that do not exist (nothing is created: a direct trigger runs for known contacts)."""
    ids = [uuid.UUID(r.contact_id) for r in recipients if r.contact_id]
    external_ids = [r.external_id for r in recipients if r.external_id]
    emails = [r.email for r in recipients if r.email]
    found = await contacts.named(team_id, ids, external_ids, emails)
    by_id = {str(c.id): c for c in found}
    by_external_id = {c.external_id: c for c in found if c.external_id}
    by_email: dict[str, Contact] = {}
    # As events resolve an email: the contact without an external id first, then the oldest.
    for candidate in sorted(found, key=lambda c: (c.external_id is not None, c.created_at or utcnow())):
        if candidate.email:
            by_email.setdefault(candidate.email, candidate)
    chosen: dict[uuid.UUID, Contact] = {}
    unknown: list[str] = []
    for index, recipient in enumerate(recipients):
        contact: Contact | None
        if recipient.contact_id:
            contact, shown = by_id.get(recipient.contact_id), f"contact_id {recipient.contact_id}"
        elif recipient.external_id:
            contact, shown = (
                by_external_id.get(recipient.external_id),
                f"external_id {recipient.external_id!r}",
            )
        else:
            contact, shown = by_email.get(recipient.email), f"email {recipient.email}"
        if contact is None:
            unknown.append(f"contacts[{index}] ({shown})")
        else:
            chosen.setdefault(contact.id, contact)
    if unknown:
        more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
        raise NotFound(
            f"{len(unknown)} of the listed contacts do not exist: "
            f"{', '.join(unknown[:SHOWN_UNKNOWN])}{more}. "
            "Create them first (PUT /api/v1/contacts/{external_id}, or by sending an event about them)",
            reason="CONTACT_NOT_FOUND",
            metadata={"unknown": str(len(unknown))},
        )
    return list(chosen.values())


async def _segment_members(
    team_id: str, segment: str, condition: str, contacts: ContactRepository
) -> list[Contact]:
    """The project's contacts that are in the segment now, as their stored profiles say."""
    members: list[Contact] = []
    after = None
    while page := await contacts.page(team_id, after, SEGMENT_PAGE):
        after = page[-1].id
        for contact in page:
            if contact_in_segment(condition, contact_document(messages.contact_snapshot(contact))):
                members.append(contact)
        if len(members) > MAX_TRIGGER_CONTACTS:
            raise Unprocessable(
                f"Segment {segment!r} has more than {MAX_TRIGGER_CONTACTS} contacts; a trigger takes "
                "at most that many: narrow the segment, or send events about the contacts instead",
                reason="TOO_MANY_CONTACTS",
                metadata={"segment": segment},
            )
    if not members:
        raise Unprocessable(
            f"Segment {segment!r} has no contacts now: there is nobody to run the workflow for",
            reason="EMPTY_SEGMENT",
            metadata={"segment": segment},
        )
    return members


async def _trigger_replay(
    command: TriggerWorkflow, fingerprint: str, earlier: IdempotencyRecord, uow: IngestUnitOfWork
) -> WorkflowTriggered:
    """The answer of the earlier trigger with this idempotency key."""
    record = await _earlier_trigger(command.team_id, command.idempotency_key, fingerprint, earlier, uow)
    return WorkflowTriggered(record.id, command.workflow_key, record.contacts or 1, replayed=True)


# Contacts API


@dataclass(frozen=True)
class ContactProfile:
    """Command: the whole profile of a contact (PUT)."""

    team_id: str
    external_id: str
    email: str = ""
    phone: str = ""
    name: str = ""
    custom_fields: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()


async def _locked_contact(team_id: str, external_id: str, uow: IngestUnitOfWork) -> Contact:
    """The contact, locked for this unit of work, or NotFound."""
    found = await uow.contacts.by_external_id(team_id, external_id, lock=True)
    if found is None:
        raise _contact_not_found(external_id)
    return found


CONTACT_PAGE, MAX_CONTACT_PAGE = 50, 200
MAX_CONTACT_QUERY = 320


@dataclass(frozen=True)
class ContactPage:
    contacts: list[Contact]
    # The last contact's position when more may follow; None on the last page.
    next_after: tuple[datetime, uuid.UUID] | None


def _bad_parameter(parameter: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_PARAMETER", metadata={"parameter": parameter})


async def list_contacts(team_id: str, q: str, limit: int, cursor: str, uow: IngestUnitOfWork) -> ContactPage:
    """A page of the project's contacts, newest first: those whose external id or email starts
    with `q` (every one for an empty `q`)."""
    limit = limit or CONTACT_PAGE
    if not 1 <= limit <= MAX_CONTACT_PAGE:
        raise _bad_parameter(
            "limit", f"limit must be 1 to {MAX_CONTACT_PAGE} (default {CONTACT_PAGE}); got {limit}"
        )
    prefix = q.strip()
    if len(prefix) > MAX_CONTACT_QUERY:
        raise _bad_parameter("q", f"q must be at most {MAX_CONTACT_QUERY} characters; got {len(prefix)}")
    position = decode_cursor(cursor)
    try:
        after = (position[0], uuid.UUID(position[1])) if position else None
    except ValueError:
        raise _bad_parameter("cursor", "cursor is not one this API gave: start again without it") from None
    async with uow:
        found = await uow.contacts.search(team_id, prefix, limit + 1, after)
    page = found[:limit]
    last = page[-1] if len(found) > limit else None
    return ContactPage(page, (last.created_at, last.id) if last and last.created_at else None)


def _contact_not_found(external_id: str) -> NotFound:
    return NotFound(
        "Contact not found", reason="CONTACT_NOT_FOUND", metadata={"external_id": external_id[:256]}
    )


async def put_contact(profile: ContactProfile, uow: IngestUnitOfWork, payload_limit: int) -> Contact:
    """Create the contact or replace its profile (its topics are kept)."""
    external_id = check_external_id(profile.external_id)
    custom_fields = dict(profile.custom_fields or {})
    check_payload(json_size(custom_fields, "custom_fields"), payload_limit, "custom_fields")
    wanted = Contact(
        id=uuid.uuid4(),
        team_id=profile.team_id,
        external_id=external_id,
        email=normalize_email(profile.email, "email") if profile.email.strip() else None,
        phone=normalize_phone(profile.phone, "phone") if profile.phone.strip() else None,
        name=check_text(profile.name.strip(), "name", MAX_NAME) or None,
        custom_fields=custom_fields,
        tags=check_tags(profile.tags),
    )
    async with uow:
        found = await uow.contacts.by_external_id(profile.team_id, external_id, lock=True)
        if found is None:
            found, created = await uow.contacts.add(wanted)
            if created:
                await emit_system_event(CONTACT_CREATED, found, {"contact_id": str(found.id)}, utcnow(), uow)
                await uow.commit()
                return found
        # Known (or created by a concurrent request first): replace its profile.
        contact = await uow.contacts.update(replace(wanted, id=found.id, topics=found.topics))
        await uow.commit()
    return contact


async def get_contact(team_id: str, external_id: str, uow: IngestUnitOfWork) -> Contact:
    async with uow:
        found = await uow.contacts.by_external_id(team_id, external_id)
    if found is None:
        raise _contact_not_found(external_id)
    return found


EraseElsewhere = Callable[[Contact], Awaitable[Mapping[str, int]]]
"""Erases a contact from the other services (matcher, executor, tracker); how many rows went from
each of their tables. Raises Unavailable when one of them could not do it."""


async def erase_contact(
    team_id: str, external_id: str, uow: IngestUnitOfWork, elsewhere: EraseElsewhere | None = None
) -> dict[str, int]:
    """Right to erasure: delete the contact and its personal data everywhere; what went, by table.

    The other services erase first: when one cannot, nothing of ingest is deleted yet, so the
    call can be made again (every erasure is idempotent). Then ingest deletes the contact, its
    events and what names it, in one transaction."""
    async with uow:
        found = await uow.contacts.by_external_id(team_id, external_id)
    if found is None:
        raise _contact_not_found(external_id)
    erased: dict[str, int] = dict(await elsewhere(found)) if elsewhere is not None else {}
    async with uow:
        contact = await uow.contacts.by_external_id(team_id, external_id, lock=True)
        if contact is None:  # erased meanwhile by another request
            raise _contact_not_found(external_id)
        erased.update(await uow.contacts.erase(contact))
        await uow.commit()
    log.info("contact.erased", team_id=team_id, contact_id=str(contact.id), erased=erased)
    return dict(sorted(erased.items()))


async def change_tags(
    team_id: str, external_id: str, add: Sequence[str], remove: Sequence[str], uow: IngestUnitOfWork
) -> Contact:
    to_add = check_tags(list(add))
    to_remove = set(check_tags(list(remove)))
    if set(to_add) & to_remove:
        raise InvalidArgument(
            "A tag cannot be both added and removed: " + ", ".join(sorted(set(to_add) & to_remove)),
            reason="CONFLICTING_TAGS",
        )
    async with uow:
        found = await _locked_contact(team_id, external_id, uow)
        tags = check_tags([tag for tag in (*found.tags, *to_add) if tag not in to_remove])
        contact = found if tags == found.tags else await uow.contacts.update(replace(found, tags=tags))
        await uow.commit()
    return contact


async def subscribe_topic(team_id: str, external_id: str, topic: str, uow: IngestUnitOfWork) -> Contact:
    """Subscribe the contact; a new subscription announces `herald.topic.subscribed`."""
    topic = check_topic(topic)
    async with uow:
        found = await _locked_contact(team_id, external_id, uow)
        if topic in found.topics:
            return found
        contact = await uow.contacts.update(replace(found, topics=(*found.topics, topic)))
        await emit_system_event(
            TOPIC_SUBSCRIBED, contact, {"contact_id": str(contact.id), "topic": topic}, utcnow(), uow
        )
        await uow.commit()
    return contact


async def unsubscribe_topic(team_id: str, external_id: str, topic: str, uow: IngestUnitOfWork) -> Contact:
    topic = check_topic(topic)
    async with uow:
        found = await _locked_contact(team_id, external_id, uow)
        if topic not in found.topics:
            return found
        contact = await uow.contacts.update(
            replace(found, topics=tuple(t for t in found.topics if t != topic))
        )
        await uow.commit()
    return contact


# Project policy and event types


async def get_policy(team_id: str, uow: IngestUnitOfWork) -> ProjectPolicy:
    async with uow:
        return await uow.policies.get(team_id)


async def update_policy(team_id: str, change: PolicyChange, uow: IngestUnitOfWork) -> ProjectPolicy:
    async with uow:
        policy = await uow.policies.update(team_id, change)
        await uow.commit()
    return policy


async def register_event_type(team_id: str, name: str, description: str, uow: IngestUnitOfWork) -> EventType:
    validate_customer_event_name(name)
    check_text(description, "description", 1000)
    async with uow:
        registered = await uow.event_types.register(team_id, name, description)
        await uow.commit()
    return registered


async def list_event_types(team_id: str, uow: IngestUnitOfWork) -> list[EventType]:
    async with uow:
        return await uow.event_types.list(team_id)


async def delete_event_type(team_id: str, name: str, uow: IngestUnitOfWork) -> None:
    async with uow:
        if not await uow.event_types.delete(team_id, name):
            raise NotFound(
                "Event type not found", reason="EVENT_TYPE_NOT_FOUND", metadata={"event_name": name[:128]}
            )
        await uow.commit()


async def purge(team_id: str, before: datetime, limit: int, uow: IngestUnitOfWork) -> dict[str, int]:
    """One round of retention (kernel.retention) for one project: up to `limit` of its events
    accepted before `before` with their triggers, and of its expired idempotency keys."""
    async with uow:
        purged = await uow.events.purge(team_id, before, limit)
        purged["ingest.idempotency_keys"] = await uow.idempotency.purge_expired(team_id, utcnow(), limit)
        await uow.commit()
    return purged
