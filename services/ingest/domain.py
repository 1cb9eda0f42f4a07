"""Ingest's domain: accepted events, their triggers, contacts and the rules events obey."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class UserInfo:
    """What the sender says about the contact (Sendmator's `user_info`)."""

    external_id: str = ""
    email: str = ""
    phone: str = ""
    name: str = ""
    custom_fields: JsonObject = field(default_factory=dict)

    @property
    def identifies_someone(self) -> bool:
        return bool(self.external_id or self.email)


@dataclass(frozen=True)
class EventSource:
    type: str = ""
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class Contact:
    id: uuid.UUID
    team_id: str
    external_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    custom_fields: JsonObject = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class SendEvent:
    """Command: accept one event for a team."""

    team_id: str
    event_name: str
    user_info: UserInfo = field(default_factory=UserInfo)
    source: EventSource = field(default_factory=EventSource)
    event_data: JsonObject = field(default_factory=dict)
    variables: JsonObject = field(default_factory=dict)


@dataclass(frozen=True)
class AcceptedEvent:
    id: uuid.UUID
    trigger_id: uuid.UUID
    team_id: str
    name: str
    contact: Contact | None
    data: JsonObject
    variables: JsonObject
    source: EventSource
    occurred_at: datetime
    accepted_at: datetime


@dataclass(frozen=True)
class EventQueued:
    """The answer to SendEvent: what the caller needs to track the event."""

    trigger_id: uuid.UUID
    event_id: uuid.UUID
    job_id: str
    message: str


@dataclass(frozen=True)
class TriggerRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    event_name: str
    status: str
    created_at: datetime
    scheduled_for: datetime | None = None


def normalize_email(email: str) -> str:
    """Trimmed, Unicode-normalized (NFC), lowercased: the form identity resolution compares."""
    return unicodedata.normalize("NFC", email.strip()).lower()


def updated_contact(contact: Contact, info: UserInfo) -> Contact:
    """`contact` with what `info` says about it; absent fields keep their stored values."""
    return Contact(
        id=contact.id,
        team_id=contact.team_id,
        external_id=contact.external_id or info.external_id or None,
        email=normalize_email(info.email) if info.email else contact.email,
        phone=info.phone.strip() or contact.phone,
        name=info.name.strip() or contact.name,
        custom_fields={**contact.custom_fields, **info.custom_fields},
        tags=contact.tags,
        topics=contact.topics,
    )


def new_contact(team_id: str, info: UserInfo) -> Contact:
    return Contact(
        id=uuid.uuid4(),
        team_id=team_id,
        external_id=info.external_id or None,
        email=normalize_email(info.email) if info.email else None,
        phone=info.phone.strip() or None,
        name=info.name.strip() or None,
        custom_fields=dict(info.custom_fields),
    )
