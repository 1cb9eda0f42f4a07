"""Ingest's PostgreSQL schema `ingest`: tables, repositories and the unit of work."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Index, Integer, Row, String, func, literal_column, or_, select, text, tuple_
from sqlalchemy import delete as sa_delete
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.database import changed_rows, driver, insert_many, read_together, schema_metadata, table_of
from kernel.errors import Conflict, ResourceExhausted
from kernel.outbox import delete_naming, outbox_table
from kernel.policy import PolicyChange, ProjectPolicy, load_policy, update_policy
from kernel.unit_of_work import SqlUnitOfWork
from services.ingest.domain import (
    AcceptedEvent,
    Contact,
    EventSource,
    EventType,
    IdempotencyRecord,
    RateState,
    TriggerRecord,
    TriggerStatus,
)
from services.ingest.groups import Snapshot, Writes
from services.ingest.handlers import Draft

SCHEMA = "ingest"


class IngestBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class ContactRow(IngestBase):
    __tablename__ = "contacts"
    __table_args__ = (
        Index(
            "uq_contacts_team_external_id",
            "team_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
        ),
        Index(
            "uq_contacts_team_email_anonymous",
            "team_id",
            "email",
            unique=True,
            postgresql_where=text("external_id IS NULL AND email IS NOT NULL"),
        ),
        Index("ix_contacts_team_email", "team_id", "email"),
        # GET /api/v1/contacts: newest first, and found by a prefix of the external id or email.
        Index("ix_contacts_team_created", "team_id", "created_at", "id"),
        Index(
            "ix_contacts_team_external_id_prefix",
            "team_id",
            "external_id",
            postgresql_ops={"external_id": "text_pattern_ops"},
        ),
        Index(
            "ix_contacts_team_email_prefix", "team_id", "email", postgresql_ops={"email": "text_pattern_ops"}
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(256))
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(128)), default=list)
    topics: Mapped[list[str]] = mapped_column(ARRAY(String(128)), default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EventRow(IngestBase):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_team_accepted_at", "team_id", "accepted_at"),
        Index("ix_events_team_contact", "team_id", "contact_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    contact_id: Mapped[uuid.UUID | None]
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source: Mapped[dict[str, Any]] = mapped_column(JSONB)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TriggerRow(IngestBase):
    __tablename__ = "triggers"
    __table_args__ = (
        Index(
            "ix_triggers_due",
            "scheduled_for",
            postgresql_where=text("status = 'scheduled'"),
        ),
        Index("ix_triggers_team_created", "team_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    event_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A direct workflow trigger: how many contacts (and events) it has; None for an event's trigger.
    contacts: Mapped[int | None] = mapped_column(Integer)


class IdempotencyKeyRow(IngestBase):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    trigger_id: Mapped[uuid.UUID]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventTypeRow(IngestBase):
    __tablename__ = "event_types"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    origin: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RateCounterRow(IngestBase):
    __tablename__ = "rate_counters"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


OUTBOX = outbox_table(IngestBase.metadata)


CONTACTS = table_of(ContactRow)
EVENTS = table_of(EventRow)
TRIGGERS = table_of(TriggerRow)
IDEMPOTENCY_KEYS = table_of(IdempotencyKeyRow)
EVENT_TYPES = table_of(EventTypeRow)
RATE_COUNTERS = table_of(RateCounterRow)
WINDOW = timedelta(hours=1)


def _contact(row: Row[Any]) -> Contact:
    return Contact(
        id=row.id,
        team_id=row.team_id,
        external_id=row.external_id,
        email=row.email,
        phone=row.phone,
        name=row.name,
        custom_fields=dict(row.custom_fields or {}),
        tags=tuple(row.tags or ()),
        topics=tuple(row.topics or ()),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlContactRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def _one(self, *conditions: Any, lock: bool = False) -> Contact | None:
        query = select(CONTACTS).where(*conditions)
        if lock:
            query = query.with_for_update()
        row = (await self._session.execute(query)).first()
        return _contact(row) if row else None

    async def by_id(self, team_id: str, contact_id: uuid.UUID) -> Contact | None:
        return await self._one(CONTACTS.c.team_id == team_id, CONTACTS.c.id == contact_id)

    async def by_external_id(self, team_id: str, external_id: str, *, lock: bool = False) -> Contact | None:
        return await self._one(
            CONTACTS.c.team_id == team_id, CONTACTS.c.external_id == external_id, lock=lock
        )

    async def by_email(self, team_id: str, email: str) -> Contact | None:
        row = (
            await self._session.execute(
                select(CONTACTS)
                .where(CONTACTS.c.team_id == team_id, CONTACTS.c.email == email)
                .order_by(CONTACTS.c.external_id.is_(None).desc(), CONTACTS.c.created_at)
                .limit(1)
            )
        ).first()
        return _contact(row) if row else None

    async def search(
        self, team_id: str, prefix: str, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[Contact]:
        conditions: list[Any] = [CONTACTS.c.team_id == team_id]
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(
                or_(
                    CONTACTS.c.external_id.like(f"{escaped}%"),
                    CONTACTS.c.email.like(f"{escaped.lower()}%"),
                )
            )
        if after is not None:
            conditions.append(tuple_(CONTACTS.c.created_at, CONTACTS.c.id) < tuple_(*after))
        rows = await self._session.execute(
            select(CONTACTS)
            .where(*conditions)
            .order_by(CONTACTS.c.created_at.desc(), CONTACTS.c.id.desc())
            .limit(limit)
        )
        return [_contact(row) for row in rows]

    async def add(self, contact: Contact) -> tuple[Contact, bool]:
        values = _contact_values(contact)
        statement = insert(CONTACTS).values(**values)
        stored = CONTACTS.c
        # Another request created the same identity first: merge what this one says into it.
        updates: dict[str, Any] = {
            "email": func.coalesce(statement.excluded.email, stored.email),
            "phone": func.coalesce(statement.excluded.phone, stored.phone),
            "name": func.coalesce(statement.excluded.name, stored.name),
            "custom_fields": stored.custom_fields.op("||")(statement.excluded.custom_fields),
            "updated_at": func.now(),
        }
        if contact.external_id is not None:
            statement = statement.on_conflict_do_update(
                index_elements=["team_id", "external_id"],
                index_where=text("external_id IS NOT NULL"),
                set_=updates,
            )
        elif contact.email is not None:
            statement = statement.on_conflict_do_update(
                index_elements=["team_id", "email"],
                index_where=text("external_id IS NULL AND email IS NOT NULL"),
                set_=updates,
            )
        created: Any = literal_column("xmax = 0").label("created")
        row = (await self._session.execute(statement.returning(*CONTACTS.c, created))).one()
        return _contact(row), bool(row.created)

    async def update(self, contact: Contact) -> Contact:
        values = _contact_values(contact)
        del values["id"], values["team_id"]
        statement = (
            sa_update(CONTACTS)
            .where(CONTACTS.c.id == contact.id, CONTACTS.c.team_id == contact.team_id)
            .values(**values, updated_at=func.now())
            .returning(*CONTACTS.c)
        )
        try:
            async with self._session.begin_nested():
                row = (await self._session.execute(statement)).one()
        except IntegrityError:
            raise Conflict(
                "These contact details belong to another contact: its external id (or, for contacts "
                "without one, its email) is already in use",
                reason="CONTACT_IDENTITY_CLASH",
            ) from None
        return _contact(row)

    async def erase(self, contact: Contact) -> dict[str, int]:
        """Delete the contact and every row of ingest that holds its personal data: its events
        (the head event of a direct trigger of several contacts is emptied instead, so that the
        trigger of the others stays whole), the triggers of its own events, with their
        idempotency keys (a key is the client's text), and outbox rows naming it."""
        team_id = contact.team_id
        events = select(EVENTS.c.id).where(EVENTS.c.team_id == team_id, EVENTS.c.contact_id == contact.id)
        triggers = (
            await self._session.execute(
                sa_delete(TRIGGERS)
                .where(TRIGGERS.c.event_id.in_(events), TRIGGERS.c.contacts.is_(None))
                .returning(TRIGGERS.c.id)
            )
        ).all()
        trigger_ids = [row.id for row in triggers]
        keys = 0
        if trigger_ids:
            keys = await changed_rows(
                self._session,
                sa_delete(IDEMPOTENCY_KEYS).where(
                    IDEMPOTENCY_KEYS.c.team_id == team_id, IDEMPOTENCY_KEYS.c.trigger_id.in_(trigger_ids)
                ),
            )
        # The head event of a trigger of several contacts, which is left (emptied).
        shared = select(TRIGGERS.c.id).where(TRIGGERS.c.event_id == EVENTS.c.id).exists()
        emptied = await changed_rows(
            self._session,
            sa_update(EVENTS)
            .where(EVENTS.c.team_id == team_id, EVENTS.c.contact_id == contact.id, shared)
            .values(contact_id=None, data={}, variables={}, source={}),
        )
        deleted = await changed_rows(
            self._session,
            sa_delete(EVENTS).where(EVENTS.c.team_id == team_id, EVENTS.c.contact_id == contact.id),
        )
        outbox = await delete_naming(self._session, OUTBOX, team_id, contact_identifiers(contact))
        contacts = await changed_rows(
            self._session,
            sa_delete(CONTACTS).where(CONTACTS.c.team_id == team_id, CONTACTS.c.id == contact.id),
        )
        return {
            "ingest.contacts": contacts,
            "ingest.events": deleted + emptied,
            "ingest.triggers": len(trigger_ids),
            "ingest.idempotency_keys": keys,
            "ingest.outbox": outbox,
        }

    async def named(
        self, team_id: str, ids: Sequence[uuid.UUID], external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        named = [
            column.in_(values)
            for column, values in (
                (CONTACTS.c.id, ids),
                (CONTACTS.c.external_id, external_ids),
                (CONTACTS.c.email, emails),
            )
            if values
        ]
        if not named:
            return []
        rows = await self._session.execute(select(CONTACTS).where(CONTACTS.c.team_id == team_id, or_(*named)))
        return [_contact(row) for row in rows]

    async def page(self, team_id: str, after: uuid.UUID | None, limit: int) -> list[Contact]:
        query = select(CONTACTS).where(CONTACTS.c.team_id == team_id).order_by(CONTACTS.c.id).limit(limit)
        if after is not None:
            query = query.where(CONTACTS.c.id > after)
        return [_contact(row) for row in await self._session.execute(query)]


def contact_identifiers(contact: Contact) -> list[str]:
    """What names the contact in a message: its id, external id, email and phone."""
    values = [str(contact.id), contact.external_id, contact.email, contact.phone]
    return [value for value in values if value]


def _contact_values(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "team_id": contact.team_id,
        "external_id": contact.external_id,
        "email": contact.email,
        "phone": contact.phone,
        "name": contact.name,
        "custom_fields": contact.custom_fields,
        "tags": list(contact.tags),
        "topics": list(contact.topics),
    }


class SqlEventRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, event: AcceptedEvent) -> None:
        await self._session.execute(insert(EVENTS).values(**_event_values(event)))
        await self._session.execute(insert(TRIGGERS).values(**_trigger_values(event)))

    async def add_trigger(self, events: Sequence[AcceptedEvent]) -> None:
        await self._session.execute(insert(EVENTS), [_event_values(event) for event in events])
        trigger = _trigger_values(events[0])
        await self._session.execute(insert(TRIGGERS).values(**trigger, contacts=len(events)))

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None:
        row = (
            await self._session.execute(
                select(TRIGGERS, EVENTS.c.contact_id, EVENTS.c.occurred_at)
                .join(EVENTS, EVENTS.c.id == TRIGGERS.c.event_id)
                .where(TRIGGERS.c.team_id == team_id, TRIGGERS.c.id == trigger_id)
            )
        ).first()
        return _trigger(row) if row else None

    async def cancel(self, team_id: str, trigger_id: uuid.UUID, now: datetime) -> TriggerRecord | None:
        cancelled = (
            sa_update(TRIGGERS)
            .where(
                TRIGGERS.c.team_id == team_id,
                TRIGGERS.c.id == trigger_id,
                TRIGGERS.c.status == TriggerStatus.SCHEDULED,
            )
            .values(status=TriggerStatus.CANCELLED, cancelled_at=now)
            .returning(TRIGGERS.c.id)
        )
        if (await self._session.execute(cancelled)).first() is None:
            return None
        return await self.trigger(team_id, trigger_id)

    async def claim_due(self, now: datetime, limit: int) -> list[AcceptedEvent]:
        due = (
            select(TRIGGERS.c.id)
            .where(TRIGGERS.c.status == TriggerStatus.SCHEDULED, TRIGGERS.c.scheduled_for <= now)
            .order_by(TRIGGERS.c.scheduled_for)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        fired = (
            await self._session.execute(
                sa_update(TRIGGERS)
                .where(TRIGGERS.c.id.in_(due))
                .values(status=TriggerStatus.QUEUED)
                .returning(TRIGGERS.c.id, TRIGGERS.c.event_id, TRIGGERS.c.scheduled_for)
            )
        ).all()
        if not fired:
            return []
        triggers = {row.event_id: row for row in fired}
        rows = (
            await self._session.execute(
                select(
                    EVENTS,
                    *(c.label(f"known_{c.name}") for c in CONTACTS.c),
                )
                .outerjoin(CONTACTS, CONTACTS.c.id == EVENTS.c.contact_id)
                .where(EVENTS.c.id.in_(list(triggers)))
            )
        ).all()
        events = []
        for row in rows:
            contact = None
            if row.known_id is not None:
                contact = Contact(
                    id=row.known_id,
                    team_id=row.team_id,
                    external_id=row.known_external_id,
                    email=row.known_email,
                    phone=row.known_phone,
                    name=row.known_name,
                    custom_fields=dict(row.known_custom_fields or {}),
                    tags=tuple(row.known_tags or ()),
                    topics=tuple(row.known_topics or ()),
                )
            trigger = triggers[row.id]
            events.append(
                AcceptedEvent(
                    id=row.id,
                    trigger_id=trigger.id,
                    team_id=row.team_id,
                    name=row.name,
                    contact=contact,
                    data=dict(row.data),
                    variables=dict(row.variables),
                    source=EventSource(**row.source),
                    occurred_at=row.occurred_at,
                    accepted_at=row.accepted_at,
                    scheduled_for=trigger.scheduled_for,
                )
            )
        return events

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Delete up to `limit` of the team's events accepted before `before` (never one still
        scheduled) with their triggers; how many rows went from each table."""
        waiting = select(TRIGGERS.c.event_id).where(
            TRIGGERS.c.team_id == team_id, TRIGGERS.c.status == TriggerStatus.SCHEDULED
        )
        old = (
            select(EVENTS.c.id)
            .where(EVENTS.c.team_id == team_id, EVENTS.c.accepted_at < before, EVENTS.c.id.not_in(waiting))
            .limit(limit)
            .scalar_subquery()
        )
        gone = (
            await self._session.execute(sa_delete(EVENTS).where(EVENTS.c.id.in_(old)).returning(EVENTS.c.id))
        ).all()
        ids = [row.id for row in gone]
        triggers = 0
        if ids:
            triggers = await changed_rows(
                self._session, sa_delete(TRIGGERS).where(TRIGGERS.c.event_id.in_(ids))
            )
        return {"ingest.events": len(ids), "ingest.triggers": triggers}


def _event_values(event: AcceptedEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "team_id": event.team_id,
        "name": event.name,
        "contact_id": event.contact.id if event.contact else None,
        "data": event.data,
        "variables": event.variables,
        "source": asdict(event.source),
        "occurred_at": event.occurred_at,
        "accepted_at": event.accepted_at,
    }


def _trigger_values(event: AcceptedEvent) -> dict[str, Any]:
    return {
        "id": event.trigger_id,
        "team_id": event.team_id,
        "event_id": event.id,
        "event_name": event.name,
        "status": TriggerStatus.SCHEDULED if event.scheduled_for else TriggerStatus.QUEUED,
        "created_at": event.accepted_at,
        "scheduled_for": event.scheduled_for,
    }


def _trigger(row: Row[Any]) -> TriggerRecord:
    return TriggerRecord(
        row.id,
        row.event_id,
        row.event_name,
        row.status,
        row.created_at,
        row.scheduled_for,
        row.contact_id,
        row.occurred_at,
        row.cancelled_at,
        row.contacts,
    )


# Claim idempotency keys; an expired key is free again: take it over. Inserted or taken over, a
# row counts as claimed (insert_many's count); a key in force is left as it is.
CLAIM_KEYS = (
    "ON CONFLICT (team_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
    "trigger_id = EXCLUDED.trigger_id, created_at = now(), expires_at = EXCLUDED.expires_at "
    "WHERE idempotency_keys.expires_at < now()"
)


def _claim_values(
    team_id: str, key: str, fingerprint: str, trigger_id: uuid.UUID, expires_at: datetime
) -> dict[str, Any]:
    return {
        "team_id": team_id,
        "key": key,
        "fingerprint": fingerprint,
        "trigger_id": trigger_id,
        "expires_at": expires_at,
    }


class SqlIdempotencyRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def claim(
        self, team_id: str, key: str, fingerprint: str, trigger_id: uuid.UUID, expires_at: datetime
    ) -> IdempotencyRecord | None:
        claim = _claim_values(team_id, key, fingerprint, trigger_id, expires_at)
        if await insert_many(await driver(self._session), IDEMPOTENCY_KEYS, [claim], on_conflict=CLAIM_KEYS):
            return None
        row = (
            await self._session.execute(
                select(IDEMPOTENCY_KEYS.c.fingerprint, IDEMPOTENCY_KEYS.c.trigger_id).where(
                    IDEMPOTENCY_KEYS.c.team_id == team_id, IDEMPOTENCY_KEYS.c.key == key
                )
            )
        ).one()
        return IdempotencyRecord(row.fingerprint, row.trigger_id)

    async def purge_expired(self, team_id: str, now: datetime, limit: int) -> int:
        expired = (
            select(IDEMPOTENCY_KEYS.c.team_id, IDEMPOTENCY_KEYS.c.key)
            .where(IDEMPOTENCY_KEYS.c.team_id == team_id, IDEMPOTENCY_KEYS.c.expires_at < now)
            .limit(limit)
        )
        result = await self._session.execute(
            sa_delete(IDEMPOTENCY_KEYS)
            .where(tuple_(IDEMPOTENCY_KEYS.c.team_id, IDEMPOTENCY_KEYS.c.key).in_(expired))
            .returning(IDEMPOTENCY_KEYS.c.key)
        )
        return len(result.all())


def _event_type(row: Row[Any]) -> EventType:
    return EventType(row.name, row.description, row.origin, row.created_at)


class SqlEventTypeRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def catalogue(self, team_id: str, name: str) -> None:
        await self._session.execute(
            insert(EVENT_TYPES)
            .values(team_id=team_id, name=name, description="", origin="catalogued")
            .on_conflict_do_nothing(index_elements=["team_id", "name"])
        )

    async def exists(self, team_id: str, name: str) -> bool:
        row = (
            await self._session.execute(
                select(EVENT_TYPES.c.name).where(EVENT_TYPES.c.team_id == team_id, EVENT_TYPES.c.name == name)
            )
        ).first()
        return row is not None

    async def register(self, team_id: str, name: str, description: str) -> EventType:
        statement = insert(EVENT_TYPES).values(
            team_id=team_id, name=name, description=description, origin="registered"
        )
        statement = statement.on_conflict_do_update(
            index_elements=["team_id", "name"],
            set_={"description": statement.excluded.description, "origin": "registered"},
        )
        return _event_type((await self._session.execute(statement.returning(*EVENT_TYPES.c))).one())

    async def list(self, team_id: str) -> list[EventType]:
        rows = await self._session.execute(
            select(EVENT_TYPES).where(EVENT_TYPES.c.team_id == team_id).order_by(EVENT_TYPES.c.name)
        )
        return [_event_type(row) for row in rows]

    async def delete(self, team_id: str, name: str) -> bool:
        result = await self._session.execute(
            sa_delete(EVENT_TYPES)
            .where(EVENT_TYPES.c.team_id == team_id, EVENT_TYPES.c.name == name)
            .returning(EVENT_TYPES.c.name)
        )
        return result.first() is not None


class SqlPolicyRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, team_id: str) -> ProjectPolicy:
        return await load_policy(self._session, team_id)

    async def update(self, team_id: str, change: PolicyChange) -> ProjectPolicy:
        return await update_policy(self._session, team_id, change)


# Count events in the window's row, unless that would pass the limit (then no row comes back).
COUNT_RATE = (
    f"INSERT INTO {SCHEMA}.rate_counters (team_id, window_start, count) "
    "VALUES (%(team_id)s, %(window_start)s, %(count)s) "
    "ON CONFLICT (team_id, window_start) DO UPDATE SET count = rate_counters.count + EXCLUDED.count "
    "WHERE rate_counters.count + EXCLUDED.count <= %(limit)s RETURNING count"
)


async def consume_rate(
    session: AsyncSession, team_id: str, limit: int, count: int, now: datetime
) -> RateState:
    """Count `count` events against the team's hourly `limit` in `session`'s transaction (a
    conditional upsert on the window's row); ResourceExhausted when that would exceed it."""
    window_start = now.replace(minute=0, second=0, microsecond=0)
    reset = max(1, math.ceil((window_start + WINDOW - now).total_seconds()))
    used: int | None = None
    if count <= limit:
        cursor = await (await driver(session)).execute(
            COUNT_RATE, {"team_id": team_id, "window_start": window_start, "count": count, "limit": limit}
        )
        row = await cursor.fetchone()
        used = row[0] if row else None
    if used is not None:
        return RateState(limit=limit, remaining=limit - used, reset_seconds=reset)
    state = RateState(limit=limit, remaining=0, reset_seconds=reset)
    raise ResourceExhausted(
        f"Rate limit exceeded: this project may send {limit} events per hour; try again in {reset} seconds",
        reason="RATE_LIMITED",
        metadata={"limit": str(limit), "retry_after": str(reset)},
        headers={**state.headers(), "retry-after": str(reset)},
    )


class SqlRateLimiter:
    """Fixed hourly windows counted in PostgreSQL, so every ingest replica shares one count."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def consume(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        async with self._sessions() as session, session.begin():
            return await consume_rate(session, team_id, limit, count, now)


class IngestSqlUnitOfWork(SqlUnitOfWork):
    contacts: SqlContactRepository
    events: SqlEventRepository
    idempotency: SqlIdempotencyRepository
    event_types: SqlEventTypeRepository
    policies: SqlPolicyRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.contacts = SqlContactRepository(session)
        self.events = SqlEventRepository(session)
        self.idempotency = SqlIdempotencyRepository(session)
        self.event_types = SqlEventTypeRepository(session)
        self.policies = SqlPolicyRepository(session)


# A group's snapshot reads with statements of fixed text, whatever the number of events: each
# names its rows as pairs (team id, value) in two arrays. (An IN list would make a new statement,
# to compile and plan, for every size of group.) They run on the session's psycopg connection.
_CONTACT_COLUMNS = ", ".join(f"c.{column.name}" for column in CONTACTS.c)
SNAPSHOT_CONTACTS = (
    f"SELECT {_CONTACT_COLUMNS} FROM {SCHEMA}.contacts c WHERE c.id IN ("
    + " UNION ".join(
        f"SELECT c.id FROM {SCHEMA}.contacts c "
        f"JOIN unnest(%({column}_teams)s::text[], %({column}s)s::{kind}[]) AS w(team_id, value) "
        f"ON c.team_id = w.team_id AND c.{column} = w.value"
        for column, kind in (("id", "uuid"), ("external_id", "text"), ("email", "text"))
    )
    + ")"
)
SNAPSHOT_KEYS = (
    f"SELECT k.team_id, k.key, k.fingerprint, k.trigger_id FROM {SCHEMA}.idempotency_keys k "
    "JOIN unnest(%(key_teams)s::text[], %(keys)s::text[]) AS w(team_id, value) "
    "ON k.team_id = w.team_id AND k.key = w.value WHERE k.expires_at >= now()"
)
SNAPSHOT_EVENT_TYPES = (
    f"SELECT t.team_id, t.name FROM {SCHEMA}.event_types t "
    "JOIN unnest(%(name_teams)s::text[], %(names)s::text[]) AS w(team_id, value) "
    "ON t.team_id = w.team_id AND t.name = w.value"
)


def _pairs(column: str, pairs: set[tuple[str, Any]]) -> dict[str, list[Any]]:
    """The parameters of one (team id, value) array pair of the snapshot statements."""
    return {f"{column}_teams": [team for team, _ in pairs], f"{column}s": [value for _, value in pairs]}


class IngestGroupUnitOfWork(IngestSqlUnitOfWork):
    """A group's transaction (services.ingest.groups): one snapshot query per table, one
    multi-row statement per table, all of fixed text, on the session's psycopg connection."""

    async def snapshot(self, drafts: Sequence[Draft]) -> Snapshot:
        ids = {(d.event.team_id, d.contact_id) for d in drafts if d.contact_id is not None}
        external_ids = {(d.event.team_id, d.info.external_id) for d in drafts if d.info.external_id}
        emails = {(d.event.team_id, d.info.email) for d in drafts if d.info.email}
        keys = {(d.event.team_id, d.event.idempotency_key) for d in drafts if d.event.idempotency_key}
        checked = {(d.event.team_id, d.event.name) for d in drafts if d.policy.unknown_events != "accept"}
        reads: list[tuple[str, dict[str, Any]]] = []
        if ids or external_ids or emails:
            contacts = {**_pairs("id", ids), **_pairs("external_id", external_ids), **_pairs("email", emails)}
            reads.append((SNAPSHOT_CONTACTS, contacts))
        if keys:
            reads.append((SNAPSHOT_KEYS, _pairs("key", keys)))
        if checked:
            reads.append((SNAPSHOT_EVENT_TYPES, _pairs("name", checked)))
        found = dict(
            zip((statement for statement, _ in reads), await read_together(self.session, reads), strict=True)
        )
        return Snapshot(
            contacts=[_contact(row) for row in found.get(SNAPSHOT_CONTACTS, ())],
            keys={
                (row.team_id, row.key): IdempotencyRecord(row.fingerprint, row.trigger_id)
                for row in found.get(SNAPSHOT_KEYS, ())
            },
            event_types={(row.team_id, row.name) for row in found.get(SNAPSHOT_EVENT_TYPES, ())},
        )

    async def consume_rate(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        return await consume_rate(self.session, team_id, limit, count, now)

    async def write(self, writes: Writes) -> None:
        connection = await driver(self.session)
        if writes.claims:
            claims = [
                _claim_values(claim.team_id, claim.key, claim.fingerprint, claim.trigger_id, claim.expires_at)
                for claim in writes.claims
            ]
            if await insert_many(connection, IDEMPOTENCY_KEYS, claims, on_conflict=CLAIM_KEYS) != len(claims):
                raise Conflict("An idempotency key of the group was claimed by another request first")
        # The rest in one round trip; the first statement that fails (a contact another request
        # created meanwhile: a plain INSERT) raises when the pipeline ends, before any commit.
        async with connection.pipeline():
            if writes.contacts:
                await insert_many(
                    connection, CONTACTS, [_contact_values(contact) for contact in writes.contacts]
                )
            if writes.catalogued:
                catalogued = [
                    {"team_id": team_id, "name": name, "description": "", "origin": "catalogued"}
                    for team_id, name in writes.catalogued
                ]
                await insert_many(
                    connection, EVENT_TYPES, catalogued, on_conflict="ON CONFLICT (team_id, name) DO NOTHING"
                )
            await insert_many(connection, EVENTS, [_event_values(event) for event in writes.events])
            await insert_many(connection, TRIGGERS, [_trigger_values(event) for event in writes.events])
            await self.stage_pending()
