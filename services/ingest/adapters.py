"""Ingest's PostgreSQL schema `ingest`: tables, repositories and the unit of work."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Row, String, func, select, text
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.database import schema_metadata, table_of
from kernel.outbox import outbox_table
from kernel.unit_of_work import SqlUnitOfWork
from services.ingest.domain import AcceptedEvent, Contact, TriggerRecord

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
    __table_args__ = (Index("ix_events_team_accepted_at", "team_id", "accepted_at"),)

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

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    event_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(IngestBase.metadata)


CONTACTS = table_of(ContactRow)
EVENTS = table_of(EventRow)
TRIGGERS = table_of(TriggerRow)


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
    )


class SqlContactRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def by_external_id(self, team_id: str, external_id: str) -> Contact | None:
        row = (
            await self._session.execute(
                select(CONTACTS).where(CONTACTS.c.team_id == team_id, CONTACTS.c.external_id == external_id)
            )
        ).first()
        return _contact(row) if row else None

    async def by_email(self, team_id: str, email: str) -> Contact | None:
        row = (
            await self._session.execute(
                select(CONTACTS)
                .where(CONTACTS.c.team_id == team_id, CONTACTS.c.email == email)
                .order_by(CONTACTS.c.external_id.is_(None).desc(), CONTACTS.c.created_at)
            )
        ).first()
        return _contact(row) if row else None

    async def add(self, contact: Contact) -> Contact:
        values = _contact_values(contact)
        statement = insert(CONTACTS).values(**values)
        updates: dict[str, Any] = {
            key: statement.excluded[key] for key in values if key not in ("id", "team_id")
        }
        updates["updated_at"] = func.now()
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
        row = (await self._session.execute(statement.returning(*CONTACTS.c))).one()
        return _contact(row)

    async def update(self, contact: Contact) -> Contact:
        values = _contact_values(contact)
        del values["id"], values["team_id"]
        row = (
            await self._session.execute(
                sa_update(CONTACTS)
                .where(CONTACTS.c.id == contact.id, CONTACTS.c.team_id == contact.team_id)
                .values(**values, updated_at=func.now())
                .returning(*CONTACTS.c)
            )
        ).one()
        return _contact(row)


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
        await self._session.execute(
            insert(EVENTS).values(
                id=event.id,
                team_id=event.team_id,
                name=event.name,
                contact_id=event.contact.id if event.contact else None,
                data=event.data,
                variables=event.variables,
                source=asdict(event.source),
                occurred_at=event.occurred_at,
                accepted_at=event.accepted_at,
            )
        )
        await self._session.execute(
            insert(TRIGGERS).values(
                id=event.trigger_id,
                team_id=event.team_id,
                event_id=event.id,
                event_name=event.name,
                status="queued",
                created_at=event.accepted_at,
            )
        )

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None:
        row = (
            await self._session.execute(
                select(TRIGGERS).where(TRIGGERS.c.team_id == team_id, TRIGGERS.c.id == trigger_id)
            )
        ).first()
        if row is None:
            return None
        return TriggerRecord(
            row.id, row.event_id, row.event_name, row.status, row.created_at, row.scheduled_for
        )


class IngestSqlUnitOfWork(SqlUnitOfWork):
    contacts: SqlContactRepository
    events: SqlEventRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.contacts = SqlContactRepository(session)
        self.events = SqlEventRepository(session)
