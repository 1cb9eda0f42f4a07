"""In-memory fakes for the handlers' unit tests: units of work, repositories and an email sender.

They keep the promises of the SQL adapters they stand in for:
- a unit of work rolls back unless `commit()` is called: whatever a handler changed inside
  `async with uow:` without committing is discarded when the block ends;
- messages are published only on commit, each with a stream sequence as its receipt;
- repositories keep the uniqueness rules of their tables, and raise `UniqueViolation` where
  PostgreSQL would refuse a write;
- a unit of work holds one transaction at a time: entering it again before the first ended is
  an error rather than two transactions silently sharing (and rolling back) each other's rows.

Every published message is kept, duplicates included (JetStream would drop a repeated
`Nats-Msg-Id`), so a test sees exactly what a handler asked to publish.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from kernel.bus import OutgoingMessage
from kernel.clock import utcnow
from kernel.errors import Conflict, ResourceExhausted
from kernel.outbox import Receipts
from kernel.policy import PolicyChange, ProjectPolicy, apply_change
from kernel.unit_of_work import Publication
from services.executor.domain import (
    DeadLetter,
    DeadLetterQuery,
    DeliveryError,
    FeedItem,
    OutgoingEmail,
    OutgoingText,
    OutgoingWebhook,
    ProviderSettings,
    Run,
    Timer,
    TimerKind,
    new_webhook_secret,
)
from services.ingest.domain import (
    AcceptedEvent,
    Contact,
    EventType,
    IdempotencyRecord,
    RateState,
    TriggerRecord,
    TriggerStatus,
)
from services.ingest.groups import Snapshot, Writes
from services.ingest.handlers import Draft
from services.matcher.domain import Decision, MatchedEvent, Segment, Workflow

Clock = Callable[[], datetime]


class UniqueViolation(Exception):
    """What PostgreSQL answers when a write breaks a unique index that the statement does not handle."""


class FakeRepository:
    """Rows in memory: changes made in a transaction are kept by `commit` and undone by `rollback`."""

    def __init__(self) -> None:
        self.rows: dict[Any, Any] = {}
        self._committed: dict[Any, Any] = {}

    def begin(self) -> None:
        self._committed = copy.deepcopy(self.rows)

    def commit(self) -> None:
        self._committed = copy.deepcopy(self.rows)

    def rollback(self) -> None:
        self.rows = copy.deepcopy(self._committed)


class FakeUnitOfWork:
    """A transaction over fake repositories, and the messages it publishes when it commits."""

    def __init__(self, *repositories: FakeRepository) -> None:
        self._repositories = repositories
        self._pending: list[OutgoingMessage] = []
        self._sequence = 0
        self.bus_reachable = True
        self.published: list[OutgoingMessage] = []
        # Committed while the bus was unreachable: the outbox relay would publish them later.
        self.deferred: list[OutgoingMessage] = []
        self.commits = 0
        self._open = False

    async def __aenter__(self) -> Self:
        # One fake is one connection: a handler that opened a second transaction on it before the
        # first ended would see (and undo) the other's uncommitted changes, which PostgreSQL never does.
        if self._open:
            raise RuntimeError(f"{type(self).__name__} entered while its transaction is still open")
        self._open = True
        self._pending = []
        for repository in self._repositories:
            repository.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pending = []
        self._open = False
        for repository in self._repositories:
            repository.rollback()

    def publish(self, message: OutgoingMessage) -> None:
        self._pending.append(message)

    def together(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def stage_pending(self) -> None:
        """Nothing to write ahead: the fake's messages are published as the commit says."""

    async def commit(self) -> Receipts:
        publication = await self.commit_unpublished()
        return await publication()

    async def commit_unpublished(self) -> Publication:
        pending, self._pending = self._pending, []
        for repository in self._repositories:
            repository.commit()
        self.commits += 1

        async def publish() -> Receipts:
            if not self.bus_reachable:
                self.deferred.extend(pending)
                return {}
            receipts: Receipts = {}
            for message in pending:
                self._sequence += 1
                self.published.append(message)
                receipts[message.msg_id] = self._sequence
            return receipts

        return publish

    def subjects(self) -> list[str]:
        return [message.subject for message in self.published]


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------


class FakeContactRepository(FakeRepository):
    """Contacts by id, unique on (team, external id) and, for contacts without one, on (team, email).

    Like the SQL adapter, the store sets `created_at` and `updated_at` (from `clock`).
    """

    rows: dict[uuid.UUID, Contact]

    def __init__(self, clock: Clock = utcnow) -> None:
        super().__init__()
        self._clock = clock

    async def by_id(self, team_id: str, contact_id: uuid.UUID) -> Contact | None:
        found = self.rows.get(contact_id)
        return copy.deepcopy(found) if found is not None and found.team_id == team_id else None

    async def by_external_id(self, team_id: str, external_id: str, *, lock: bool = False) -> Contact | None:
        return copy.deepcopy(self._by_external_id(team_id, external_id))

    def _by_external_id(self, team_id: str, external_id: str) -> Contact | None:
        return next(
            (c for c in self.rows.values() if c.team_id == team_id and c.external_id == external_id), None
        )

    async def by_email(self, team_id: str, email: str) -> Contact | None:
        matches = [c for c in self.rows.values() if c.team_id == team_id and c.email == email]
        # Like the SQL adapter: contacts without an external id first, then the oldest.
        return copy.deepcopy(min(matches, key=lambda contact: contact.external_id is not None, default=None))

    def _anonymous_by_email(self, team_id: str, email: str) -> Contact | None:
        return next(
            (
                c
                for c in self.rows.values()
                if c.team_id == team_id and c.external_id is None and c.email == email
            ),
            None,
        )

    def _check_unique(self, contact: Contact) -> None:
        """The two partial unique indexes of the contacts table."""
        for other in self.rows.values():
            if other.id == contact.id or other.team_id != contact.team_id:
                continue
            if contact.external_id is not None and other.external_id == contact.external_id:
                raise UniqueViolation(
                    'duplicate key value violates unique constraint "uq_contacts_team_external_id"'
                )
            if (
                contact.external_id is None
                and other.external_id is None
                and contact.email is not None
                and other.email == contact.email
            ):
                raise UniqueViolation(
                    'duplicate key value violates unique constraint "uq_contacts_team_email_anonymous"'
                )

    async def update(self, contact: Contact) -> Contact:
        """Like the SQL adapter's `UPDATE … WHERE id = :id AND team_id = :team RETURNING *`: every
        profile field, tags and topics are written; `created_at` is kept, `updated_at` is now. A
        clash with another contact's identity is a Conflict, as the adapter reports it."""
        stored = self.rows.get(contact.id)
        if stored is None or stored.team_id != contact.team_id:
            raise LookupError(f"no contact {contact.id} to update")
        try:
            self._check_unique(contact)
        except UniqueViolation:
            raise Conflict(
                "These contact details belong to another contact", reason="CONTACT_IDENTITY_CLASH"
            ) from None
        updated = dataclasses.replace(contact, created_at=stored.created_at, updated_at=self._clock())
        self.rows[contact.id] = copy.deepcopy(updated)
        return copy.deepcopy(updated)

    async def add(self, contact: Contact) -> tuple[Contact, bool]:
        """An upsert on the same conflict target as the SQL adapter's `INSERT … ON CONFLICT`.

        A row that conflicts on the target keeps its id, external id, tags and topics; it takes
        the new email, phone and name where they are given, and the new custom fields merged over
        its own (`||`), and the flag is False. Any other clash (of ids, or of the unique index
        that is not the target) is a unique violation.
        """
        if contact.external_id is not None:
            existing = self._by_external_id(contact.team_id, contact.external_id)
        elif contact.email is not None:
            existing = self._anonymous_by_email(contact.team_id, contact.email)
        else:
            existing = None
        if existing is not None:
            merged = dataclasses.replace(
                existing,
                email=contact.email if contact.email is not None else existing.email,
                phone=contact.phone if contact.phone is not None else existing.phone,
                name=contact.name if contact.name is not None else existing.name,
                custom_fields={**existing.custom_fields, **contact.custom_fields},
                updated_at=self._clock(),
            )
            self.rows[merged.id] = copy.deepcopy(merged)
            return copy.deepcopy(merged), False
        if contact.id in self.rows:
            raise UniqueViolation(
                f'duplicate key value violates unique constraint "pk_contacts" ({contact.id})'
            )
        self._check_unique(contact)
        now = self._clock()
        stored = dataclasses.replace(contact, created_at=now, updated_at=now)
        self.rows[stored.id] = copy.deepcopy(stored)
        return copy.deepcopy(stored), True

    async def erase(self, contact: Contact) -> dict[str, int]:
        """Deletes the contact (the SQL adapter also deletes its events and what names it)."""
        return {"ingest.contacts": 1 if self.rows.pop(contact.id, None) is not None else 0}

    async def named(
        self, team_id: str, ids: Sequence[uuid.UUID], external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        return [
            contact
            for contact in self.rows.values()
            if contact.team_id == team_id
            and (contact.id in ids or contact.external_id in external_ids or contact.email in emails)
        ]

    async def page(self, team_id: str, after: uuid.UUID | None, limit: int) -> list[Contact]:
        mine = sorted((c for c in self.rows.values() if c.team_id == team_id), key=lambda c: c.id)
        return [c for c in mine if after is None or c.id > after][:limit]

    async def search(
        self, team_id: str, prefix: str, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[Contact]:
        def position(contact: Contact) -> tuple[datetime, uuid.UUID]:
            assert contact.created_at is not None
            return contact.created_at, contact.id

        found = [
            c
            for c in self.rows.values()
            if c.team_id == team_id
            and (
                not prefix
                or (c.external_id or "").startswith(prefix)
                or (c.email or "").startswith(prefix.lower())
            )
            and (after is None or position(c) < after)
        ]
        return sorted(found, key=position, reverse=True)[:limit]


@dataclasses.dataclass(frozen=True)
class TriggerRow:
    """A row of the triggers table: the trigger an accepted event created."""

    id: uuid.UUID
    team_id: str
    event_id: uuid.UUID
    event_name: str
    status: str
    created_at: datetime
    scheduled_for: datetime | None
    cancelled_at: datetime | None = None
    contacts: int | None = None


class FakeEventRepository(FakeRepository):
    """Accepted events by id and, in `triggers`, the trigger each one created.

    Like the SQL adapter's tables, they are two: a trigger is seen (`trigger`) only with its
    event, and scheduled events come back from `claim_due` with their contact as it is now.
    """

    rows: dict[uuid.UUID, AcceptedEvent]

    def __init__(self, contacts: FakeContactRepository | None = None) -> None:
        super().__init__()
        self.triggers: dict[uuid.UUID, TriggerRow] = {}
        self._committed_triggers: dict[uuid.UUID, TriggerRow] = {}
        self._contacts = contacts

    def begin(self) -> None:
        super().begin()
        self._committed_triggers = copy.deepcopy(self.triggers)

    def commit(self) -> None:
        super().commit()
        self._committed_triggers = copy.deepcopy(self.triggers)

    def rollback(self) -> None:
        super().rollback()
        self.triggers = copy.deepcopy(self._committed_triggers)

    async def add(self, event: AcceptedEvent) -> None:
        if (
            event.id in self.rows
            or event.trigger_id in self.triggers
            or any(t.event_id == event.id for t in self.triggers.values())
        ):
            raise UniqueViolation(f"event {event.id} or trigger {event.trigger_id} exists already")
        self.rows[event.id] = copy.deepcopy(event)
        self.triggers[event.trigger_id] = TriggerRow(
            id=event.trigger_id,
            team_id=event.team_id,
            event_id=event.id,
            event_name=event.name,
            status=TriggerStatus.SCHEDULED if event.scheduled_for else TriggerStatus.QUEUED,
            created_at=event.accepted_at,
            scheduled_for=event.scheduled_for,
        )

    async def add_trigger(self, events: Sequence[AcceptedEvent]) -> None:
        """Like the SQL adapter: every event, and one trigger pointing at the first."""
        first = events[0]
        await self.add(first)
        for event in events[1:]:
            if event.id in self.rows:
                raise UniqueViolation(f"event {event.id} exists already")
            self.rows[event.id] = copy.deepcopy(event)
        self.triggers[first.trigger_id] = dataclasses.replace(
            self.triggers[first.trigger_id], contacts=len(events)
        )

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None:
        row = self.triggers.get(trigger_id)
        if row is None or row.team_id != team_id:
            return None
        event = self.rows.get(row.event_id)
        if event is None:  # the SQL adapter joins the trigger with its event
            return None
        return TriggerRecord(
            id=row.id,
            event_id=row.event_id,
            event_name=row.event_name,
            status=row.status,
            created_at=row.created_at,
            scheduled_for=row.scheduled_for,
            contact_id=event.contact.id if event.contact else None,
            occurred_at=event.occurred_at,
            finished_at=row.cancelled_at,
            contacts=row.contacts,
        )

    async def cancel(self, team_id: str, trigger_id: uuid.UUID, now: datetime) -> TriggerRecord | None:
        row = self.triggers.get(trigger_id)
        if row is None or row.team_id != team_id or row.status != TriggerStatus.SCHEDULED:
            return None
        self.triggers[trigger_id] = dataclasses.replace(row, status=TriggerStatus.CANCELLED, cancelled_at=now)
        return await self.trigger(team_id, trigger_id)

    async def claim_due(self, now: datetime, limit: int) -> list[AcceptedEvent]:
        """Like the SQL adapter: the earliest due scheduled triggers of every team, marked queued,
        with their events and each event's contact as stored now (None once deleted)."""
        due = sorted(
            (
                row
                for row in self.triggers.values()
                if row.status == TriggerStatus.SCHEDULED
                and row.scheduled_for is not None
                and row.scheduled_for <= now
            ),
            key=lambda row: row.scheduled_for or now,
        )[:limit]
        claimed = []
        for row in due:
            self.triggers[row.id] = dataclasses.replace(row, status=TriggerStatus.QUEUED)
            event = self.rows.get(row.event_id)
            if event is None:
                continue
            contact = None
            if event.contact is not None and self._contacts is not None:
                current = self._contacts.rows.get(event.contact.id)
                contact = dataclasses.replace(current, created_at=None, updated_at=None) if current else None
            claimed.append(
                dataclasses.replace(
                    copy.deepcopy(event),
                    contact=contact,
                    scheduled_for=row.scheduled_for,
                    idempotency_key=None,
                )
            )
        return claimed

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Like the SQL adapter: events accepted before `before`, and their triggers unless scheduled."""
        old = [e.id for e in self.rows.values() if e.team_id == team_id and e.accepted_at < before][:limit]
        for event_id in old:
            del self.rows[event_id]
        gone = set(old)
        kept = {
            trigger_id: row
            for trigger_id, row in self.triggers.items()
            if row.event_id not in gone or row.status == TriggerStatus.SCHEDULED
        }
        purged = {"ingest.events": len(old), "ingest.triggers": len(self.triggers) - len(kept)}
        self.triggers = kept
        return purged

    @property
    def events(self) -> list[AcceptedEvent]:
        return list(self.rows.values())


@dataclasses.dataclass(frozen=True)
class IdempotencyKeyRow:
    fingerprint: str
    trigger_id: uuid.UUID
    expires_at: datetime


class FakeIdempotencyRepository(FakeRepository):
    """Idempotency keys, unique on (team, key); an expired key is free to claim again.

    The SQL adapter compares expiry with the database's clock; this one asks `clock`.
    """

    rows: dict[tuple[str, str], IdempotencyKeyRow]

    def __init__(self, clock: Clock = utcnow) -> None:
        super().__init__()
        self._clock = clock

    async def claim(
        self, team_id: str, key: str, fingerprint: str, trigger_id: uuid.UUID, expires_at: datetime
    ) -> IdempotencyRecord | None:
        earlier = self.rows.get((team_id, key))
        if earlier is not None and not earlier.expires_at < self._clock():
            return IdempotencyRecord(earlier.fingerprint, earlier.trigger_id)
        self.rows[(team_id, key)] = IdempotencyKeyRow(fingerprint, trigger_id, expires_at)
        return None

    async def purge_expired(self, team_id: str, now: datetime, limit: int) -> int:
        expired = [
            row_key for row_key, row in self.rows.items() if row_key[0] == team_id and row.expires_at < now
        ][:limit]
        for row_key in expired:
            del self.rows[row_key]
        return len(expired)


class FakeEventTypeRepository(FakeRepository):
    """Each team's event types, unique on (team, name)."""

    rows: dict[tuple[str, str], EventType]

    def __init__(self, clock: Clock = utcnow) -> None:
        super().__init__()
        self._clock = clock

    async def catalogue(self, team_id: str, name: str) -> None:
        if (team_id, name) not in self.rows:
            self.rows[(team_id, name)] = EventType(name, "", "catalogued", self._clock())

    async def exists(self, team_id: str, name: str) -> bool:
        return (team_id, name) in self.rows

    async def register(self, team_id: str, name: str, description: str) -> EventType:
        """An upsert: a known type takes the description and becomes registered, keeping its date."""
        earlier = self.rows.get((team_id, name))
        created_at = earlier.created_at if earlier is not None else self._clock()
        registered = EventType(name, description, "registered", created_at)
        self.rows[(team_id, name)] = registered
        return registered

    async def list(self, team_id: str) -> list[EventType]:
        return sorted((t for (team, _), t in self.rows.items() if team == team_id), key=lambda t: t.name)

    async def delete(self, team_id: str, name: str) -> bool:
        return self.rows.pop((team_id, name), None) is not None


class FakePolicyRepository(FakeRepository):
    """Stored project policies; a project without one has the defaults."""

    rows: dict[str, ProjectPolicy]

    async def get(self, team_id: str) -> ProjectPolicy:
        return self.rows.get(team_id, ProjectPolicy())

    async def update(self, team_id: str, change: PolicyChange) -> ProjectPolicy:
        updated = apply_change(await self.get(team_id), change)
        self.rows[team_id] = updated
        return updated


class FakeIngestUnitOfWork(FakeUnitOfWork):
    def __init__(self, clock: Clock = utcnow) -> None:
        self._contacts = FakeContactRepository(clock)
        self._events = FakeEventRepository(self._contacts)
        self._idempotency = FakeIdempotencyRepository(clock)
        self._event_types = FakeEventTypeRepository(clock)
        self._policies = FakePolicyRepository()
        super().__init__(self._contacts, self._events, self._idempotency, self._event_types, self._policies)

    @property
    def contacts(self) -> FakeContactRepository:
        return self._contacts

    @property
    def events(self) -> FakeEventRepository:
        return self._events

    @property
    def idempotency(self) -> FakeIdempotencyRepository:
        return self._idempotency

    @property
    def event_types(self) -> FakeEventTypeRepository:
        return self._event_types

    @property
    def policies(self) -> FakePolicyRepository:
        return self._policies


class FakeGroupUnitOfWork:
    """A group's transaction (services.ingest.groups) over a fake ingest unit of work's tables,
    with the SQL adapter's rules: the snapshot sees only claims in force, contacts are written
    with a plain INSERT (a clash is a unique violation) and a key claimed meanwhile fails the write."""

    def __init__(self, uow: FakeIngestUnitOfWork, rates: FakeRateLimiter, clock: Clock = utcnow) -> None:
        self._uow = uow
        self._rates = rates
        self._clock = clock

    async def __aenter__(self) -> Self:
        await self._uow.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._uow.__aexit__(exc_type, exc, tb)

    def publish(self, message: OutgoingMessage) -> None:
        self._uow.publish(message)

    async def commit(self) -> Receipts:
        return await self._uow.commit()

    async def commit_unpublished(self) -> Publication:
        return await self._uow.commit_unpublished()

    async def snapshot(self, drafts: Sequence[Draft]) -> Snapshot:
        teams = {draft.event.team_id for draft in drafts}
        now = self._clock()
        return Snapshot(
            contacts=[copy.deepcopy(c) for c in self._uow.contacts.rows.values() if c.team_id in teams],
            keys={
                team_key: IdempotencyRecord(row.fingerprint, row.trigger_id)
                for team_key, row in self._uow.idempotency.rows.items()
                if team_key[0] in teams and not row.expires_at < now
            },
            event_types={team_name for team_name in self._uow.event_types.rows if team_name[0] in teams},
        )

    async def consume_rate(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        return await self._rates.consume(team_id, limit, count, now)

    async def write(self, writes: Writes) -> None:
        uow = self._uow
        for claim in writes.claims:
            earlier = await uow.idempotency.claim(
                claim.team_id, claim.key, claim.fingerprint, claim.trigger_id, claim.expires_at
            )
            if earlier is not None:
                raise UniqueViolation(f"idempotency key {claim.key} was claimed first by another request")
        for contact in writes.contacts:
            if contact.id in uow.contacts.rows:
                raise UniqueViolation('duplicate key value violates unique constraint "pk_contacts"')
            uow.contacts._check_unique(contact)
            now = self._clock()
            uow.contacts.rows[contact.id] = dataclasses.replace(contact, created_at=now, updated_at=now)
        for team_id, name in writes.catalogued:
            await uow.event_types.catalogue(team_id, name)
        for event in writes.events:
            await uow.events.add(event)


class FakePolicySource:
    """Each project's policy as `PolicyCache` would read it; the defaults unless a test sets one."""

    def __init__(self, policies: dict[str, ProjectPolicy] | None = None) -> None:
        self.policies: dict[str, ProjectPolicy] = dict(policies or {})

    async def get(self, team_id: str) -> ProjectPolicy:
        return self.policies.get(team_id, ProjectPolicy())


class FakeRateLimiter:
    """`SqlRateLimiter` in memory: fixed hourly windows per team, a count that never goes past the
    limit, and the same ResourceExhausted (with retry-after) when an event would exceed it."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, datetime], int] = {}

    async def consume(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        window_start = now.replace(minute=0, second=0, microsecond=0)
        reset = max(1, math.ceil((window_start + timedelta(hours=1) - now).total_seconds()))
        used = self.counts.get((team_id, window_start), 0)
        if count <= limit and used + count <= limit:
            self.counts[(team_id, window_start)] = used + count
            return RateState(limit=limit, remaining=limit - used - count, reset_seconds=reset)
        state = RateState(limit=limit, remaining=0, reset_seconds=reset)
        raise ResourceExhausted(
            f"Rate limit exceeded: this project may send {limit} events per hour; "
            f"try again in {reset} seconds",
            reason="RATE_LIMITED",
            metadata={"limit": str(limit), "retry_after": str(reset)},
            headers={**state.headers(), "retry-after": str(reset)},
        )


# --------------------------------------------------------------------------------------------
# matcher
# --------------------------------------------------------------------------------------------


class FakeWorkflowRepository(FakeRepository):
    """Workflow versions, unique on (team, key, version)."""

    rows: dict[tuple[str, str, int], Workflow]

    async def latest(self, team_id: str, key: str) -> Workflow | None:
        versions = [w for (team, k, _), w in self.rows.items() if team == team_id and k == key]
        return max(versions, key=lambda workflow: workflow.version, default=None)

    async def all_latest(self, team_id: str) -> list[Workflow]:
        keys = sorted({key for team, key, _ in self.rows if team == team_id})
        latest = [await self.latest(team_id, key) for key in keys]
        return [workflow for workflow in latest if workflow is not None and not workflow.deleted]

    async def listening_to(self, team_id: str, event_name: str) -> list[Workflow]:
        return [w for w in await self.all_latest(team_id) if w.definition.trigger_event == event_name]

    async def versions(self, team_id: str, key: str) -> list[Workflow]:
        found = [w for (team, k, _), w in self.rows.items() if team == team_id and k == key and not w.deleted]
        return sorted(found, key=lambda workflow: -workflow.version)

    async def add(self, workflow: Workflow) -> None:
        row_key = (workflow.team_id, workflow.key, workflow.version)
        if row_key in self.rows:  # as the SQL repository answers a concurrent change
            raise Conflict(
                f"workflow version {row_key} exists already", reason="WORKFLOW_CHANGED_CONCURRENTLY"
            )
        self.rows[row_key] = workflow


class FakeDecisionRepository(FakeRepository):
    """The events decided, each with its decisions (unique on event id and workflow key)."""

    rows: dict[uuid.UUID, tuple[MatchedEvent, list[Decision]]]

    async def claim(self, events: Sequence[MatchedEvent]) -> set[uuid.UUID]:
        claimed = set()
        for event in events:
            if event.event_id not in self.rows:
                self.rows[event.event_id] = (event, [])
                claimed.add(event.event_id)
        return claimed

    async def add(self, decided: Sequence[tuple[MatchedEvent, list[Decision]]]) -> None:
        for event, decisions in decided:
            keys = [decision.workflow.key for decision in decisions]
            claimed = self.rows.get(event.event_id)
            if claimed is None or claimed[1] or len(keys) != len(set(keys)):
                raise UniqueViolation(f"event {event.event_id} is not claimed, or has decisions already")
            self.rows[event.event_id] = (event, list(decisions))


class FakeCooldownRepository(FakeRepository):
    """Until when each (team, workflow, contact) may not run again."""

    rows: dict[tuple[str, str, str], datetime]

    async def claim(
        self, team_id: str, workflow_key: str, contact_id: str, now: datetime, until: datetime
    ) -> datetime | None:
        held = self.rows.get((team_id, workflow_key, contact_id))
        if held is not None and held > now:
            return held
        self.rows[(team_id, workflow_key, contact_id)] = until
        return None


class FakeSegmentRepository(FakeRepository):
    """Segments by (team, key), and who is in them under the key (team, "member", contact)."""

    rows: dict[tuple[str, ...], Any]

    async def get(self, team_id: str, key: str) -> Segment | None:
        found = self.rows.get((team_id, key))
        return found if isinstance(found, Segment) else None

    async def all(self, team_id: str) -> list[Segment]:
        found = [
            value for value in self.rows.values() if isinstance(value, Segment) and value.team_id == team_id
        ]
        return sorted(found, key=lambda segment: segment.key)

    async def put(self, segment: Segment, *, replace: bool) -> Segment | None:
        existing = await self.get(segment.team_id, segment.key)
        if existing is not None and not replace:
            return None
        now = utcnow()
        stored = dataclasses.replace(
            segment, created_at=existing.created_at if existing else now, updated_at=now
        )
        self.rows[(segment.team_id, segment.key)] = stored
        return stored

    async def delete(self, team_id: str, key: str) -> bool:
        for members in (value for k, value in self.rows.items() if k[:2] == (team_id, "member")):
            members.discard(key)
        return self.rows.pop((team_id, key), None) is not None

    async def set_memberships(
        self, members: Sequence[tuple[str, str, frozenset[str]]], now: datetime
    ) -> list[tuple[str, str, str]]:
        entered = []
        for team_id, contact_id, keys in members:
            before = self.rows.get((team_id, "member", contact_id), set())
            self.rows[(team_id, "member", contact_id)] = set(keys)
            entered += [(team_id, contact_id, key) for key in sorted(keys - before)]
        return sorted(entered)


class FakeMatcherUnitOfWork(FakeUnitOfWork):
    def __init__(self) -> None:
        self._workflows = FakeWorkflowRepository()
        self._decisions = FakeDecisionRepository()
        self._cooldowns = FakeCooldownRepository()
        self._segments = FakeSegmentRepository()
        super().__init__(self._workflows, self._decisions, self._cooldowns, self._segments)

    @property
    def segments(self) -> FakeSegmentRepository:
        return self._segments

    @property
    def cooldowns(self) -> FakeCooldownRepository:
        return self._cooldowns

    @property
    def workflows(self) -> FakeWorkflowRepository:
        return self._workflows

    @property
    def decisions(self) -> FakeDecisionRepository:
        return self._decisions


# --------------------------------------------------------------------------------------------
# executor
# --------------------------------------------------------------------------------------------


class FakeRunRepository(FakeRepository):
    """Runs by id. Callers get copies, so a run changes only through `add` and `save`."""

    rows: dict[uuid.UUID, Run]

    async def add(self, runs: Sequence[Run]) -> set[uuid.UUID]:
        added = set()
        for run in runs:
            if run.id not in self.rows:
                self.rows[run.id] = copy.deepcopy(run)
                added.add(run.id)
        return added

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None:
        run = self.rows.get(run_id)
        return copy.deepcopy(run) if run is not None and run.team_id == team_id else None

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        run = self.rows.get(run_id)
        return copy.deepcopy(run) if run is not None else None

    async def lock_many(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Run]:
        return {run_id: copy.deepcopy(self.rows[run_id]) for run_id in sorted(run_ids) if run_id in self.rows}

    async def save(self, *runs: Run) -> None:
        for run in runs:
            self._save(run)

    def _save(self, run: Run) -> None:
        """Like the SQL adapter: the run's status and its steps' progress, nothing else."""
        stored = self.rows[run.id]
        stored.status = run.status
        stored.finished_at = run.finished_at
        states = {step.spec.id: step for step in run.steps}
        for step in stored.steps:
            state = states[step.spec.id]
            step.status = state.status
            step.attempts = state.attempts
            step.detail = state.detail
            step.finished_at = state.finished_at
        stored.replays = run.replays
        stored.waited_until = run.waited_until


class FakeTimerRepository(FakeRepository):
    """Timers by (run id, step id); locks are not modelled (one worker in unit tests)."""

    rows: dict[tuple[uuid.UUID, str], tuple[Timer, bool]]

    async def add(self, timer: Timer) -> None:
        self.rows[(timer.run_id, timer.step_id)] = (timer, False)

    async def due(self, now: datetime, limit: int) -> list[Timer]:
        due = sorted(
            (timer for timer, _ in self.rows.values() if timer.due_at <= now), key=lambda t: t.due_at
        )
        return due[:limit]

    async def waits_for(self, team_id: str, event: str, contact_id: str) -> list[Timer]:
        return [
            timer
            for timer, _ in self.rows.values()
            if timer.kind == TimerKind.WAIT
            and (timer.team_id, timer.event, timer.contact_id) == (team_id, event, contact_id)
        ]

    async def not_caught_up(self, limit: int, created_before: datetime) -> list[Timer]:
        """Creation times are not kept: every wait counts as old enough."""
        waits = [timer for timer, done in self.rows.values() if timer.kind == TimerKind.WAIT and not done]
        return waits[:limit]

    async def awaited_events(self, team_id: str) -> frozenset[str]:
        return frozenset(
            timer.event
            for timer, _ in self.rows.values()
            if timer.kind == TimerKind.WAIT and timer.team_id == team_id
        )

    async def caught_up(self, timer: Timer) -> None:
        self.rows[(timer.run_id, timer.step_id)] = (timer, True)

    async def delete(self, timer: Timer) -> None:
        self.rows.pop((timer.run_id, timer.step_id), None)

    async def of_run(self, run_id: uuid.UUID) -> list[Timer]:
        return [timer for timer, _ in self.rows.values() if timer.run_id == run_id]

    async def postpone(self, timer: Timer, until: datetime) -> None:
        key = (timer.run_id, timer.step_id)
        if key in self.rows:
            stored, done = self.rows[key]
            self.rows[key] = (dataclasses.replace(stored, due_at=until), done)

    @property
    def timers(self) -> list[Timer]:
        return [timer for timer, _ in self.rows.values()]


class FakeFeedRepository(FakeRepository):
    rows: dict[uuid.UUID, FeedItem]

    async def add(self, item: FeedItem) -> None:
        self.rows.setdefault(item.id, item)

    async def newest(self, team_id: str, external_id: str, limit: int, unread_only: bool) -> list[FeedItem]:
        items = [
            item
            for item in self.rows.values()
            if (item.team_id, item.external_id) == (team_id, external_id)
            and not (unread_only and item.read_at)
        ]
        return sorted(items, key=lambda item: item.created_at, reverse=True)[:limit]

    async def mark_read(self, team_id: str, external_id: str, ids: list[uuid.UUID], at: datetime) -> int:
        marked = 0
        for item in list(self.rows.values()):
            if (item.team_id, item.external_id) != (team_id, external_id) or item.read_at:
                continue
            if ids and item.id not in ids:
                continue
            self.rows[item.id] = dataclasses.replace(item, read_at=at)
            marked += 1
        return marked


class FakeDeadLetterRepository(FakeRepository):
    rows: dict[uuid.UUID, DeadLetter]

    async def add(self, letter: DeadLetter) -> None:
        stored = self.rows.get(letter.id)
        if stored is None:
            self.rows[letter.id] = copy.deepcopy(letter)
        else:
            stored.error, stored.attempts = letter.error, letter.attempts
            stored.failed_at, stored.status = letter.failed_at, letter.status

    async def newest(self, team_id: str, query: DeadLetterQuery) -> list[DeadLetter]:
        letters = [
            copy.deepcopy(letter)
            for letter in self.rows.values()
            if letter.team_id == team_id
            and query.status in ("", letter.status)
            and query.channel in ("", letter.channel)
            and (query.after is None or (letter.failed_at, letter.id) < query.after)
        ]
        return sorted(letters, key=lambda letter: (letter.failed_at, letter.id), reverse=True)[: query.limit]

    async def count_dead(self, team_id: str) -> int:
        return sum(letter.team_id == team_id and letter.status == "dead" for letter in self.rows.values())

    async def get(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None:
        return await self.lock(team_id, letter_id)

    async def lock(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None:
        letter = self.rows.get(letter_id)
        return copy.deepcopy(letter) if letter is not None and letter.team_id == team_id else None

    async def save(self, letter: DeadLetter) -> None:
        stored = self.rows[letter.id]
        stored.status, stored.replays, stored.replayed_at = letter.status, letter.replays, letter.replayed_at


class FakeChannelRepository(FakeRepository):
    rows: dict[tuple[str, str], Any]

    def __init__(self) -> None:
        super().__init__()
        # What deliveries read: (project, channel) for a provider, (project, "webhook") for a secret.
        self.reads: list[tuple[str, str]] = []

    async def provider(self, team_id: str, channel: str) -> ProviderSettings | None:
        self.reads.append((team_id, channel))
        found = self.rows.get((team_id, channel))
        return found if isinstance(found, ProviderSettings) else None

    async def put_provider(self, settings: ProviderSettings) -> ProviderSettings:
        stored = dataclasses.replace(settings, updated_at=utcnow())
        self.rows[(settings.team_id, settings.channel)] = stored
        return stored

    async def webhook_secret(self, team_id: str) -> str:
        self.reads.append((team_id, "webhook"))
        secret = self.rows.setdefault((team_id, "webhook"), new_webhook_secret())
        assert isinstance(secret, str)
        return secret

    async def set_webhook_secret(self, team_id: str, secret: str) -> None:
        self.rows[(team_id, "webhook")] = secret


class FakeDevMessageRepository(FakeRepository):
    rows: dict[str, tuple[OutgoingText, datetime]]

    async def add(self, message: OutgoingText, at: datetime) -> None:
        self.rows.setdefault(message.idempotency_key, (message, at))

    async def newest(self, team_id: str, channel: str, limit: int) -> list[tuple[OutgoingText, datetime]]:
        found = [
            (message, at)
            for message, at in self.rows.values()
            if message.project_id == team_id and (not channel or message.channel == channel)
        ]
        return sorted(found, key=lambda pair: pair[1], reverse=True)[:limit]


class FakeExecutorUnitOfWork(FakeUnitOfWork):
    def __init__(self) -> None:
        self._runs = FakeRunRepository()
        self._timers = FakeTimerRepository()
        self._feed = FakeFeedRepository()
        self._dead_letters = FakeDeadLetterRepository()
        self._channels = FakeChannelRepository()
        self._dev_messages = FakeDevMessageRepository()
        super().__init__(
            self._runs, self._timers, self._feed, self._dead_letters, self._channels, self._dev_messages
        )

    @property
    def runs(self) -> FakeRunRepository:
        return self._runs

    @property
    def timers(self) -> FakeTimerRepository:
        return self._timers

    @property
    def feed(self) -> FakeFeedRepository:
        return self._feed

    @property
    def dead_letters(self) -> FakeDeadLetterRepository:
        return self._dead_letters

    @property
    def channels(self) -> FakeChannelRepository:
        return self._channels

    @property
    def dev_messages(self) -> FakeDevMessageRepository:
        return self._dev_messages


class FakeEmailSender:
    """Records the emails it is asked to send; can be told to fail the next sends."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self.tries = 0
        self._failures: list[DeliveryError] = []
        self._failing: dict[str, DeliveryError] = {}

    def fail_next(self, times: int = 1, *, permanent: bool = False) -> None:
        self._failures.extend(_smtp_failure(permanent) for _ in range(times))

    def fail_to(self, address: str, *, permanent: bool = False) -> None:
        """Fail every email to `address`."""
        self._failing[address] = _smtp_failure(permanent)

    async def send(self, email: OutgoingEmail) -> str:
        self.tries += 1
        if email.to in self._failing:
            raise self._failing[email.to]
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(email)
        return f"250 2.0.0 queued {email.message_id}"


def _smtp_failure(permanent: bool) -> DeliveryError:
    detail = "SMTP 550: mailbox unavailable" if permanent else "SMTP server unreachable: timed out"
    return DeliveryError(detail, permanent=permanent)


class FakeTextSender:
    """Records SMS and push notifications; can be told to fail the next sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[OutgoingText, ProviderSettings]] = []
        self.failures: list[DeliveryError] = []

    async def send(self, message: OutgoingText, provider: ProviderSettings) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((message, provider))
        return "HTTP 202: accepted"


class FakeWebhookSender:
    """Records webhook requests with the secret they would be signed with."""

    def __init__(self) -> None:
        self.sent: list[tuple[OutgoingWebhook, str]] = []
        self.failures: list[DeliveryError] = []

    async def send(self, request: OutgoingWebhook, secret: str) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((request, secret))
        return "HTTP 200: ok"


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------


def failed_call(status: grpc.Status) -> grpc.aio.AioRpcError:
    """The error a gRPC client sees when the server answers `status`."""
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )
