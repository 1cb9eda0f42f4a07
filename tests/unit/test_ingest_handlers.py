"""Ingest's use cases: accepting events (now or at trigger_at), resolving their contact, the
project's policy, idempotency and rate limits, batches, cancelling and firing scheduled triggers,
the contacts API, event types and retention."""

from __future__ import annotations

import dataclasses
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, tracking_pb2
from kernel.bus import OutgoingMessage
from kernel.clock import from_timestamp
from kernel.errors import (
    Conflict,
    HeraldError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
    Unavailable,
    Unprocessable,
    http_status_of,
)
from kernel.policy import PolicyChange, ProjectPolicy
from kernel.structs import from_struct
from services.ingest import handlers
from services.ingest.domain import (
    AcceptedEvent,
    Contact,
    EventQueued,
    EventSource,
    SendEvent,
    UserInfo,
    normalize_email,
    normalize_phone,
)
from services.ingest.groups import GroupCommit
from services.ingest.handlers import (
    ContactProfile,
    Intake,
    cancel_trigger,
    change_tags,
    delete_event_type,
    erase_contact,
    fire_due,
    get_contact,
    get_policy,
    get_trigger_record,
    list_event_types,
    purge,
    put_contact,
    register_event_type,
    send_batch,
    send_event,
    subscribe_topic,
    unsubscribe_topic,
    update_policy,
)
from tests.unit.fakes import FakeGroupUnitOfWork, FakeIngestUnitOfWork, FakePolicySource, FakeRateLimiter

TEAM = "team-1"
NOW = datetime(2029, 12, 1, 9, 0, tzinfo=UTC)
TRIGGER_AT = "2030-01-15T10:00:00Z"
FIRES_AT = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)
INVALID_TRIGGER_AT = "Invalid trigger_at format: use ISO 8601 with a time zone, e.g. 2024-12-25T10:00:00Z"


class Clock:
    """The time the handlers (and the fakes) read, moved on by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Ingest:
    """One fake ingest: its unit of work, the policies it reads and its rate limiter."""

    uow: FakeIngestUnitOfWork
    policies: FakePolicySource
    rates: FakeRateLimiter
    clock: Clock
    # Events accepted in groups (services.ingest.groups), as the ingest process does, or each alone.
    grouped: bool = False

    @property
    def intake(self) -> Intake:
        alone = Intake(lambda: self.uow, self.policies, self.rates)
        if not self.grouped:
            return alone
        return dataclasses.replace(alone, groups=self.group_commit(alone))

    def group_commit(self, alone: Intake) -> GroupCommit:
        def group() -> FakeGroupUnitOfWork:
            return FakeGroupUnitOfWork(self.uow, self.rates, self.clock)

        return GroupCommit(group, lambda draft: handlers.store_alone(draft, alone))

    def set_policy(self, team_id: str = TEAM, **fields: Any) -> None:
        self.policies.policies[team_id] = ProjectPolicy(**fields)

    async def send(self, **fields: Any) -> EventQueued:
        return await send_event(a_signup(**fields), self.intake)

    def on_subject(self, subject: str) -> list[OutgoingMessage]:
        return [message for message in self.uow.published if message.subject == subject]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(NOW)
    monkeypatch.setattr(handlers, "utcnow", clock)
    return clock


@pytest.fixture(params=["alone", "grouped"])
def ingest(clock: Clock, request: pytest.FixtureRequest) -> Ingest:
    """Every use case runs twice: events stored each in a transaction of its own, and in groups."""
    return Ingest(
        FakeIngestUnitOfWork(clock=clock),
        FakePolicySource(),
        FakeRateLimiter(),
        clock,
        grouped=request.param == "grouped",
    )


def a_signup(**fields: Any) -> SendEvent:
    values: dict[str, Any] = {"team_id": TEAM, "event_name": "user_signup"}
    values.update(fields)
    return SendEvent(**values)


def events_named(ingest: Ingest, name: str, team_id: str = TEAM) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(m.payload) for m in ingest.on_subject(f"events.{team_id}.{name}")]


def published_event(ingest: Ingest, name: str = "user_signup") -> event_pb2.Event:
    [event] = events_named(ingest, name)
    return event


def tracking_records(ingest: Ingest, kind: str, team_id: str = TEAM) -> list[tracking_pb2.TrackingRecord]:
    return [
        tracking_pb2.TrackingRecord.FromString(m.payload)
        for m in ingest.on_subject(f"tracking.{team_id}.{kind}")
    ]


def stored_contacts(ingest: Ingest) -> list[Contact]:
    return list(ingest.uow.contacts.rows.values())


def stored_events(ingest: Ingest, name: str | None = None) -> list[AcceptedEvent]:
    return [event for event in ingest.uow.events.events if name is None or event.name == name]


def assert_nothing_kept(ingest: Ingest) -> None:
    assert ingest.uow.events.rows == {} and ingest.uow.events.triggers == {}
    assert ingest.uow.contacts.rows == {}
    assert ingest.uow.idempotency.rows == {}
    assert ingest.uow.published == [] and ingest.uow.deferred == []
    assert ingest.uow.commits == 0


# --------------------------------------------------------------------------------------------
# send_event
# --------------------------------------------------------------------------------------------


async def test_send_event_publishes_the_event_and_its_accepted_record(ingest: Ingest) -> None:
    queued = await ingest.send(event_name="order.completed")

    event_message, tracking = ingest.uow.published
    assert event_message.subject == "events.team-1.order.completed"
    assert event_message.msg_id == str(queued.event_id)
    assert event_message.project_id == TEAM
    assert tracking.subject == "tracking.team-1.trigger_accepted"
    assert tracking.msg_id == f"trigger_accepted:{queued.trigger_id}"
    record = tracking_pb2.TrackingRecord.FromString(tracking.payload)
    assert record.trigger_id == str(queued.trigger_id)
    assert record.trigger_accepted.event_id == str(queued.event_id)
    assert record.trigger_accepted.event_name == "order.completed"
    assert from_timestamp(record.trigger_accepted.created_at) == NOW
    assert not record.trigger_accepted.HasField("scheduled_for")
    assert record.HasField("recorded_at")


async def test_send_event_answers_what_the_caller_needs_to_track_it(ingest: Ingest) -> None:
    queued = await ingest.send(event_name="order.completed")

    assert queued.message == "Event queued successfully"
    assert queued.event_name == "order.completed"
    assert queued.scheduled_for is None
    assert queued.occurred_at == queued.accepted_at == NOW
    assert queued.contact_id is None
    assert queued.replayed is False
    assert queued.rate is None  # the default (self-hosted) plan has no limit


async def test_send_event_answers_the_event_message_sequence_as_job_id(ingest: Ingest) -> None:
    first = await ingest.send()
    second = await ingest.send()

    # Each event publishes two messages: the event (sequence 1, then 3) and its tracking record.
    assert (first.job_id, second.job_id) == ("1", "3")
    assert first.message == second.message == "Event queued successfully"
    assert first.trigger_id != second.trigger_id


async def test_send_event_stores_event_and_trigger_in_the_same_commit(ingest: Ingest) -> None:
    queued = await ingest.send()

    [event] = stored_events(ingest)
    assert (event.id, event.trigger_id, event.name) == (queued.event_id, queued.trigger_id, "user_signup")
    record = await ingest.uow.events.trigger(TEAM, queued.trigger_id)
    assert record is not None and record.status == "queued"
    assert ingest.uow.commits == 1


async def test_send_event_answers_an_empty_job_id_when_the_bus_did_not_publish(ingest: Ingest) -> None:
    ingest.uow.bus_reachable = False

    queued = await ingest.send()

    assert queued.job_id == ""
    assert queued.message == "Event queued successfully"
    assert [event.id for event in stored_events(ingest)] == [queued.event_id]
    assert [m.msg_id for m in ingest.uow.deferred] == [
        str(queued.event_id),
        f"trigger_accepted:{queued.trigger_id}",
    ]


@pytest.mark.parametrize(
    ("name", "reason", "message"),
    [
        ("", "EVENT_NAME_REQUIRED", "Event name is required"),
        ("UserSignup", "INVALID_EVENT_NAME", "Invalid event name 'UserSignup'"),
        ("purchase-completed", "INVALID_EVENT_NAME", "Invalid event name 'purchase-completed'"),
        ("a..b", "INVALID_EVENT_NAME", "Invalid event name 'a..b'"),
        ("herald.anything", "RESERVED_EVENT_NAME", "reserved namespace 'herald.'"),
        ("herald.contact.created", "RESERVED_EVENT_NAME", "reserved namespace 'herald.'"),
        ("a" * 129, "EVENT_NAME_TOO_LONG", "Event name is too long (129 characters)"),
    ],
)
async def test_send_event_rejects_an_invalid_name_and_keeps_nothing(
    ingest: Ingest, name: str, reason: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(event_name=name, user_info=UserInfo(email="ada@example.com"))

    assert raised.value.reason == reason
    assert message in raised.value.message
    assert_nothing_kept(ingest)


async def test_the_reserved_namespace_error_names_the_event(ingest: Ingest) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(event_name="herald.topic.subscribed")

    assert raised.value.message == (
        "Event name 'herald.topic.subscribed' is in the reserved namespace 'herald.': system events "
        "are emitted only by the platform"
    )
    assert raised.value.metadata == {"event_name": "herald.topic.subscribed"}


async def test_send_event_accepts_a_name_of_exactly_128_characters(ingest: Ingest) -> None:
    await ingest.send(event_name="a" * 128)

    assert ingest.uow.subjects()[0] == f"events.team-1.{'a' * 128}"


async def test_send_event_keeps_nothing_when_storing_the_event_fails(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_full(event: AcceptedEvent) -> None:
        if event.name == "user_signup":
            raise RuntimeError("disk full")

    monkeypatch.setattr(ingest.uow.events, "add", disk_full)

    with pytest.raises(RuntimeError, match="disk full"):
        await ingest.send(user_info=UserInfo(email="ada@example.com"), idempotency_key="k-1")

    # Neither the new contact, its herald.contact.created event, nor the idempotency key survive.
    assert_nothing_kept(ingest)


@pytest.mark.parametrize(
    ("info", "source", "reason", "message"),
    [
        (UserInfo(external_id="x" * 257), EventSource(), "FIELD_TOO_LONG", "user_info.contact_external_id"),
        (UserInfo(external_id="u-1", name="Ada\x00"), EventSource(), "INVALID_FIELD", "user_info.name"),
        (UserInfo(), EventSource(ip="1" * 1025), "FIELD_TOO_LONG", "source.ip"),
        (UserInfo(), EventSource(user_agent="curl\n"), "INVALID_FIELD", "source.user_agent"),
    ],
)
async def test_send_event_checks_the_text_it_stores(
    ingest: Ingest, info: UserInfo, source: EventSource, reason: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(user_info=info, source=source)

    assert raised.value.reason == reason
    assert raised.value.message.startswith(message)
    assert_nothing_kept(ingest)


# --------------------------------------------------------------------------------------------
# The event on the bus
# --------------------------------------------------------------------------------------------


async def test_the_published_event_carries_data_variables_and_the_contact_snapshot(ingest: Ingest) -> None:
    queued = await ingest.send(
        user_info=UserInfo(
            external_id="user_12345",
            email="john.doe@example.com",
            phone=" +1 (415) 555-0100 ",
            name="John Doe",
            custom_fields={"plan": "pro", "age": 30},
        ),
        source=EventSource(type="web_signup", ip="203.0.113.9", user_agent="curl/8"),
        event_data={"plan": "pro", "seats": 3, "ratio": 0.5, "items": [1, 2], "nested": {"count": 7}},
        variables={"user_name": "John", "score": 95},
    )

    event = published_event(ingest)
    [contact] = stored_contacts(ingest)
    assert (event.event_id, event.trigger_id) == (str(queued.event_id), str(queued.trigger_id))
    assert (event.project_id, event.name) == (TEAM, "user_signup")
    data = from_struct(event.data)
    assert data == {"plan": "pro", "seats": 3, "ratio": 0.5, "items": [1, 2], "nested": {"count": 7}}
    assert type(data["seats"]) is int and type(data["nested"]["count"]) is int
    variables = from_struct(event.variables)
    assert variables == {"user_name": "John", "score": 95}
    assert type(variables["score"]) is int
    assert event.contact.id == str(contact.id) == str(queued.contact_id)
    assert event.contact.external_id == "user_12345"
    assert event.contact.email == "john.doe@example.com"
    assert event.contact.phone == "+14155550100"
    assert event.contact.name == "John Doe"
    assert from_struct(event.contact.custom_fields) == {"plan": "pro", "age": 30}
    assert (event.source.type, event.source.ip, event.source.user_agent) == (
        "web_signup",
        "203.0.113.9",
        "curl/8",
    )
    assert from_timestamp(event.occurred_at) == from_timestamp(event.accepted_at) == NOW


async def test_occurred_at_is_the_time_the_sender_gives(ingest: Ingest) -> None:
    queued = await ingest.send(occurred_at="2029-11-30T14:15:00.250+01:00")

    happened = datetime(2029, 11, 30, 13, 15, 0, 250000, tzinfo=UTC)
    assert queued.occurred_at == happened
    assert queued.accepted_at == NOW
    event = published_event(ingest)
    assert from_timestamp(event.occurred_at) == happened
    assert from_timestamp(event.accepted_at) == NOW
    [stored] = stored_events(ingest)
    assert stored.occurred_at == happened


async def test_occurred_at_may_be_slightly_ahead_for_clock_skew(ingest: Ingest) -> None:
    queued = await ingest.send(occurred_at="2029-12-01T09:04:59Z")

    assert queued.occurred_at == NOW + timedelta(minutes=4, seconds=59)


@pytest.mark.parametrize(
    ("occurred_at", "reason", "message"),
    [
        ("2029-12-01T09:05:01Z", "OCCURRED_AT_IN_FUTURE", "occurred_at must not be in the future"),
        (
            "2029-11-30",
            "INVALID_OCCURRED_AT",
            "Invalid occurred_at format: use ISO 8601 with a time zone, e.g. 2026-06-08T14:15:00.000Z",
        ),
        (
            "2029-11-30T10:00:00",
            "INVALID_OCCURRED_AT",
            "Invalid occurred_at format: use ISO 8601 with a time zone, e.g. 2026-06-08T14:15:00.000Z",
        ),
    ],
)
async def test_a_bad_occurred_at_is_invalid(
    ingest: Ingest, occurred_at: str, reason: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(occurred_at=occurred_at)

    assert (raised.value.reason, raised.value.message) == (reason, message)
    assert raised.value.metadata == {"occurred_at": occurred_at}
    assert_nothing_kept(ingest)


# --------------------------------------------------------------------------------------------
# Contact resolution and herald.contact.created
# --------------------------------------------------------------------------------------------


async def test_a_new_contact_announces_herald_contact_created_as_a_tracked_system_event(
    ingest: Ingest,
) -> None:
    queued = await ingest.send(user_info=UserInfo(external_id="user-1", email="ada@example.com"))

    [contact] = stored_contacts(ingest)
    assert queued.contact_id == contact.id
    assert ingest.uow.subjects() == [
        "events.team-1.herald.contact.created",
        "tracking.team-1.trigger_accepted",
        "events.team-1.user_signup",
        "tracking.team-1.trigger_accepted",
    ]
    created = published_event(ingest, "herald.contact.created")
    assert created.project_id == TEAM
    assert from_struct(created.data) == {"contact_id": str(contact.id)}
    assert from_struct(created.variables) == {}
    assert created.source.type == "herald"
    assert (created.contact.id, created.contact.external_id, created.contact.email) == (
        str(contact.id),
        "user-1",
        "ada@example.com",
    )
    assert from_timestamp(created.occurred_at) == from_timestamp(created.accepted_at) == NOW
    # Its own event and trigger, stored and tracked like any other.
    assert created.event_id != str(queued.event_id) and created.trigger_id != str(queued.trigger_id)
    [system] = stored_events(ingest, "herald.contact.created")
    assert (str(system.id), str(system.trigger_id)) == (created.event_id, created.trigger_id)
    record = await ingest.uow.events.trigger(TEAM, system.trigger_id)
    assert record is not None and record.status == "queued" and record.contact_id == contact.id
    accepted = {r.trigger_id: r.trigger_accepted for r in tracking_records(ingest, "trigger_accepted")}
    assert accepted[created.trigger_id].event_name == "herald.contact.created"
    assert accepted[created.trigger_id].contact_id == str(contact.id)
    assert accepted[str(queued.trigger_id)].event_name == "user_signup"
    assert ingest.uow.commits == 1


async def test_a_known_contact_announces_nothing(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(external_id="user-1"))

    await ingest.send(user_info=UserInfo(external_id="user-1", name="Ada"))

    assert len(events_named(ingest, "herald.contact.created")) == 1
    assert len(stored_events(ingest, "herald.contact.created")) == 1
    assert len(events_named(ingest, "user_signup")) == 2


async def test_a_new_contact_is_created_with_a_normalized_email(ingest: Ingest) -> None:
    decomposed = unicodedata.normalize("NFD", "  Ángel@Example.COM ")

    await ingest.send(user_info=UserInfo(email=decomposed, name=" Ángel "))

    [contact] = stored_contacts(ingest)
    assert contact.email == unicodedata.normalize("NFC", "ángel@example.com")
    assert contact.name == "Ángel"
    assert contact.external_id is None
    assert published_event(ingest).contact.email == contact.email


@pytest.mark.parametrize(
    ("phone", "normalized"),
    [
        ("+1 (415) 555-0100", "+14155550100"),
        ("+14155550100", "+14155550100"),
        ("+44 20 7946 0958", "+442079460958"),
        (" +1-415-555-0100 ", "+14155550100"),
        ("+1234567890", "+1234567890"),  # a placeholder senders use, kept on purpose
    ],
)
async def test_a_phone_is_stored_in_e164(ingest: Ingest, phone: str, normalized: str) -> None:
    await ingest.send(user_info=UserInfo(external_id="user-1", phone=phone))

    [contact] = stored_contacts(ingest)
    assert contact.phone == normalized
    assert published_event(ingest).contact.phone == normalized


@pytest.mark.parametrize(
    "phone", ["not a phone", "4155550100", "(415) 555-0100", "+999 1234", "+1", "+1 555", "+44 20 79"]
)
async def test_a_phone_without_a_country_code_or_not_a_number_is_invalid(ingest: Ingest, phone: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(user_info=UserInfo(external_id="user-1", phone=phone))

    assert raised.value.reason == "INVALID_PHONE"
    assert raised.value.message == (
        f"Invalid user_info.phone {phone!r}: give the number in international form with its country "
        "code, e.g. +14155550100"
    )
    assert raised.value.metadata == {"field": "user_info.phone"}
    assert_nothing_kept(ingest)


async def test_letters_after_a_phone_number_are_not_read_as_digits(ingest: Ingest) -> None:
    phone = "+1 (415) 555-0100 abc"

    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(user_info=UserInfo(external_id="user-1", phone=phone))

    assert raised.value.reason == "INVALID_PHONE"


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"event_data": {"amount": float("nan")}}, "event_data"),
        ({"variables": {"deep": [1, {"x": float("inf")}]}}, "variables"),
        (
            {"user_info": UserInfo(external_id="u1", custom_fields={"score": -float("inf")})},
            "user_info.custom_fields",
        ),
    ],
    ids=["nan", "nested-infinity", "custom-fields"],
)
async def test_a_number_json_cannot_hold_is_rejected_with_its_field(
    ingest: Ingest, fields: dict[str, Any], field_name: str
) -> None:
    # A gRPC Struct can carry NaN and Infinity; JSON (and PostgreSQL's jsonb) cannot.
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(**fields)

    assert raised.value.reason == "INVALID_NUMBER"
    assert raised.value.metadata == {"field": field_name}
    assert field_name in raised.value.message
    assert_nothing_kept(ingest)


@pytest.mark.parametrize(
    ("email", "detail"),
    [
        ("not-an-email", "An email address must have an @-sign."),
        ("a..b@example.com", "An email address cannot have two periods in a row."),
    ],
)
async def test_an_invalid_email_is_rejected_with_the_validator_reason(
    ingest: Ingest, email: str, detail: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(user_info=UserInfo(email=email))

    assert raised.value.reason == "INVALID_EMAIL"
    assert raised.value.message == f"Invalid user_info.email {email!r}: {detail}"
    assert raised.value.metadata == {"field": "user_info.email"}
    assert_nothing_kept(ingest)


async def test_an_address_checked_before_is_answered_the_same_each_time_with_its_own_field() -> None:
    # Each process remembers the addresses and numbers it checked: a remembered outcome still
    # names the field and the text as given.
    for _ in range(2):
        assert normalize_email(" Ada@Example.COM ") == "ada@example.com"
        assert normalize_phone("+1 (415) 555-0100") == "+14155550100"
        for field_name in ("user_info.email", "email"):
            with pytest.raises(InvalidArgument) as raised:
                normalize_email(" not-an-email ", field_name)
            assert raised.value.message == (
                f"Invalid {field_name} ' not-an-email ': An email address must have an @-sign."
            )
            assert raised.value.metadata == {"field": field_name}
        with pytest.raises(InvalidArgument) as raised:
            normalize_phone("12", "phone")
        assert raised.value.metadata == {"field": "phone"}


async def test_a_known_contact_is_found_by_external_id_and_updated(ingest: Ingest) -> None:
    await ingest.send(
        user_info=UserInfo(external_id="user-1", name="Ada", custom_fields={"plan": "pro", "age": 36})
    )
    [before] = stored_contacts(ingest)
    ingest.clock.advance(timedelta(minutes=1))

    await ingest.send(
        user_info=UserInfo(
            external_id="user-1", email="ADA@example.com", name="Ada Lovelace", custom_fields={"plan": "team"}
        )
    )

    [after] = stored_contacts(ingest)
    assert after.id == before.id
    assert after.name == "Ada Lovelace"
    assert after.email == "ada@example.com"
    assert after.custom_fields == {"plan": "team", "age": 36}
    assert (after.created_at, after.updated_at) == (NOW, NOW + timedelta(minutes=1))
    latest = events_named(ingest, "user_signup")[-1]
    assert latest.contact.id == str(before.id)
    assert from_struct(latest.contact.custom_fields) == {"plan": "team", "age": 36}


async def test_a_known_contact_is_kept_as_it_is_when_the_event_says_nothing_new(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(external_id="user-1", name="Ada"))
    [before] = stored_contacts(ingest)
    ingest.clock.advance(timedelta(minutes=1))

    await ingest.send(user_info=UserInfo(external_id="user-1"))

    assert stored_contacts(ingest) == [before]


async def test_an_anonymous_contact_is_found_by_normalized_email(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(email="ada@example.com"))
    [before] = stored_contacts(ingest)

    await ingest.send(user_info=UserInfo(email="  ADA@Example.com", name="Ada"))

    [after] = stored_contacts(ingest)
    assert after.id == before.id
    assert after.name == "Ada"
    assert [event.contact.id for event in events_named(ingest, "user_signup")] == [str(before.id)] * 2


async def test_an_email_belonging_to_another_external_id_makes_a_new_contact(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(external_id="user-1", email="shared@example.com"))

    await ingest.send(user_info=UserInfo(external_id="user-2", email="shared@example.com"))

    contacts = stored_contacts(ingest)
    assert sorted(c.external_id or "" for c in contacts) == ["user-1", "user-2"]
    assert {c.email for c in contacts} == {"shared@example.com"}
    assert len(events_named(ingest, "herald.contact.created")) == 2


async def test_an_anonymous_contact_found_by_email_takes_the_external_id_the_event_gives(
    ingest: Ingest,
) -> None:
    await ingest.send(user_info=UserInfo(email="ada@example.com"))
    [anonymous] = stored_contacts(ingest)

    await ingest.send(user_info=UserInfo(external_id="user-1", email="ada@example.com"))

    [contact] = stored_contacts(ingest)
    assert contact.id == anonymous.id
    assert contact.external_id == "user-1"


async def test_an_event_that_identifies_nobody_has_no_contact(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(name="Nobody", phone="+14155550100"))

    assert ingest.uow.contacts.rows == {}
    assert published_event(ingest).contact == event_pb2.Contact()
    [record] = tracking_records(ingest, "trigger_accepted")
    assert record.trigger_accepted.contact_id == ""
    [event] = stored_events(ingest)
    assert event.contact is None
    assert events_named(ingest, "herald.contact.created") == []


async def test_contacts_of_different_teams_are_separate(ingest: Ingest) -> None:
    await ingest.send(team_id="team-1", user_info=UserInfo(external_id="user-1"))
    await ingest.send(team_id="team-2", user_info=UserInfo(external_id="user-1"))

    assert sorted(c.team_id for c in stored_contacts(ingest)) == ["team-1", "team-2"]


# contact_id


async def test_an_event_for_a_contact_id_is_about_that_contact_and_updates_it(ingest: Ingest) -> None:
    await ingest.send(event_name="newsletter.joined", user_info=UserInfo(email="ada@example.com"))
    [contact] = stored_contacts(ingest)

    queued = await ingest.send(contact_id=f" {contact.id} ", user_info=UserInfo(name="Ada"))

    assert queued.contact_id == contact.id
    assert published_event(ingest).contact.id == str(contact.id)
    [after] = stored_contacts(ingest)
    assert (after.id, after.name, after.email) == (contact.id, "Ada", "ada@example.com")
    assert len(events_named(ingest, "herald.contact.created")) == 1


async def test_an_unknown_contact_id_is_not_found_even_for_another_teams_contact(ingest: Ingest) -> None:
    await ingest.send(team_id="team-2", user_info=UserInfo(email="ada@example.com"))
    [elsewhere] = stored_contacts(ingest)
    assert len(stored_events(ingest, "user_signup")) == 1
    published = list(ingest.uow.published)

    for contact_id in (elsewhere.id, uuid.uuid4()):
        with pytest.raises(NotFound) as raised:
            await ingest.send(contact_id=str(contact_id))
        assert raised.value.message == "Contact not found"
        assert raised.value.reason == "CONTACT_NOT_FOUND"
        assert raised.value.metadata == {"contact_id": str(contact_id)}

    assert ingest.uow.published == published
    assert len(stored_events(ingest, "user_signup")) == 1


async def test_a_malformed_contact_id_is_invalid(ingest: Ingest) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(contact_id="user_12345")

    assert raised.value.reason == "INVALID_CONTACT_ID"
    assert raised.value.message == (
        "Invalid contact_id 'user_12345': it is Herald's contact id, a UUID; use external_id for your own id"
    )
    assert_nothing_kept(ingest)


async def test_a_contact_id_with_an_external_id_of_another_contact_is_a_client_error(ingest: Ingest) -> None:
    await ingest.send(user_info=UserInfo(external_id="user-1"))
    await ingest.send(user_info=UserInfo(email="anonymous@example.com"))
    anonymous = next(c for c in stored_contacts(ingest) if c.external_id is None)

    with pytest.raises(HeraldError) as raised:
        await ingest.send(contact_id=str(anonymous.id), user_info=UserInfo(external_id="user-1"))

    assert http_status_of(raised.value) in (400, 409, 422)


# --------------------------------------------------------------------------------------------
# trigger_at: scheduled events
# --------------------------------------------------------------------------------------------


async def test_an_event_with_trigger_at_is_scheduled_and_not_queued_yet(ingest: Ingest) -> None:
    queued = await ingest.send(trigger_at=TRIGGER_AT)

    assert queued.message == "Event scheduled for 2030-01-15T10:00:00.000Z"
    assert queued.scheduled_for == FIRES_AT
    assert queued.job_id == ""  # nothing went to the events stream
    assert ingest.uow.subjects() == ["tracking.team-1.trigger_accepted"]
    [record] = tracking_records(ingest, "trigger_accepted")
    assert from_timestamp(record.trigger_accepted.scheduled_for) == FIRES_AT
    trigger = await ingest.uow.events.trigger(TEAM, queued.trigger_id)
    assert trigger is not None
    assert (trigger.status, trigger.scheduled_for) == ("scheduled", FIRES_AT)
    [event] = stored_events(ingest)
    assert event.scheduled_for == FIRES_AT


async def test_trigger_at_with_an_offset_is_scheduled_in_utc(ingest: Ingest) -> None:
    queued = await ingest.send(trigger_at="2030-01-15T12:00:00.5+02:00")

    assert queued.message == "Event scheduled for 2030-01-15T10:00:00.500Z"
    assert queued.scheduled_for == FIRES_AT + timedelta(milliseconds=500)


async def test_a_scheduled_event_still_announces_its_new_contact_at_once(ingest: Ingest) -> None:
    await ingest.send(trigger_at=TRIGGER_AT, user_info=UserInfo(external_id="user-1"))

    assert len(events_named(ingest, "herald.contact.created")) == 1
    assert events_named(ingest, "user_signup") == []


@pytest.mark.parametrize(
    "trigger_at",
    ["2030-01-15", "2030-01-15T10:00:00", "2030-01-15 10:00:00Z", "tomorrow", "1736935200"],
)
async def test_trigger_at_in_another_format_is_invalid(ingest: Ingest, trigger_at: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(trigger_at=trigger_at)

    assert raised.value.reason == "INVALID_TRIGGER_AT"
    assert raised.value.message == INVALID_TRIGGER_AT
    assert raised.value.metadata == {"trigger_at": trigger_at}
    assert_nothing_kept(ingest)


@pytest.mark.parametrize(
    "trigger_at", ["2029-11-30T09:00:00Z", "2029-12-01T09:00:00Z", "2029-12-01T10:00:00+02:00"]
)
async def test_trigger_at_now_or_in_the_past_is_invalid(ingest: Ingest, trigger_at: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(trigger_at=trigger_at)

    assert raised.value.reason == "TRIGGER_AT_IN_PAST"
    assert raised.value.message == "trigger_at must be a future date"
    assert_nothing_kept(ingest)


async def test_trigger_at_may_be_at_most_366_days_ahead(ingest: Ingest) -> None:
    latest = await ingest.send(trigger_at="2030-12-02T09:00:00Z")
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(trigger_at="2030-12-02T09:00:01Z")

    assert latest.scheduled_for == NOW + timedelta(days=366)
    assert raised.value.reason == "TRIGGER_AT_TOO_FAR"
    assert raised.value.message == "trigger_at is too far ahead: schedule at most 366 days in advance"


# --------------------------------------------------------------------------------------------
# Project policy: payload limit and unknown event types
# --------------------------------------------------------------------------------------------


async def test_a_payload_over_the_projects_limit_is_too_large(ingest: Ingest) -> None:
    command = a_signup(event_data={"note": "x" * 200}, user_info=UserInfo(email="ada@example.com"))
    size = command.payload_bytes()
    ingest.set_policy(event_payload_limit_bytes=size - 1)

    with pytest.raises(PayloadTooLarge) as raised:
        await send_event(command, ingest.intake)

    assert http_status_of(raised.value) == 413
    assert raised.value.reason == "PAYLOAD_TOO_LARGE"
    assert raised.value.message == (
        f"Event payload is {size} bytes; the project's event_payload_limit_bytes is {size - 1}"
    )
    assert raised.value.metadata == {"size": str(size), "limit": str(size - 1)}
    assert_nothing_kept(ingest)


async def test_a_payload_of_exactly_the_limit_is_accepted(ingest: Ingest) -> None:
    command = a_signup(
        event_data={"note": "x" * 200}, variables={"a": 1}, user_info=UserInfo(custom_fields={"b": 2})
    )
    ingest.set_policy(event_payload_limit_bytes=command.payload_bytes())

    await send_event(command, ingest.intake)

    assert len(stored_events(ingest)) == 1


async def test_the_payload_limit_counts_variables_and_custom_fields_too(ingest: Ingest) -> None:
    ingest.set_policy(event_payload_limit_bytes=100)

    for fields in ({"variables": {"v": "x" * 100}}, {"user_info": UserInfo(custom_fields={"c": "x" * 100})}):
        with pytest.raises(PayloadTooLarge):
            await ingest.send(**fields)

    assert_nothing_kept(ingest)


async def test_the_payload_limit_is_each_projects_own(ingest: Ingest) -> None:
    ingest.set_policy("team-2", event_payload_limit_bytes=10)

    await ingest.send(event_data={"note": "x" * 100})
    with pytest.raises(PayloadTooLarge):
        await ingest.send(team_id="team-2", event_data={"note": "x" * 100})


async def test_an_unknown_event_type_is_catalogued_when_the_project_accepts_them(ingest: Ingest) -> None:
    await ingest.send(event_name="order.completed", user_info=UserInfo(external_id="user-1"))

    [event_type] = await list_event_types(TEAM, ingest.uow)
    assert (event_type.name, event_type.origin, event_type.description) == (
        "order.completed",
        "catalogued",
        "",
    )
    assert event_type.created_at == NOW
    assert await list_event_types("team-2", ingest.uow) == []


async def test_an_unknown_event_type_is_not_found_when_the_project_rejects_them(ingest: Ingest) -> None:
    ingest.set_policy(unknown_events="reject")

    with pytest.raises(NotFound) as raised:
        await ingest.send(event_name="order.completed", user_info=UserInfo(email="ada@example.com"))

    assert raised.value.message == "Event type not found"
    assert raised.value.reason == "EVENT_TYPE_NOT_FOUND"
    assert raised.value.metadata == {
        "event_name": "order.completed",
        "hint": "register it with POST /api/v1/event-types",
    }
    assert_nothing_kept(ingest)
    assert ingest.uow.event_types.rows == {}


async def test_a_registered_event_type_is_accepted_when_the_project_rejects_unknown_ones(
    ingest: Ingest,
) -> None:
    ingest.set_policy(unknown_events="reject")
    await register_event_type(TEAM, "order.completed", "An order was paid", ingest.uow)

    queued = await ingest.send(event_name="order.completed")

    assert queued.event_name == "order.completed"
    ingest.set_policy("team-2", unknown_events="reject")
    with pytest.raises(NotFound):
        await ingest.send(team_id="team-2", event_name="order.completed")


async def test_a_rejected_event_type_on_a_new_contact_keeps_no_contact(ingest: Ingest) -> None:
    ingest.set_policy(unknown_events="reject")

    with pytest.raises(NotFound):
        await ingest.send(user_info=UserInfo(external_id="user-1"))

    assert ingest.uow.contacts.rows == {}
    assert events_named(ingest, "herald.contact.created") == []


# --------------------------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------------------------


async def test_events_past_the_hourly_limit_are_refused_with_retry_after(ingest: Ingest) -> None:
    ingest.set_policy(rate_limit_per_hour=2)
    ingest.clock.advance(timedelta(minutes=59, seconds=30))

    first = await ingest.send()
    second = await ingest.send()
    with pytest.raises(ResourceExhausted) as raised:
        await ingest.send()

    assert first.rate is not None and second.rate is not None
    assert (first.rate.limit, first.rate.remaining, second.rate.remaining) == (2, 1, 0)
    assert second.rate.headers() == {
        "ratelimit-limit": "2",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "30",
        "ratelimit-policy": "2;w=3600",
    }
    error = raised.value
    assert http_status_of(error) == 429
    assert error.reason == "RATE_LIMITED"
    assert (
        error.message
        == "Rate limit exceeded: this project may send 2 events per hour; try again in 30 seconds"
    )
    assert error.headers["retry-after"] == "30"
    assert error.headers["ratelimit-remaining"] == "0"
    assert len(stored_events(ingest)) == 2


async def test_the_limit_resets_with_the_next_hour_and_is_each_projects_own(ingest: Ingest) -> None:
    ingest.set_policy(rate_limit_per_hour=1)
    ingest.set_policy("team-2", rate_limit_per_hour=1)
    await ingest.send()

    other = await ingest.send(team_id="team-2")
    ingest.clock.advance(timedelta(hours=1))
    next_hour = await ingest.send()

    assert other.rate is not None and other.rate.remaining == 0
    assert next_hour.rate is not None and next_hour.rate.remaining == 0


async def test_the_plan_limit_applies_without_an_override(ingest: Ingest) -> None:
    ingest.set_policy(plan="starter")

    queued = await ingest.send()

    assert queued.rate is not None
    assert (queued.rate.limit, queued.rate.remaining) == (1000, 999)


async def test_an_unlimited_project_does_not_count(ingest: Ingest) -> None:
    queued = await ingest.send()

    assert queued.rate is None
    assert ingest.rates.counts == {}


async def test_an_invalid_event_does_not_count_against_the_limit(ingest: Ingest) -> None:
    ingest.set_policy(rate_limit_per_hour=1)

    with pytest.raises(InvalidArgument):
        await ingest.send(event_name="Bad-Name")
    with pytest.raises(InvalidArgument):
        await ingest.send(trigger_at="yesterday")
    queued = await ingest.send()

    assert queued.rate is not None and queued.rate.remaining == 0


async def test_an_event_refused_as_not_found_does_not_count_against_the_limit(ingest: Ingest) -> None:
    ingest.set_policy(rate_limit_per_hour=2, unknown_events="reject")
    await register_event_type(TEAM, "user_signup", "", ingest.uow)
    with pytest.raises(NotFound):
        await ingest.send(event_name="order.completed")
    with pytest.raises(NotFound):
        await ingest.send(contact_id=str(uuid.uuid4()))

    queued = await ingest.send()

    assert queued.rate is not None and queued.rate.remaining == 1


# --------------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------------


async def test_a_repeated_request_with_its_idempotency_key_replays_the_first_answer(ingest: Ingest) -> None:
    command = a_signup(idempotency_key="order-42", user_info=UserInfo(external_id="user-1"))
    first = await send_event(command, ingest.intake)
    published = list(ingest.uow.published)
    ingest.clock.advance(timedelta(minutes=5))

    again = await send_event(command, ingest.intake)

    assert again.replayed is True and first.replayed is False
    assert (again.trigger_id, again.event_id, again.contact_id) == (
        first.trigger_id,
        first.event_id,
        first.contact_id,
    )
    assert again.message == "Event queued successfully"
    assert again.event_name == "user_signup"
    assert (again.occurred_at, again.accepted_at) == (NOW, NOW)
    assert again.job_id == ""
    assert ingest.uow.published == published
    assert len(stored_events(ingest, "user_signup")) == 1


async def test_a_replayed_scheduled_event_answers_its_schedule(ingest: Ingest) -> None:
    command = a_signup(idempotency_key="k", trigger_at=TRIGGER_AT)
    first = await send_event(command, ingest.intake)

    again = await send_event(command, ingest.intake)

    assert again.replayed is True
    assert again.trigger_id == first.trigger_id
    assert again.message == "Event scheduled for 2030-01-15T10:00:00.000Z"
    assert again.scheduled_for == FIRES_AT


async def test_an_idempotency_key_reused_for_another_body_is_unprocessable(ingest: Ingest) -> None:
    await ingest.send(idempotency_key="order-42", event_data={"total": 10})
    published = list(ingest.uow.published)

    with pytest.raises(Unprocessable) as raised:
        await ingest.send(idempotency_key="order-42", event_data={"total": 11})

    assert http_status_of(raised.value) == 422
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.message == (
        "idempotency_key was already used for a different request: send the same body to replay it, "
        "or use a new key"
    )
    assert raised.value.metadata == {"idempotency_key": "order-42"}
    assert ingest.uow.published == published
    assert len(stored_events(ingest)) == 1


async def test_idempotency_keys_are_each_projects_own(ingest: Ingest) -> None:
    first = await ingest.send(idempotency_key="k")
    other = await ingest.send(team_id="team-2", idempotency_key="k", event_data={"different": True})

    assert other.replayed is False
    assert other.trigger_id != first.trigger_id


async def test_an_idempotency_key_is_free_again_after_the_projects_window(ingest: Ingest) -> None:
    ingest.set_policy(idempotency_window="PT1H")
    first = await ingest.send(idempotency_key="k")
    ingest.clock.advance(timedelta(minutes=59))
    replayed = await ingest.send(idempotency_key="k")
    ingest.clock.advance(timedelta(minutes=2))

    fresh = await ingest.send(idempotency_key="k", event_data={"a": 1})

    assert replayed.replayed is True
    assert fresh.replayed is False and fresh.trigger_id != first.trigger_id
    assert ingest.uow.idempotency.rows[(TEAM, "k")].trigger_id == fresh.trigger_id
    assert ingest.uow.idempotency.rows[(TEAM, "k")].expires_at == NOW + timedelta(minutes=61, hours=1)


async def test_a_rejected_event_does_not_claim_its_idempotency_key(ingest: Ingest) -> None:
    ingest.set_policy(unknown_events="reject")
    with pytest.raises(NotFound):
        await ingest.send(idempotency_key="k")
    await register_event_type(TEAM, "user_signup", "", ingest.uow)

    queued = await ingest.send(idempotency_key="k")

    assert queued.replayed is False
    assert len(stored_events(ingest)) == 1


async def test_a_key_whose_event_was_purged_is_a_conflict(ingest: Ingest) -> None:
    ingest.set_policy(idempotency_window="P30D")
    await ingest.send(idempotency_key="k")
    ingest.clock.advance(timedelta(days=2))
    await purge(TEAM, ingest.clock() - timedelta(days=1), 100, ingest.uow)

    with pytest.raises(Conflict) as raised:
        await ingest.send(idempotency_key="k")

    assert raised.value.reason == "IDEMPOTENCY_KEY_EXPIRED"
    assert raised.value.message == "idempotency_key belongs to a trigger that no longer exists; use a new key"


async def test_an_overlong_idempotency_key_is_invalid(ingest: Ingest) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await ingest.send(idempotency_key="k" * 256)

    assert raised.value.reason == "INVALID_IDEMPOTENCY_KEY"
    assert raised.value.message == "idempotency_key must be at most 255 printable characters"
    assert_nothing_kept(ingest)


# --------------------------------------------------------------------------------------------
# send_batch
# --------------------------------------------------------------------------------------------


async def test_a_batch_accepts_each_good_event_and_reports_each_bad_one(ingest: Ingest) -> None:
    commands = [
        a_signup(user_info=UserInfo(external_id="user-1")),
        a_signup(event_name="Bad-Name"),
        a_signup(event_name="order.completed", trigger_at=TRIGGER_AT),
        a_signup(user_info=UserInfo(email="not-an-email")),
        a_signup(event_name="herald.contact.created"),
        a_signup(event_name="order.refunded"),
    ]

    outcomes = await send_batch(commands, ingest.intake)

    assert [type(o).__name__ for o in outcomes] == [
        "EventQueued",
        "InvalidArgument",
        "EventQueued",
        "InvalidArgument",
        "InvalidArgument",
        "EventQueued",
    ]
    errors = [o for o in outcomes if isinstance(o, HeraldError)]
    assert [e.reason for e in errors] == ["INVALID_EVENT_NAME", "INVALID_EMAIL", "RESERVED_EVENT_NAME"]
    accepted = [o for o in outcomes if isinstance(o, EventQueued)]
    assert [o.event_name for o in accepted] == ["user_signup", "order.completed", "order.refunded"]
    assert accepted[1].message == "Event scheduled for 2030-01-15T10:00:00.000Z"
    stored = {event.id for event in stored_events(ingest) if not event.name.startswith("herald.")}
    assert stored == {o.event_id for o in accepted}
    assert [e.name for e in events_named(ingest, "user_signup")] == ["user_signup"]


async def test_a_batch_past_the_rate_limit_refuses_only_the_events_over_it(ingest: Ingest) -> None:
    ingest.set_policy(rate_limit_per_hour=2)

    outcomes = await send_batch([a_signup(), a_signup(), a_signup()], ingest.intake)

    assert [isinstance(o, EventQueued) for o in outcomes] == [True, True, False]
    assert isinstance(outcomes[2], ResourceExhausted)
    assert len(stored_events(ingest)) == 2


async def test_a_batch_with_one_key_twice_stores_one_event(ingest: Ingest) -> None:
    outcomes = await send_batch([a_signup(idempotency_key="k"), a_signup(idempotency_key="k")], ingest.intake)

    first, second = outcomes
    assert isinstance(first, EventQueued) and isinstance(second, EventQueued)
    assert second.trigger_id == first.trigger_id
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert len(stored_events(ingest)) == 1


async def test_an_empty_batch_is_invalid(ingest: Ingest) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await send_batch([], ingest.intake)

    assert raised.value.reason == "EMPTY_BATCH"
    assert raised.value.message == "A batch needs at least one event in 'events'"


async def test_a_batch_of_more_than_500_events_is_refused_whole(ingest: Ingest) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await send_batch([a_signup()] * 501, ingest.intake)

    assert raised.value.reason == "BATCH_TOO_LARGE"
    assert raised.value.message == "A batch holds at most 500 events; this one has 501"
    assert raised.value.metadata == {"events": "501"}
    assert_nothing_kept(ingest)


# --------------------------------------------------------------------------------------------
# cancel_trigger and fire_due
# --------------------------------------------------------------------------------------------


async def test_cancelling_a_scheduled_trigger_cancels_it_and_reports_it(ingest: Ingest) -> None:
    scheduled = await ingest.send(trigger_at=TRIGGER_AT)
    ingest.clock.advance(timedelta(minutes=1))

    cancelled = await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)

    assert (cancelled.id, cancelled.status, cancelled.scheduled_for, cancelled.finished_at) == (
        scheduled.trigger_id,
        "cancelled",
        FIRES_AT,
        NOW + timedelta(minutes=1),
    )
    [message] = ingest.on_subject("tracking.team-1.trigger_cancelled")
    assert message.msg_id == f"trigger_cancelled:{scheduled.trigger_id}"
    record = tracking_pb2.TrackingRecord.FromString(message.payload)
    assert record.trigger_id == str(scheduled.trigger_id)
    assert record.project_id == TEAM
    assert from_timestamp(record.trigger_cancelled.cancelled_at) == NOW + timedelta(minutes=1)
    stored = await get_trigger_record(TEAM, str(scheduled.trigger_id), ingest.uow)
    assert stored.status == "cancelled"


async def test_a_cancelled_trigger_never_fires(ingest: Ingest) -> None:
    scheduled = await ingest.send(trigger_at=TRIGGER_AT)
    await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)
    ingest.clock.now = FIRES_AT + timedelta(seconds=1)

    assert await fire_due(ingest.uow) == 0
    assert events_named(ingest, "user_signup") == []
    assert tracking_records(ingest, "trigger_fired") == []


async def test_cancelling_again_answers_when_it_was_cancelled(ingest: Ingest) -> None:
    scheduled = await ingest.send(trigger_at=TRIGGER_AT)
    await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)
    ingest.clock.advance(timedelta(minutes=5))

    again = await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)

    assert again.finished_at == NOW


async def test_cancelling_a_cancelled_trigger_again_answers_it_and_reports_nothing_new(
    ingest: Ingest,
) -> None:
    scheduled = await ingest.send(trigger_at=TRIGGER_AT)
    await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)

    again = await cancel_trigger(TEAM, str(scheduled.trigger_id), ingest.uow)

    assert again.status == "cancelled"
    assert len(ingest.on_subject("tracking.team-1.trigger_cancelled")) == 1


@pytest.mark.parametrize("fired", [False, True], ids=["queued", "fired"])
async def test_a_trigger_that_is_not_scheduled_cannot_be_cancelled(ingest: Ingest, fired: bool) -> None:
    if fired:
        queued = await ingest.send(trigger_at=TRIGGER_AT)
        ingest.clock.now = FIRES_AT
        assert await fire_due(ingest.uow) == 1
    else:
        queued = await ingest.send()
    published = list(ingest.uow.published)

    with pytest.raises(Conflict) as raised:
        await cancel_trigger(TEAM, str(queued.trigger_id), ingest.uow)

    assert raised.value.reason == "TRIGGER_NOT_SCHEDULED"
    assert raised.value.message == (
        f"Trigger {queued.trigger_id} is not scheduled (it has fired or was never scheduled): "
        "only a scheduled trigger can be cancelled"
    )
    assert http_status_of(raised.value) == 409
    assert ingest.uow.published == published
    record = await get_trigger_record(TEAM, str(queued.trigger_id), ingest.uow)
    assert record.status == "queued"


async def test_cancelling_an_unknown_or_another_teams_trigger_is_not_found(ingest: Ingest) -> None:
    scheduled = await ingest.send(trigger_at=TRIGGER_AT)

    for team_id, trigger_id in (
        ("team-2", str(scheduled.trigger_id)),
        (TEAM, str(uuid.uuid4())),
        (TEAM, "not-a-uuid"),
    ):
        with pytest.raises(NotFound) as raised:
            await cancel_trigger(team_id, trigger_id, ingest.uow)
        assert (raised.value.reason, raised.value.message) == ("TRIGGER_NOT_FOUND", "Trigger not found")
        assert raised.value.metadata == {"trigger_id": trigger_id}

    record = await get_trigger_record(TEAM, str(scheduled.trigger_id), ingest.uow)
    assert record.status == "scheduled"
    assert tracking_records(ingest, "trigger_cancelled") == []


async def test_fire_due_queues_nothing_before_its_time(ingest: Ingest) -> None:
    await ingest.send(trigger_at=TRIGGER_AT)
    ingest.clock.now = FIRES_AT - timedelta(milliseconds=1)

    assert await fire_due(ingest.uow) == 0
    assert events_named(ingest, "user_signup") == []


async def test_fire_due_publishes_the_event_and_a_trigger_fired_record_exactly_once(ingest: Ingest) -> None:
    scheduled = await ingest.send(
        trigger_at=TRIGGER_AT,
        event_data={"plan": "pro"},
        variables={"coupon": "WELCOME"},
        user_info=UserInfo(external_id="user-1", name="Ada"),
    )
    await ingest.send(
        user_info=UserInfo(external_id="user-1", name="Ada Lovelace"), event_name="profile.updated"
    )
    before = len(ingest.uow.published)
    ingest.clock.now = FIRES_AT + timedelta(seconds=1)

    fired = await fire_due(ingest.uow)
    again = await fire_due(ingest.uow)

    assert (fired, again) == (1, 0)
    new = ingest.uow.published[before:]
    assert [m.subject for m in new] == ["events.team-1.user_signup", "tracking.team-1.trigger_fired"]
    assert new[0].msg_id == str(scheduled.event_id)
    assert new[1].msg_id == f"trigger_fired:{scheduled.trigger_id}"
    event = event_pb2.Event.FromString(new[0].payload)
    assert (event.event_id, event.trigger_id) == (str(scheduled.event_id), str(scheduled.trigger_id))
    assert from_struct(event.data) == {"plan": "pro"}
    assert from_struct(event.variables) == {"coupon": "WELCOME"}
    assert event.contact.name == "Ada Lovelace"  # the contact as it is when the event fires
    assert from_timestamp(event.accepted_at) == NOW
    record = tracking_pb2.TrackingRecord.FromString(new[1].payload)
    assert record.trigger_id == str(scheduled.trigger_id)
    assert from_timestamp(record.trigger_fired.fired_at) == FIRES_AT + timedelta(seconds=1)
    stored = await get_trigger_record(TEAM, str(scheduled.trigger_id), ingest.uow)
    assert stored.status == "queued"


async def test_fire_due_fires_every_teams_due_events_earliest_first_within_its_limit(ingest: Ingest) -> None:
    later = await ingest.send(trigger_at="2030-01-15T10:00:02Z")
    sooner = await ingest.send(team_id="team-2", trigger_at="2030-01-15T10:00:01Z")
    ingest.clock.now = FIRES_AT + timedelta(minutes=1)

    assert await fire_due(ingest.uow, limit=1) == 1
    assert [e.event_id for e in events_named(ingest, "user_signup", "team-2")] == [str(sooner.event_id)]
    assert await fire_due(ingest.uow, limit=1) == 1
    assert [e.event_id for e in events_named(ingest, "user_signup")] == [str(later.event_id)]
    assert await fire_due(ingest.uow, limit=1) == 0


async def test_fire_due_publishes_nothing_when_it_does_not_commit(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ingest.send(trigger_at=TRIGGER_AT)
    ingest.clock.now = FIRES_AT

    async def commit_fails() -> dict[str, int]:
        raise RuntimeError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(ingest.uow, "commit", commit_fails)
        with pytest.raises(RuntimeError):
            await fire_due(ingest.uow)

    assert events_named(ingest, "user_signup") == []
    assert await fire_due(ingest.uow) == 1, "the claim rolled back, so the next round fires it"


# --------------------------------------------------------------------------------------------
# get_trigger_record
# --------------------------------------------------------------------------------------------


async def test_get_trigger_record_answers_the_queued_trigger(ingest: Ingest) -> None:
    queued = await ingest.send(user_info=UserInfo(external_id="user-1"), occurred_at="2029-11-30T00:00:00Z")

    record = await get_trigger_record(TEAM, str(queued.trigger_id), ingest.uow)

    assert record.id == queued.trigger_id
    assert record.event_id == queued.event_id
    assert record.event_name == "user_signup"
    assert record.status == "queued"
    assert record.scheduled_for is None
    assert record.created_at == NOW
    assert record.contact_id == queued.contact_id
    assert record.occurred_at == datetime(2029, 11, 30, tzinfo=UTC)


async def test_get_trigger_record_answers_a_scheduled_trigger(ingest: Ingest) -> None:
    queued = await ingest.send(trigger_at=TRIGGER_AT)

    record = await get_trigger_record(TEAM, str(queued.trigger_id), ingest.uow)

    assert (record.status, record.scheduled_for) == ("scheduled", FIRES_AT)


@pytest.mark.parametrize("trigger_id", ["not-a-uuid", "", str(uuid.uuid4())])
async def test_get_trigger_record_of_a_malformed_or_unknown_id_is_not_found(
    ingest: Ingest, trigger_id: str
) -> None:
    await ingest.send()

    with pytest.raises(NotFound) as raised:
        await get_trigger_record(TEAM, trigger_id, ingest.uow)

    assert raised.value.reason == "TRIGGER_NOT_FOUND"
    assert raised.value.message == "Trigger not found"


async def test_get_trigger_record_of_another_team_is_not_found(ingest: Ingest) -> None:
    queued = await ingest.send()

    with pytest.raises(NotFound) as raised:
        await get_trigger_record("team-2", str(queued.trigger_id), ingest.uow)

    assert raised.value.metadata == {"trigger_id": str(queued.trigger_id)}


# --------------------------------------------------------------------------------------------
# Contacts API
# --------------------------------------------------------------------------------------------


def a_profile(**fields: Any) -> ContactProfile:
    values: dict[str, Any] = {"team_id": TEAM, "external_id": "user-1"}
    values.update(fields)
    return ContactProfile(**values)


LIMIT = 256 * 1024


async def test_put_contact_creates_a_normalized_contact_and_announces_it(ingest: Ingest) -> None:
    contact = await put_contact(
        a_profile(
            external_id=" user-1 ",
            email=" ADA@Example.com ",
            phone="+1 (415) 555-0100",
            name=" Ada ",
            custom_fields={"plan": "pro"},
            tags=("vip", " beta ", "vip"),
        ),
        ingest.uow,
        LIMIT,
    )

    assert (contact.external_id, contact.email, contact.phone, contact.name) == (
        "user-1",
        "ada@example.com",
        "+14155550100",
        "Ada",
    )
    assert contact.tags == ("vip", "beta")
    assert contact.custom_fields == {"plan": "pro"}
    assert contact.created_at == NOW
    assert stored_contacts(ingest) == [contact]
    created = published_event(ingest, "herald.contact.created")
    assert from_struct(created.data) == {"contact_id": str(contact.id)}
    assert list(created.contact.tags) == ["vip", "beta"]
    [system] = stored_events(ingest)
    assert system.name == "herald.contact.created"
    assert ingest.uow.commits == 1


async def test_put_contact_replaces_the_whole_profile_of_a_known_contact(ingest: Ingest) -> None:
    first = await put_contact(
        a_profile(email="ada@example.com", phone="+14155550100", custom_fields={"a": 1}, tags=("vip",)),
        ingest.uow,
        LIMIT,
    )
    await subscribe_topic(TEAM, "user-1", "news", ingest.uow)
    ingest.clock.advance(timedelta(minutes=1))
    published = len(ingest.uow.published)

    second = await put_contact(a_profile(name="Ada", custom_fields={"b": 2}), ingest.uow, LIMIT)

    assert second.id == first.id
    assert (second.email, second.phone, second.name) == (None, None, "Ada")
    assert second.custom_fields == {"b": 2}
    assert second.tags == ()
    assert second.topics == ("news",)  # topics change only through (un)subscribe
    assert (second.created_at, second.updated_at) == (NOW, NOW + timedelta(minutes=1))
    assert len(ingest.uow.published) == published  # nothing announced for a known contact


async def test_put_contact_that_loses_a_creation_race_updates_the_winners_contact(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = await put_contact(a_profile(name="First"), ingest.uow, LIMIT)
    await subscribe_topic(TEAM, "user-1", "news", ingest.uow)
    published = len(ingest.uow.published)

    async def not_seen_yet(team_id: str, external_id: str, *, lock: bool = False) -> Contact | None:
        return None  # the winner committed after this request looked

    monkeypatch.setattr(ingest.uow.contacts, "by_external_id", not_seen_yet)
    loser = await put_contact(a_profile(name="Second", tags=("late",)), ingest.uow, LIMIT)

    assert loser.id == winner.id
    assert (loser.name, loser.tags, loser.topics) == ("Second", ("late",), ("news",))
    assert len(ingest.uow.contacts.rows) == 1
    assert len(ingest.uow.published) == published


@pytest.mark.parametrize(
    ("fields", "reason", "message"),
    [
        ({"external_id": "  "}, "EXTERNAL_ID_REQUIRED", "external_id is required"),
        ({"email": "nope"}, "INVALID_EMAIL", "Invalid email 'nope': "),
        ({"phone": "4155550100"}, "INVALID_PHONE", "Invalid phone '4155550100': "),
        ({"name": "n" * 257}, "FIELD_TOO_LONG", "name is too long (257 characters): at most 256"),
        ({"tags": ("ok", "")}, "INVALID_TAG", "A tag must not be empty"),
        ({"tags": tuple(f"t{i}" for i in range(201))}, "TOO_MANY_TAGS", "A contact has at most 200 tags"),
    ],
)
async def test_put_contact_checks_the_profile_and_keeps_nothing(
    ingest: Ingest, fields: dict[str, Any], reason: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await put_contact(a_profile(**fields), ingest.uow, LIMIT)

    assert raised.value.reason == reason
    assert raised.value.message.startswith(message)
    assert_nothing_kept(ingest)


async def test_put_contact_custom_fields_obey_the_payload_limit(ingest: Ingest) -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        await put_contact(a_profile(custom_fields={"bio": "x" * 200}), ingest.uow, 100)

    assert raised.value.metadata["limit"] == "100"
    assert_nothing_kept(ingest)


async def test_get_contact_answers_the_teams_contact_only(ingest: Ingest) -> None:
    created = await put_contact(a_profile(email="ada@example.com"), ingest.uow, LIMIT)

    assert await get_contact(TEAM, "user-1", ingest.uow) == created
    for team_id, external_id in (("team-2", "user-1"), (TEAM, "user-2")):
        with pytest.raises(NotFound) as raised:
            await get_contact(team_id, external_id, ingest.uow)
        assert (raised.value.reason, raised.value.message) == ("CONTACT_NOT_FOUND", "Contact not found")
        assert raised.value.metadata == {"external_id": external_id}


async def test_erase_contact_erases_elsewhere_first_then_here_and_reports_both(ingest: Ingest) -> None:
    await put_contact(a_profile(), ingest.uow, LIMIT)
    await put_contact(a_profile(team_id="team-2"), ingest.uow, LIMIT)
    asked: list[Contact] = []

    async def elsewhere(contact: Contact) -> dict[str, int]:
        asked.append(contact)
        assert (await get_contact(TEAM, "user-1", ingest.uow)).id == contact.id, "still here meanwhile"
        return {"executor.runs": 3, "tracker.triggers": 2}

    erased = await erase_contact(TEAM, "user-1", ingest.uow, elsewhere)

    assert erased == {"executor.runs": 3, "ingest.contacts": 1, "tracker.triggers": 2}
    assert [(c.team_id, c.external_id) for c in asked] == [(TEAM, "user-1")]
    with pytest.raises(NotFound):
        await get_contact(TEAM, "user-1", ingest.uow)
    with pytest.raises(NotFound) as raised:
        await erase_contact(TEAM, "user-1", ingest.uow, elsewhere)
    assert raised.value.reason == "CONTACT_NOT_FOUND"
    assert len(asked) == 1, "an unknown contact is not erased elsewhere"
    assert (await get_contact("team-2", "user-1", ingest.uow)).team_id == "team-2"


async def test_erase_contact_keeps_the_contact_when_another_service_cannot_erase(ingest: Ingest) -> None:
    await put_contact(a_profile(), ingest.uow, LIMIT)

    async def unavailable(contact: Contact) -> dict[str, int]:
        raise Unavailable("The contact could not be erased from the tracker service just now")

    with pytest.raises(Unavailable):
        await erase_contact(TEAM, "user-1", ingest.uow, unavailable)

    assert (await get_contact(TEAM, "user-1", ingest.uow)).external_id == "user-1"


async def test_change_tags_adds_and_removes_in_one_change(ingest: Ingest) -> None:
    await put_contact(a_profile(tags=("a", "b")), ingest.uow, LIMIT)

    contact = await change_tags(TEAM, "user-1", [" c ", "a"], ["b", "missing"], ingest.uow)

    assert contact.tags == ("a", "c")
    assert (await get_contact(TEAM, "user-1", ingest.uow)).tags == ("a", "c")


async def test_change_tags_that_changes_nothing_writes_nothing(ingest: Ingest) -> None:
    created = await put_contact(a_profile(tags=("a",)), ingest.uow, LIMIT)
    ingest.clock.advance(timedelta(minutes=1))

    contact = await change_tags(TEAM, "user-1", ["a"], ["b"], ingest.uow)

    assert contact.updated_at == created.updated_at == NOW


async def test_a_tag_cannot_be_added_and_removed_at_once(ingest: Ingest) -> None:
    await put_contact(a_profile(tags=("a",)), ingest.uow, LIMIT)

    with pytest.raises(InvalidArgument) as raised:
        await change_tags(TEAM, "user-1", ["x", "y"], ["y", "x"], ingest.uow)

    assert raised.value.reason == "CONFLICTING_TAGS"
    assert raised.value.message == "A tag cannot be both added and removed: x, y"


async def test_change_tags_of_an_unknown_contact_is_not_found(ingest: Ingest) -> None:
    with pytest.raises(NotFound) as raised:
        await change_tags(TEAM, "ghost", ["a"], [], ingest.uow)

    assert raised.value.reason == "CONTACT_NOT_FOUND"


async def test_subscribing_a_contact_to_a_topic_announces_herald_topic_subscribed_once(
    ingest: Ingest,
) -> None:
    created = await put_contact(a_profile(), ingest.uow, LIMIT)

    contact = await subscribe_topic(TEAM, "user-1", "product-news", ingest.uow)
    again = await subscribe_topic(TEAM, "user-1", "product-news", ingest.uow)

    assert contact.topics == again.topics == ("product-news",)
    [announced] = events_named(ingest, "herald.topic.subscribed")
    assert from_struct(announced.data) == {"contact_id": str(created.id), "topic": "product-news"}
    assert list(announced.contact.topics) == ["product-news"]
    assert announced.source.type == "herald"
    [stored] = stored_events(ingest, "herald.topic.subscribed")
    record = await ingest.uow.events.trigger(TEAM, stored.trigger_id)
    assert record is not None and record.contact_id == created.id
    accepted = [
        r for r in tracking_records(ingest, "trigger_accepted") if r.trigger_id == str(stored.trigger_id)
    ]
    assert len(accepted) == 1


async def test_unsubscribing_removes_the_topic_and_announces_nothing(ingest: Ingest) -> None:
    await put_contact(a_profile(), ingest.uow, LIMIT)
    await subscribe_topic(TEAM, "user-1", "news", ingest.uow)
    await subscribe_topic(TEAM, "user-1", "offers", ingest.uow)
    published = len(ingest.uow.published)

    contact = await unsubscribe_topic(TEAM, "user-1", "news", ingest.uow)
    unchanged = await unsubscribe_topic(TEAM, "user-1", "never", ingest.uow)

    assert contact.topics == unchanged.topics == ("offers",)
    assert (await get_contact(TEAM, "user-1", ingest.uow)).topics == ("offers",)
    assert len(ingest.uow.published) == published


@pytest.mark.parametrize("handler", [subscribe_topic, unsubscribe_topic])
async def test_topics_are_checked_and_need_a_known_contact(
    ingest: Ingest, handler: Callable[..., Any]
) -> None:
    await put_contact(a_profile(), ingest.uow, LIMIT)

    with pytest.raises(InvalidArgument) as invalid:
        await handler(TEAM, "user-1", "-news letter", ingest.uow)
    with pytest.raises(NotFound) as unknown:
        await handler(TEAM, "ghost", "news", ingest.uow)

    assert invalid.value.reason == "INVALID_TOPIC"
    assert invalid.value.message.startswith("Invalid topic '-news letter': use 1-128 letters")
    assert unknown.value.reason == "CONTACT_NOT_FOUND"
    assert (await get_contact(TEAM, "user-1", ingest.uow)).topics == ()


# --------------------------------------------------------------------------------------------
# Project policy and event types
# --------------------------------------------------------------------------------------------


async def test_a_project_without_a_policy_has_the_defaults(ingest: Ingest) -> None:
    policy = await get_policy(TEAM, ingest.uow)

    assert policy == ProjectPolicy()
    assert (policy.event_payload_limit_bytes, policy.unknown_events, policy.retention_days) == (
        256 * 1024,
        "accept",
        90,
    )
    assert (policy.idempotency_window, policy.idempotency_period) == ("PT24H", timedelta(hours=24))
    assert policy.effective_rate_limit is None


async def test_update_policy_changes_only_the_fields_given_and_keeps_them(ingest: Ingest) -> None:
    await update_policy(TEAM, PolicyChange(unknown_events="reject", idempotency_window=" PT1H "), ingest.uow)

    updated = await update_policy(TEAM, PolicyChange(plan="pro", rate_limit_per_hour=50), ingest.uow)

    assert updated == ProjectPolicy(
        unknown_events="reject", idempotency_window="PT1H", plan="pro", rate_limit_per_hour=50
    )
    assert await get_policy(TEAM, ingest.uow) == updated
    assert updated.effective_rate_limit == 50
    cleared = await update_policy(TEAM, PolicyChange(rate_limit_per_hour=0), ingest.uow)
    assert cleared.effective_rate_limit == 10_000
    assert await get_policy("team-2", ingest.uow) == ProjectPolicy()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (PolicyChange(unknown_events="maybe"), "Invalid unknown_events: must be 'accept' or 'reject'"),
        (
            PolicyChange(event_payload_limit_bytes=0),
            "Invalid event_payload_limit_bytes: must be between 1 and",
        ),
        (
            PolicyChange(idempotency_window="PT10S"),
            "Invalid idempotency_window: must be between PT1M and P30D",
        ),
        (PolicyChange(plan="gold"), "Invalid plan: must be one of 'starter', 'pro', 'enterprise'"),
    ],
)
async def test_an_invalid_policy_change_changes_nothing(
    ingest: Ingest, change: PolicyChange, message: str
) -> None:
    await update_policy(TEAM, PolicyChange(retention_days=30), ingest.uow)

    with pytest.raises(InvalidArgument) as raised:
        await update_policy(TEAM, dataclasses.replace(change, retention_days=7), ingest.uow)

    assert raised.value.message.startswith(message)
    assert (await get_policy(TEAM, ingest.uow)).retention_days == 30


async def test_event_types_are_registered_listed_and_deleted_per_team(ingest: Ingest) -> None:
    await ingest.send(event_name="order.completed")
    registered = await register_event_type(TEAM, "order.completed", "An order was paid", ingest.uow)
    await register_event_type(TEAM, "cart.abandoned", "", ingest.uow)
    await register_event_type("team-2", "other.event", "", ingest.uow)

    listed = await list_event_types(TEAM, ingest.uow)

    assert (registered.origin, registered.description, registered.created_at) == (
        "registered",
        "An order was paid",
        NOW,
    )
    assert [(t.name, t.origin) for t in listed] == [
        ("cart.abandoned", "registered"),
        ("order.completed", "registered"),
    ]
    await delete_event_type(TEAM, "cart.abandoned", ingest.uow)
    assert [t.name for t in await list_event_types(TEAM, ingest.uow)] == ["order.completed"]
    with pytest.raises(NotFound) as raised:
        await delete_event_type(TEAM, "cart.abandoned", ingest.uow)
    assert (raised.value.reason, raised.value.message) == ("EVENT_TYPE_NOT_FOUND", "Event type not found")
    assert raised.value.metadata == {"event_name": "cart.abandoned"}


@pytest.mark.parametrize(
    ("name", "description", "reason"),
    [
        ("herald.contact.created", "", "RESERVED_EVENT_NAME"),
        ("Order Completed", "", "INVALID_EVENT_NAME"),
        ("order.completed", "d" * 1001, "FIELD_TOO_LONG"),
    ],
)
async def test_an_invalid_event_type_is_not_registered(
    ingest: Ingest, name: str, description: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await register_event_type(TEAM, name, description, ingest.uow)

    assert raised.value.reason == reason
    assert ingest.uow.event_types.rows == {}


# --------------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------------


async def test_purge_removes_a_teams_old_events_and_expired_idempotency_keys(ingest: Ingest) -> None:
    old = await ingest.send(idempotency_key="old")
    old_elsewhere = await ingest.send(team_id="team-2")
    ingest.clock.advance(timedelta(days=3))
    recent = await ingest.send()
    ingest.clock.advance(timedelta(hours=1))

    purged = await purge(TEAM, ingest.clock() - timedelta(days=2), 100, ingest.uow)

    assert purged == {"ingest.events": 1, "ingest.triggers": 1, "ingest.idempotency_keys": 1}
    with pytest.raises(NotFound):
        await get_trigger_record(TEAM, str(old.trigger_id), ingest.uow)
    assert (await get_trigger_record(TEAM, str(recent.trigger_id), ingest.uow)).status == "queued"
    assert (await get_trigger_record("team-2", str(old_elsewhere.trigger_id), ingest.uow)).status == "queued"
    assert ingest.uow.idempotency.rows == {}
    assert old.trigger_id not in ingest.uow.events.triggers


async def test_purge_deletes_at_most_limit_rows_per_table(ingest: Ingest) -> None:
    for _ in range(3):
        await ingest.send()
    ingest.clock.advance(timedelta(days=3))

    first = await purge(TEAM, ingest.clock() - timedelta(days=1), 2, ingest.uow)
    second = await purge(TEAM, ingest.clock() - timedelta(days=1), 2, ingest.uow)

    assert (first["ingest.events"], second["ingest.events"]) == (2, 1)
