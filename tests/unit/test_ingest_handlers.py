"""Ingest's use cases: accepting events, resolving their contact, and the trigger records."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, tracking_pb2
from kernel.errors import InvalidArgument, NotFound
from kernel.structs import from_struct
from services.ingest.domain import AcceptedEvent, Contact, EventSource, SendEvent, UserInfo
from services.ingest.handlers import QUEUED_MESSAGE, get_trigger_record, send_event
from tests.unit.fakes import FakeIngestUnitOfWork

TEAM = "team-1"


def a_signup(**fields: Any) -> SendEvent:
    values: dict[str, Any] = {"team_id": TEAM, "event_name": "user_signup"}
    values.update(fields)
    return SendEvent(**values)


def published_event(uow: FakeIngestUnitOfWork) -> event_pb2.Event:
    [message] = [m for m in uow.published if m.subject.startswith("events.")]
    return event_pb2.Event.FromString(message.payload)


def stored_contacts(uow: FakeIngestUnitOfWork) -> list[Contact]:
    return list(uow.contacts.rows.values())


# --------------------------------------------------------------------------------------------
# send_event
# --------------------------------------------------------------------------------------------


async def test_send_event_publishes_the_event_and_its_accepted_record() -> None:
    uow = FakeIngestUnitOfWork()

    queued = await send_event(a_signup(event_name="order.completed"), uow)

    event_message, tracking = uow.published
    assert event_message.subject == "events.team-1.order.completed"
    assert event_message.msg_id == str(queued.event_id)
    assert event_message.project_id == TEAM
    assert tracking.subject == "tracking.team-1.trigger_accepted"
    assert tracking.msg_id == f"trigger_accepted:{queued.trigger_id}"
    record = tracking_pb2.TrackingRecord.FromString(tracking.payload)
    assert record.trigger_id == str(queued.trigger_id)
    assert record.trigger_accepted.event_id == str(queued.event_id)
    assert record.trigger_accepted.event_name == "order.completed"
    assert record.HasField("recorded_at")


async def test_send_event_answers_the_event_message_sequence_as_job_id() -> None:
    uow = FakeIngestUnitOfWork()

    first = await send_event(a_signup(), uow)
    second = await send_event(a_signup(), uow)

    # Each event publishes two messages: the event (sequence 1, then 3) and its tracking record.
    assert (first.job_id, second.job_id) == ("1", "3")
    assert first.message == second.message == QUEUED_MESSAGE == "Event queued successfully"
    assert first.trigger_id != second.trigger_id


async def test_send_event_stores_event_and_trigger_in_the_same_commit() -> None:
    uow = FakeIngestUnitOfWork()

    queued = await send_event(a_signup(), uow)

    [event] = uow.events.events
    assert (event.id, event.trigger_id, event.name) == (queued.event_id, queued.trigger_id, "user_signup")
    assert uow.commits == 1


async def test_send_event_answers_an_empty_job_id_when_the_bus_did_not_publish() -> None:
    uow = FakeIngestUnitOfWork()
    uow.bus_reachable = False

    queued = await send_event(a_signup(), uow)

    assert queued.job_id == ""
    assert queued.message == "Event queued successfully"
    assert [event.id for event in uow.events.events] == [queued.event_id]
    assert [m.msg_id for m in uow.deferred] == [str(queued.event_id), f"trigger_accepted:{queued.trigger_id}"]


@pytest.mark.parametrize(
    ("name", "reason", "message"),
    [
        ("", "EVENT_NAME_REQUIRED", "Event name is required"),
        ("UserSignup", "INVALID_EVENT_NAME", "Invalid event name 'UserSignup'"),
        ("purchase-completed", "INVALID_EVENT_NAME", "Invalid event name 'purchase-completed'"),
        ("a..b", "INVALID_EVENT_NAME", "Invalid event name 'a..b'"),
        ("herald.anything", "RESERVED_EVENT_NAME", "reserved namespace 'herald.'"),
        ("a" * 129, "EVENT_NAME_TOO_LONG", "Event name is too long (129 characters)"),
    ],
)
async def test_send_event_rejects_an_invalid_name_and_keeps_nothing(
    name: str, reason: str, message: str
) -> None:
    uow = FakeIngestUnitOfWork()

    with pytest.raises(InvalidArgument) as raised:
        await send_event(a_signup(event_name=name, user_info=UserInfo(email="ada@example.com")), uow)

    assert raised.value.reason == reason
    assert message in raised.value.message
    assert uow.events.rows == {}
    assert uow.contacts.rows == {}
    assert uow.published == [] and uow.deferred == []
    assert uow.commits == 0


async def test_send_event_accepts_a_name_of_exactly_128_characters() -> None:
    uow = FakeIngestUnitOfWork()

    await send_event(a_signup(event_name="a" * 128), uow)

    assert uow.subjects()[0] == f"events.team-1.{'a' * 128}"


async def test_send_event_keeps_nothing_when_storing_the_event_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    uow = FakeIngestUnitOfWork()

    async def disk_full(event: AcceptedEvent) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(uow.events, "add", disk_full)

    with pytest.raises(RuntimeError, match="disk full"):
        await send_event(a_signup(user_info=UserInfo(email="ada@example.com")), uow)

    assert uow.contacts.rows == {}
    assert uow.published == []


# --------------------------------------------------------------------------------------------
# The event on the bus
# --------------------------------------------------------------------------------------------


async def test_the_published_event_carries_data_variables_and_the_contact_snapshot() -> None:
    uow = FakeIngestUnitOfWork()
    command = a_signup(
        user_info=UserInfo(
            external_id="user_12345",
            email="john.doe@example.com",
            phone=" +15551234567 ",
            name="John Doe",
            custom_fields={"plan": "pro", "age": 30},
        ),
        source=EventSource(type="web_signup", ip="203.0.113.9", user_agent="curl/8"),
        event_data={"plan": "pro", "seats": 3, "ratio": 0.5, "items": [1, 2], "nested": {"count": 7}},
        variables={"user_name": "John", "score": 95},
    )

    queued = await send_event(command, uow)

    event = published_event(uow)
    [contact] = stored_contacts(uow)
    assert (event.event_id, event.trigger_id) == (str(queued.event_id), str(queued.trigger_id))
    assert (event.project_id, event.name) == (TEAM, "user_signup")
    data = from_struct(event.data)
    assert data == {"plan": "pro", "seats": 3, "ratio": 0.5, "items": [1, 2], "nested": {"count": 7}}
    assert type(data["seats"]) is int and type(data["nested"]["count"]) is int
    variables = from_struct(event.variables)
    assert variables == {"user_name": "John", "score": 95}
    assert type(variables["score"]) is int
    assert event.contact.id == str(contact.id)
    assert event.contact.external_id == "user_12345"
    assert event.contact.email == "john.doe@example.com"
    assert event.contact.phone == "+15551234567"
    assert event.contact.name == "John Doe"
    assert from_struct(event.contact.custom_fields) == {"plan": "pro", "age": 30}
    assert (event.source.type, event.source.ip, event.source.user_agent) == (
        "web_signup",
        "203.0.113.9",
        "curl/8",
    )
    assert event.HasField("occurred_at") and event.HasField("accepted_at")


# --------------------------------------------------------------------------------------------
# Contact resolution
# --------------------------------------------------------------------------------------------


async def test_a_new_contact_is_created_with_a_normalized_email() -> None:
    uow = FakeIngestUnitOfWork()
    decomposed = unicodedata.normalize("NFD", "  Ángel@Example.COM ")

    await send_event(a_signup(user_info=UserInfo(email=decomposed, name=" Ángel ")), uow)

    [contact] = stored_contacts(uow)
    assert contact.email == unicodedata.normalize("NFC", "ángel@example.com")
    assert contact.name == "Ángel"
    assert contact.external_id is None
    assert published_event(uow).contact.email == contact.email


async def test_a_known_contact_is_found_by_external_id_and_updated() -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(
        a_signup(
            user_info=UserInfo(external_id="user-1", name="Ada", custom_fields={"plan": "pro", "age": 36})
        ),
        uow,
    )
    [before] = stored_contacts(uow)

    await send_event(
        a_signup(
            user_info=UserInfo(
                external_id="user-1",
                email="ADA@example.com",
                name="Ada Lovelace",
                custom_fields={"plan": "team"},
            )
        ),
        uow,
    )

    [after] = stored_contacts(uow)
    assert after.id == before.id
    assert after.name == "Ada Lovelace"
    assert after.email == "ada@example.com"
    assert after.custom_fields == {"plan": "team", "age": 36}
    latest = event_pb2.Event.FromString(uow.published[2].payload)
    assert latest.contact.id == str(before.id)
    assert from_struct(latest.contact.custom_fields) == {"plan": "team", "age": 36}


async def test_a_known_contact_is_kept_as_it_is_when_the_event_says_nothing_new() -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(a_signup(user_info=UserInfo(external_id="user-1", name="Ada")), uow)
    [before] = stored_contacts(uow)

    await send_event(a_signup(user_info=UserInfo(external_id="user-1")), uow)

    assert stored_contacts(uow) == [before]


async def test_an_anonymous_contact_is_found_by_normalized_email() -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(a_signup(user_info=UserInfo(email="ada@example.com")), uow)
    [before] = stored_contacts(uow)

    await send_event(a_signup(user_info=UserInfo(email="  ADA@Example.com", name="Ada")), uow)

    [after] = stored_contacts(uow)
    assert after.id == before.id
    assert after.name == "Ada"
    snapshots = [event_pb2.Event.FromString(m.payload).contact.id for m in uow.published[::2]]
    assert snapshots == [str(before.id), str(before.id)]


async def test_an_email_belonging_to_another_external_id_makes_a_new_contact() -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(a_signup(user_info=UserInfo(external_id="user-1", email="shared@example.com")), uow)

    await send_event(a_signup(user_info=UserInfo(external_id="user-2", email="shared@example.com")), uow)

    contacts = stored_contacts(uow)
    assert sorted(c.external_id or "" for c in contacts) == ["user-1", "user-2"]
    assert {c.email for c in contacts} == {"shared@example.com"}


async def test_an_anonymous_contact_found_by_email_takes_the_external_id_the_event_gives() -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(a_signup(user_info=UserInfo(email="ada@example.com")), uow)
    [anonymous] = stored_contacts(uow)

    await send_event(a_signup(user_info=UserInfo(external_id="user-1", email="ada@example.com")), uow)

    [contact] = stored_contacts(uow)
    assert contact.id == anonymous.id
    assert contact.external_id == "user-1"


async def test_an_event_that_identifies_nobody_has_no_contact() -> None:
    uow = FakeIngestUnitOfWork()

    await send_event(a_signup(user_info=UserInfo(name="Nobody", phone="+1555")), uow)

    assert uow.contacts.rows == {}
    assert published_event(uow).contact == event_pb2.Contact()
    record = tracking_pb2.TrackingRecord.FromString(uow.published[1].payload)
    assert record.trigger_accepted.contact_id == ""
    [event] = uow.events.events
    assert event.contact is None


async def test_contacts_of_different_teams_are_separate() -> None:
    uow = FakeIngestUnitOfWork()

    await send_event(a_signup(team_id="team-1", user_info=UserInfo(external_id="user-1")), uow)
    await send_event(a_signup(team_id="team-2", user_info=UserInfo(external_id="user-1")), uow)

    assert sorted(c.team_id for c in stored_contacts(uow)) == ["team-1", "team-2"]


# --------------------------------------------------------------------------------------------
# get_trigger_record
# --------------------------------------------------------------------------------------------


async def test_get_trigger_record_answers_the_queued_trigger() -> None:
    uow = FakeIngestUnitOfWork()
    queued = await send_event(a_signup(), uow)

    record = await get_trigger_record(TEAM, str(queued.trigger_id), uow)

    assert record.id == queued.trigger_id
    assert record.event_id == queued.event_id
    assert record.event_name == "user_signup"
    assert record.status == "queued"
    assert record.scheduled_for is None


@pytest.mark.parametrize("trigger_id", ["not-a-uuid", "", str(uuid.uuid4())])
async def test_get_trigger_record_of_a_malformed_or_unknown_id_is_not_found(trigger_id: str) -> None:
    uow = FakeIngestUnitOfWork()
    await send_event(a_signup(), uow)

    with pytest.raises(NotFound) as raised:
        await get_trigger_record(TEAM, trigger_id, uow)

    assert raised.value.reason == "TRIGGER_NOT_FOUND"
    assert raised.value.message == "Trigger not found"


async def test_get_trigger_record_of_another_team_is_not_found() -> None:
    uow = FakeIngestUnitOfWork()
    queued = await send_event(a_signup(), uow)

    with pytest.raises(NotFound) as raised:
        await get_trigger_record("team-2", str(queued.trigger_id), uow)

    assert raised.value.metadata == {"trigger_id": str(queued.trigger_id)}
