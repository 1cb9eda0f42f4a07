"""Direct workflow triggers (ingest's `trigger_workflow`): one trigger, one event per contact
listed or in a segment, each for the named workflow alone; bad requests change nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, tracking_pb2
from kernel.errors import Conflict, HeraldError, InvalidArgument, NotFound, PayloadTooLarge, Unprocessable
from kernel.policy import ProjectPolicy
from services.ingest import handlers
from services.ingest.domain import Contact, Recipient, TriggerWorkflow, WorkflowTriggered
from services.ingest.handlers import Intake, trigger_workflow
from tests.unit.fakes import FakeIngestUnitOfWork, FakePolicySource, FakeRateLimiter

TEAM = "team-1"
NOW = datetime(2029, 12, 1, 9, 0, tzinfo=UTC)
SUBJECT = f"events.{TEAM}.herald.workflow.triggered"


class FakeDirectory:
    """The matcher's answers: which workflows exist (and are active) and the segments' conditions."""

    def __init__(self) -> None:
        self.workflows = {"welcome": True, "paused": False}
        self.segments = {"pro": 'contact.custom_fields.plan == "Pro"'}

    async def workflow_active(self, key: str) -> bool:
        if key not in self.workflows:
            raise NotFound(f"Workflow {key!r} not found", reason="WORKFLOW_NOT_FOUND")
        return self.workflows[key]

    async def segment_condition(self, key: str) -> str:
        if key not in self.segments:
            raise NotFound(f"Segment {key!r} not found", reason="SEGMENT_NOT_FOUND")
        return self.segments[key]


class Setup:
    def __init__(self) -> None:
        self.uow = FakeIngestUnitOfWork(clock=lambda: NOW)
        self.policies = FakePolicySource()
        self.rates = FakeRateLimiter()
        self.directory = FakeDirectory()

    @property
    def intake(self) -> Intake:
        return Intake(lambda: self.uow, self.policies, self.rates)

    async def trigger(self, **fields: Any) -> WorkflowTriggered:
        values: dict[str, Any] = {"team_id": TEAM, "workflow_key": "welcome"}
        values.update(fields)
        return await trigger_workflow(TriggerWorkflow(**values), self.intake, self.directory)

    async def contact(self, external_id: str, email: str = "", **custom_fields: Any) -> Contact:
        contact, _ = await self.uow.contacts.add(
            Contact(
                id=uuid.uuid4(),
                team_id=TEAM,
                external_id=external_id or None,
                email=email or None,
                phone=None,
                name=None,
                custom_fields=custom_fields,
            )
        )
        return contact

    def events(self) -> list[event_pb2.Event]:
        return [event_pb2.Event.FromString(m.payload) for m in self.uow.published if m.subject == SUBJECT]

    def accepted(self) -> list[tracking_pb2.TrackingRecord]:
        return [
            tracking_pb2.TrackingRecord.FromString(m.payload)
            for m in self.uow.published
            if m.subject == f"tracking.{TEAM}.trigger_accepted"
        ]

    def assert_nothing_new(self, events_before: int = 0) -> None:
        assert len(self.uow.events.rows) == events_before
        assert not self.uow.idempotency.rows
        assert not self.uow.published


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.setattr(handlers, "utcnow", lambda: NOW)
    return Setup()


async def test_listed_contacts_each_get_one_event_of_one_trigger_for_the_named_workflow(setup: Setup) -> None:
    setup.policies.policies[TEAM] = ProjectPolicy(rate_limit_per_hour=100)
    ada = await setup.contact("u-ada", "ada@example.com")
    bob = await setup.contact("u-bob", "bob@example.com")
    cy = await setup.contact("", "cy@example.com")

    triggered = await setup.trigger(
        contacts=(
            Recipient(external_id="u-ada"),
            Recipient(contact_id=str(bob.id)),
            Recipient(email="  CY@Example.com "),
            Recipient(email="ada@example.com"),  # Ada again, by email: counted once
        ),
        variables={"promo": "WINTER"},
        data={"campaign": "launch"},
    )

    assert triggered.total_contacts == 3
    assert triggered.message == "Workflow 'welcome' triggered for 3 contacts"
    events = setup.events()
    assert [e.contact.id for e in events] == [str(ada.id), str(bob.id), str(cy.id)]
    assert {e.trigger_id for e in events} == {str(triggered.trigger_id)}
    assert {e.workflow_key for e in events} == {"welcome"}
    assert {e.trigger_events for e in events} == {3}
    assert len({e.event_id for e in events}) == 3
    assert events[0].data["campaign"] == "launch" and events[0].variables["promo"] == "WINTER"
    assert events[0].source.type == "api"
    [record] = setup.accepted()
    assert record.trigger_id == str(triggered.trigger_id)
    assert (record.trigger_accepted.events, record.trigger_accepted.contacts) == (3, 3)
    assert record.trigger_accepted.event_name == "herald.workflow.triggered"
    assert list(setup.rates.counts.values()) == [1]  # one request against the rate limit
    stored = await setup.uow.events.trigger(TEAM, triggered.trigger_id)
    assert stored is not None and stored.contacts == 3


async def test_a_segment_targets_the_contacts_in_it_now(setup: Setup) -> None:
    pro = [await setup.contact(f"u-pro-{n}", plan="Pro") for n in range(3)]
    await setup.contact("u-free", plan="Free")
    await setup.contact("u-none")  # no plan: the condition cannot be evaluated, so not a member

    triggered = await setup.trigger(segment="pro")

    assert triggered.total_contacts == 3
    assert sorted(e.contact.id for e in setup.events()) == sorted(str(c.id) for c in pro)


async def test_a_segment_is_read_page_by_page(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "SEGMENT_PAGE", 2)
    for n in range(5):
        await setup.contact(f"u-{n}", plan="Pro")

    assert (await setup.trigger(segment="pro")).total_contacts == 5


async def test_unknown_contacts_are_named_and_nothing_is_triggered(setup: Setup) -> None:
    await setup.contact("u-ada")
    listed = [Recipient(external_id="u-ada")] + [Recipient(external_id=f"ghost-{n}") for n in range(7)]

    with pytest.raises(NotFound) as raised:
        await setup.trigger(contacts=tuple(listed), idempotency_key="k-1")

    message = raised.value.message
    assert message.startswith("7 of the listed contacts do not exist: contacts[1] (external_id 'ghost-0')")
    assert "and 2 more" in message and "PUT /api/v1/contacts/{external_id}" in message
    setup.assert_nothing_new()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workflow_key": " "}, "workflow_key is required"),
        ({}, "exactly one of 'contacts'"),
        ({"contacts": (Recipient(external_id="u-1"),), "segment": "pro"}, "exactly one of 'contacts'"),
        ({"contacts": (Recipient(),)}, "contacts[0]: name the contact by exactly one of"),
        (
            {"contacts": (Recipient(external_id="u-1"), Recipient(external_id="u-2", email="a@example.com"))},
            "contacts[1]: name the contact by exactly one of",
        ),
        ({"contacts": (Recipient(contact_id="not-a-uuid"),)}, "Invalid contacts[0].contact_id"),
        ({"contacts": (Recipient(email="not an email"),)}, "contacts[0].email"),
        ({"contacts": (Recipient(external_id="x" * 300),)}, "contacts[0].external_id"),
        ({"contacts": (Recipient(external_id="u-1"),), "idempotency_key": "k" * 300}, "idempotency_key"),
    ],
)
async def test_bad_requests_say_what_to_fix_and_change_nothing(
    setup: Setup, fields: dict[str, Any], expected: str
) -> None:
    await setup.contact("u-1")

    with pytest.raises(InvalidArgument) as raised:
        await setup.trigger(**fields)

    assert expected in raised.value.message
    setup.assert_nothing_new()


async def test_more_than_ten_thousand_listed_contacts_are_refused(setup: Setup) -> None:
    listed = tuple(Recipient(external_id=f"u-{n}") for n in range(10_001))

    with pytest.raises(InvalidArgument, match="at most 10000 contacts; this one lists 10001"):
        await setup.trigger(contacts=listed)
    setup.assert_nothing_new()


async def test_a_segment_larger_than_the_limit_or_empty_is_refused(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Unprocessable, match="Segment 'pro' has no contacts now"):
        await setup.trigger(segment="pro")
    monkeypatch.setattr(handlers, "MAX_TRIGGER_CONTACTS", 2)
    for n in range(3):
        await setup.contact(f"u-{n}", plan="Pro")

    with pytest.raises(Unprocessable, match="Segment 'pro' has more than 2 contacts"):
        await setup.trigger(segment="pro")
    setup.assert_nothing_new()


@pytest.mark.parametrize(
    ("fields", "error", "expected"),
    [
        ({"workflow_key": "paused"}, Conflict, "Workflow 'paused' is paused: activate it"),
        ({"workflow_key": "nope"}, NotFound, "Workflow 'nope' not found"),
        ({"segment": "nope", "contacts": ()}, NotFound, "Segment 'nope' not found"),
    ],
)
async def test_unknown_or_paused_workflows_and_unknown_segments_are_refused(
    setup: Setup, fields: dict[str, Any], error: type[HeraldError], expected: str
) -> None:
    await setup.contact("u-1")
    values: dict[str, Any] = {"contacts": (Recipient(external_id="u-1"),)}
    values.update(fields)

    with pytest.raises(error, match=expected):
        await setup.trigger(**values)
    setup.assert_nothing_new()


async def test_data_and_variables_over_the_payload_limit_are_refused(setup: Setup) -> None:
    setup.policies.policies[TEAM] = ProjectPolicy(event_payload_limit_bytes=1024)
    await setup.contact("u-1")

    with pytest.raises(PayloadTooLarge, match="The trigger's data and variables is"):
        await setup.trigger(contacts=(Recipient(external_id="u-1"),), data={"blob": "x" * 2000})
    setup.assert_nothing_new()


async def test_the_same_idempotency_key_replays_the_trigger_and_another_body_is_refused(setup: Setup) -> None:
    await setup.contact("u-1")
    await setup.contact("u-2")
    listed = (Recipient(external_id="u-1"), Recipient(external_id="u-2"))
    first = await setup.trigger(contacts=listed, idempotency_key="launch-1")
    published = len(setup.uow.published)

    again = await setup.trigger(contacts=listed, idempotency_key="launch-1")

    assert again == WorkflowTriggered(first.trigger_id, "welcome", 2, replayed=True)
    assert len(setup.uow.published) == published and len(setup.uow.events.rows) == 2
    with pytest.raises(Unprocessable, match="idempotency_key was already used for a different request"):
        await setup.trigger(contacts=listed[:1], idempotency_key="launch-1")
    assert len(setup.uow.events.rows) == 2


async def test_a_replay_answers_its_trigger_even_after_the_workflow_was_paused(setup: Setup) -> None:
    await setup.contact("u-1")
    listed = (Recipient(external_id="u-1"),)
    first = await setup.trigger(contacts=listed, idempotency_key="launch-2")
    setup.directory.workflows["welcome"] = False

    again = await setup.trigger(contacts=listed, idempotency_key="launch-2")

    assert (again.trigger_id, again.replayed) == (first.trigger_id, True)
    with pytest.raises(Conflict, match="is paused"):
        await setup.trigger(contacts=listed, idempotency_key="launch-3")


async def test_data_copied_into_every_event_is_capped_in_all(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "MAX_TRIGGER_BYTES", 1000)
    for n in range(3):
        await setup.contact(f"u-{n}")
    listed = tuple(Recipient(external_id=f"u-{n}") for n in range(3))

    with pytest.raises(PayloadTooLarge, match="its 3 contacts, come to 1"):
        await setup.trigger(contacts=listed, data={"blob": "x" * 400})
    setup.assert_nothing_new()
    assert (await setup.trigger(contacts=listed[:2], data={"blob": "x" * 400})).total_contacts == 2
