"""Ingest's domain: accepted events, their triggers, contacts and the rules events obey."""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from kernel.clock import isoformat_ms
from kernel.errors import InvalidArgument, PayloadTooLarge
from kernel.labels import MAX_TAG, MAX_TAGS, TOPIC_PATTERN, TOPIC_RULE

JsonObject = dict[str, Any]

MAX_EXTERNAL_ID = 256
MAX_NAME = 256
MAX_IDEMPOTENCY_KEY = 255
MAX_SOURCE_FIELD = 1024
MAX_BATCH = 500
# How far ahead an event may be scheduled, and how far occurred_at may lie in the future
# (clock skew between the sender and Herald).
MAX_SCHEDULE_AHEAD = timedelta(days=366)
OCCURRED_AT_SKEW = timedelta(minutes=5)
# A direct workflow trigger: at most this many contacts, listed or in the segment named; its
# events carry this name (one per contact; only the named workflow considers them).
MAX_TRIGGER_CONTACTS = 10_000
WORKFLOW_TRIGGERED = "herald.workflow.triggered"


class TriggerStatus:
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class UserInfo:
    """What the sender says about the contact (Sendmator's `user_info`, Sendrealm's identity)."""

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
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def same_profile(self, other: Contact) -> bool:
        return (self.external_id, self.email, self.phone, self.name, self.custom_fields, self.tags) == (
            other.external_id,
            other.email,
            other.phone,
            other.name,
            other.custom_fields,
            other.tags,
        )


@dataclass(frozen=True)
class SendEvent:
    """Command: accept one event for a team (either product document's form)."""

    team_id: str
    event_name: str
    user_info: UserInfo = field(default_factory=UserInfo)
    source: EventSource = field(default_factory=EventSource)
    event_data: JsonObject = field(default_factory=dict)
    variables: JsonObject = field(default_factory=dict)
    trigger_at: str = ""
    idempotency_key: str = ""
    occurred_at: str = ""
    contact_id: str = ""
    # "sendmator" (POST /api/v1/events/send) or "sendrealm" (POST /v1/events): how errors name fields.
    dialect: str = "sendmator"

    def fingerprint(self) -> str:
        """What makes two requests with one idempotency key the same request."""
        document = asdict(self)
        del document["idempotency_key"], document["team_id"], document["dialect"]
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def payload_bytes(self) -> int:
        """The size the project's event_payload_limit_bytes applies to: data, variables and
        custom fields, as compact JSON."""
        sendmator = self.dialect == "sendmator"
        return (
            json_size(self.event_data, "event_data" if sendmator else "payload")
            + json_size(self.variables, "variables")
            + json_size(
                self.user_info.custom_fields, "user_info.custom_fields" if sendmator else "custom_fields"
            )
        )


@dataclass(frozen=True)
class Recipient:
    """A contact a direct trigger names: by Herald's id, the sender's external id, or email."""

    contact_id: str = ""
    external_id: str = ""
    email: str = ""


@dataclass(frozen=True)
class TriggerWorkflow:
    """Command: run one workflow for listed contacts, or for a segment's members, as one trigger."""

    team_id: str
    workflow_key: str
    contacts: tuple[Recipient, ...] = ()
    segment: str = ""
    variables: JsonObject = field(default_factory=dict)
    data: JsonObject = field(default_factory=dict)
    idempotency_key: str = ""

    def fingerprint(self) -> str:
        document = asdict(self)
        del document["idempotency_key"], document["team_id"]
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def payload_bytes(self) -> int:
        return json_size(self.data, "data") + json_size(self.variables, "variables")


@dataclass(frozen=True)
class WorkflowTriggered:
    """The answer to TriggerWorkflow."""

    trigger_id: uuid.UUID
    workflow_key: str
    total_contacts: int
    replayed: bool = False

    @property
    def message(self) -> str:
        contacts = "contact" if self.total_contacts == 1 else "contacts"
        return f"Workflow {self.workflow_key!r} triggered for {self.total_contacts} {contacts}"


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
    scheduled_for: datetime | None = None
    idempotency_key: str | None = None
    # A direct trigger's event: the one workflow it is for, and how many events the trigger has.
    workflow_key: str = ""
    trigger_events: int = 1


@dataclass(frozen=True)
class RateState:
    """Where a project stands against its hourly limit, for the RateLimit headers."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(max(self.remaining, 0)),
            "ratelimit-reset": str(self.reset_seconds),
            "ratelimit-policy": f"{self.limit};w=3600",
        }


@dataclass(frozen=True)
class EventQueued:
    """The answer to SendEvent: what the caller needs to track the event."""

    trigger_id: uuid.UUID
    event_id: uuid.UUID
    job_id: str
    message: str
    scheduled_for: datetime | None = None
    contact_id: uuid.UUID | None = None
    event_name: str = ""
    occurred_at: datetime | None = None
    accepted_at: datetime | None = None
    replayed: bool = False
    rate: RateState | None = None


@dataclass(frozen=True)
class TriggerRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    event_name: str
    status: str
    created_at: datetime
    scheduled_for: datetime | None = None
    contact_id: uuid.UUID | None = None
    occurred_at: datetime | None = None
    # When the trigger was cancelled (None unless it was).
    finished_at: datetime | None = None
    # A direct workflow trigger's number of contacts (None for an event's trigger).
    contacts: int | None = None


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    trigger_id: uuid.UUID


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    origin: str
    created_at: datetime


def queued_message(scheduled_for: datetime | None) -> str:
    if scheduled_for is None:
        return "Event queued successfully"
    return f"Event scheduled for {isoformat_ms(scheduled_for)}"


def _invalid(message: str, reason: str, **metadata: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, metadata=metadata)


def check_text(value: str, field_name: str, limit: int) -> str:
    """`value` if it is at most `limit` characters without control characters."""
    if len(value) > limit:
        raise _invalid(
            f"{field_name} is too long ({len(value)} characters): at most {limit}",
            "FIELD_TOO_LONG",
            field=field_name,
        )
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise _invalid(f"{field_name} must not contain control characters", "INVALID_FIELD", field=field_name)
    return value


def normalize_email(email: str, field_name: str = "user_info.email") -> str:
    """Trimmed, validated (email-validator), Unicode-normalized (NFC) and lowercased: the form
    identity resolution compares."""
    normalized, problem = _checked_email(email)
    if problem:
        raise _invalid(f"Invalid {field_name} {email!r}: {problem}", "INVALID_EMAIL", field=field_name)
    return normalized


# The same addresses and numbers come back with every event about a contact: each process keeps
# the outcome of the last ones it checked.
NORMALIZED_CACHE_SIZE = 65536


@functools.lru_cache(maxsize=NORMALIZED_CACHE_SIZE)
def _checked_email(email: str) -> tuple[str, str]:
    """(the normalized address, "") or ("", what is wrong with it)."""
    text = unicodedata.normalize("NFC", email.strip())
    try:
        validated = validate_email(
            text, check_deliverability=False, globally_deliverable=False, test_environment=True
        )
    except EmailNotValidError as error:
        return "", str(error)
    return validated.normalized.lower(), ""


def normalize_phone(phone: str, field_name: str = "user_info.phone") -> str:
    """E.164 (+14155550100) from any international form (+1 (415) 555-0100)."""
    formatted = _checked_phone(phone)
    if formatted is None:
        raise _invalid(
            f"Invalid {field_name} {phone!r}: give the number in international form with its "
            "country code, e.g. +14155550100",
            "INVALID_PHONE",
            field=field_name,
        )
    return formatted


@functools.lru_cache(maxsize=NORMALIZED_CACHE_SIZE)
def _checked_phone(phone: str) -> str | None:
    """The number in E.164, or None when it is not a phone number."""
    try:
        parsed = phonenumbers.parse(phone.strip(), None)
    except phonenumbers.NumberParseException:
        parsed = None
    # phonenumbers reads letters as keypad digits (1-800-FLOWERS); a contact's number has none.
    digits = sum(char.isdigit() for char in phone) if not any(char.isalpha() for char in phone) else 0
    # E.164 numbers have 8 to 15 digits; phonenumbers' stricter "possible number" test would
    # refuse placeholders such as the product page's +1234567890, which senders do use.
    if (
        parsed is None
        or not 8 <= digits <= 15
        or not (phonenumbers.is_possible_number(parsed) or len(str(parsed.national_number)) >= 7)
    ):
        return None
    formatted: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def parse_instant(text: str) -> datetime | None:
    """An ISO 8601 date-time with a time zone (or Z), in UTC; None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    return moment.astimezone(UTC)


def parse_trigger_at(text: str, now: datetime) -> datetime | None:
    """When a scheduled event fires; None for an event that fires now."""
    if not text:
        return None
    moment = parse_instant(text)
    if moment is None:
        raise _invalid(
            "Invalid trigger_at format: use ISO 8601 with a time zone, e.g. 2024-12-25T10:00:00Z",
            "INVALID_TRIGGER_AT",
            trigger_at=text[:64],
        )
    if moment <= now:
        raise _invalid("trigger_at must be a future date", "TRIGGER_AT_IN_PAST", trigger_at=text[:64])
    if moment > now + MAX_SCHEDULE_AHEAD:
        raise _invalid(
            "trigger_at is too far ahead: schedule at most 366 days in advance",
            "TRIGGER_AT_TOO_FAR",
            trigger_at=text[:64],
        )
    return moment


def parse_occurred_at(text: str, now: datetime) -> datetime:
    if not text:
        return now
    moment = parse_instant(text)
    if moment is None:
        raise _invalid(
            "Invalid occurred_at format: use ISO 8601 with a time zone, e.g. 2026-06-08T14:15:00.000Z",
            "INVALID_OCCURRED_AT",
            occurred_at=text[:64],
        )
    if moment > now + OCCURRED_AT_SKEW:
        raise _invalid(
            "occurred_at must not be in the future", "OCCURRED_AT_IN_FUTURE", occurred_at=text[:64]
        )
    return moment


def parse_contact_id(text: str, field_name: str = "contact_id") -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise _invalid(
            f"Invalid {field_name} {text[:64]!r}: it is Herald's contact id, a UUID; use "
            "external_id for your own id",
            "INVALID_CONTACT_ID",
            field=field_name,
        ) from None


def json_size(value: JsonObject, field_name: str) -> int:
    """Bytes of `value` as compact UTF-8 JSON; InvalidArgument when it holds NaN or Infinity (a
    gRPC Struct can carry them; JSON, and PostgreSQL's jsonb, cannot)."""
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except ValueError:
        raise _invalid(
            f"{field_name} must hold only finite numbers: NaN and Infinity are not JSON",
            "INVALID_NUMBER",
            field=field_name,
        ) from None


def check_payload(size: int, limit: int, what: str = "Event payload") -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes; the project's event_payload_limit_bytes is {limit}",
            metadata={"size": str(size), "limit": str(limit)},
        )


def normalized_user_info(info: UserInfo, dialect: str = "sendmator") -> UserInfo:
    """`info` checked and in the stored form (email and phone normalized, text trimmed); errors
    name the fields as the request's `dialect` calls them."""
    sendmator = dialect == "sendmator"
    prefix, external = ("user_info.", "contact_external_id") if sendmator else ("", "external_id")
    external_id = check_text(info.external_id.strip(), prefix + external, MAX_EXTERNAL_ID)
    return UserInfo(
        external_id=external_id,
        email=normalize_email(info.email, prefix + "email") if info.email.strip() else "",
        phone=normalize_phone(info.phone, prefix + "phone") if info.phone.strip() else "",
        name=check_text(info.name.strip(), prefix + "name", MAX_NAME),
        custom_fields=info.custom_fields,
    )


def check_source(source: EventSource) -> EventSource:
    for name in ("type", "ip", "user_agent"):
        check_text(getattr(source, name), f"source.{name}", MAX_SOURCE_FIELD)
    return source


def check_idempotency_key(key: str) -> str:
    key = key.strip()
    if key and (not key.isprintable() or len(key) > MAX_IDEMPOTENCY_KEY):
        raise _invalid(
            f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} printable characters",
            "INVALID_IDEMPOTENCY_KEY",
        )
    return key


def check_tag(tag: str) -> str:
    tag = tag.strip()
    if not tag:
        raise _invalid("A tag must not be empty", "INVALID_TAG")
    check_text(tag, f"tag {tag[:32]!r}", MAX_TAG)
    return tag


def check_tags(tags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    checked = tuple(dict.fromkeys(check_tag(tag) for tag in tags))
    if len(checked) > MAX_TAGS:
        raise _invalid(f"A contact has at most {MAX_TAGS} tags", "TOO_MANY_TAGS")
    return checked


def check_topic(topic: str) -> str:
    if not TOPIC_PATTERN.fullmatch(topic):
        raise _invalid(
            f"Invalid topic {topic[:64]!r}: {TOPIC_RULE}",
            "INVALID_TOPIC",
        )
    return topic


def check_external_id(external_id: str) -> str:
    external_id = external_id.strip()
    if not external_id:
        raise _invalid("external_id is required", "EXTERNAL_ID_REQUIRED")
    return check_text(external_id, "external_id", MAX_EXTERNAL_ID)


def updated_contact(contact: Contact, info: UserInfo) -> Contact:
    """`contact` with what a (normalized) `info` says about it; absent fields keep their values."""
    return Contact(
        id=contact.id,
        team_id=contact.team_id,
        external_id=contact.external_id or info.external_id or None,
        email=info.email or contact.email,
        phone=info.phone or contact.phone,
        name=info.name or contact.name,
        custom_fields={**contact.custom_fields, **info.custom_fields},
        tags=contact.tags,
        topics=contact.topics,
        created_at=contact.created_at,
        updated_at=contact.updated_at,
    )


def new_contact(team_id: str, info: UserInfo) -> Contact:
    """A contact from a (normalized) `info`."""
    return Contact(
        id=uuid.uuid4(),
        team_id=team_id,
        external_id=info.external_id or None,
        email=info.email or None,
        phone=info.phone or None,
        name=info.name or None,
        custom_fields=dict(info.custom_fields),
    )
