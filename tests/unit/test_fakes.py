"""The fakes keep the promises of the SQL adapters, or the handler tests would prove nothing."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kernel.bus import OutgoingMessage
from kernel.clock import utcnow
from kernel.errors import Conflict, ResourceExhausted
from kernel.steps import StepSpec
from services.executor.domain import Run, StepState
from services.ingest.domain import AcceptedEvent, Contact, EventSource, IdempotencyRecord
from tests.unit.fakes import FakeExecutorUnitOfWork, FakeIngestUnitOfWork, FakeRateLimiter, UniqueViolation

NOW = datetime(2029, 12, 1, 9, 0, tzinfo=UTC)


def a_message(msg_id: str) -> OutgoingMessage:
    return OutgoingMessage(
        subject="events.team-1.user_signup", payload=b"", msg_id=msg_id, project_id="team-1"
    )


def a_contact(
    *,
    contact_id: uuid.UUID | None = None,
    external_id: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> Contact:
    return Contact(
        id=contact_id or uuid.uuid4(),
        team_id="team-1",
        external_id=external_id,
        email=email,
        phone=None,
        name=name,
    )


async def test_commit_publishes_pending_messages_with_increasing_sequences() -> None:
    uow = FakeIngestUnitOfWork()

    async with uow:
        uow.publish(a_message("first"))
        uow.publish(a_message("second"))
        assert uow.published == []
        first_receipts = await uow.commit()
    async with uow:
        uow.publish(a_message("third"))
        second_receipts = await uow.commit()

    assert first_receipts == {"first": 1, "second": 2}
    assert second_receipts == {"third": 3}
    assert [m.msg_id for m in uow.published] == ["first", "second", "third"]


async def test_leaving_without_commit_discards_changes_and_messages() -> None:
    uow = FakeIngestUnitOfWork()
    contact = a_contact(email="ada@example.com")

    async with uow:
        stored, created = await uow.contacts.add(contact)
        uow.publish(a_message("never"))
        assert created is True
        assert await uow.contacts.by_email("team-1", "ada@example.com") == stored
        assert stored.same_profile(contact) and stored.id == contact.id

    assert uow.contacts.rows == {}
    assert uow.published == []
    assert uow.commits == 0


async def test_an_exception_inside_the_block_rolls_back() -> None:
    uow = FakeIngestUnitOfWork()

    with pytest.raises(RuntimeError):
        async with uow:
            await uow.contacts.add(a_contact(email="ada@example.com"))
            raise RuntimeError("boom")

    assert uow.contacts.rows == {}


async def test_a_commit_while_the_bus_is_unreachable_returns_no_receipt() -> None:
    uow = FakeIngestUnitOfWork()
    uow.bus_reachable = False

    async with uow:
        uow.publish(a_message("late"))
        receipts = await uow.commit()

    assert receipts == {}
    assert uow.published == []
    assert [m.msg_id for m in uow.deferred] == ["late"]


async def test_contact_save_upserts_by_external_id_and_keeps_the_stored_id() -> None:
    uow = FakeIngestUnitOfWork()
    first = a_contact(external_id="user-1", name="Ada")
    racing = a_contact(external_id="user-1", name="Ada Lovelace")

    async with uow:
        await uow.contacts.add(first)
        stored, created = await uow.contacts.add(racing)
        await uow.commit()

    assert created is False
    assert stored.id == first.id
    assert stored.name == "Ada Lovelace"
    assert list(uow.contacts.rows) == [first.id]


async def test_contact_save_upserts_anonymous_contacts_by_email() -> None:
    uow = FakeIngestUnitOfWork()
    first = a_contact(email="ada@example.com")

    async with uow:
        await uow.contacts.add(first)
        stored, merged_created = await uow.contacts.add(a_contact(email="ada@example.com", name="Ada"))
        identified, identified_created = await uow.contacts.add(
            a_contact(external_id="user-9", email="ada@example.com")
        )
        await uow.commit()

    assert (stored.id, merged_created) == (first.id, False)
    assert stored.name == "Ada"
    assert identified.id != first.id and identified_created is True
    assert len(uow.contacts.rows) == 2


async def test_contact_save_refuses_a_new_identity_for_an_existing_id() -> None:
    uow = FakeIngestUnitOfWork()
    anonymous = a_contact(email="ada@example.com")

    async with uow:
        await uow.contacts.add(anonymous)
        with pytest.raises(UniqueViolation):
            await uow.contacts.add(
                a_contact(contact_id=anonymous.id, external_id="user-1", email="ada@example.com")
            )


async def test_by_email_prefers_the_contact_without_an_external_id() -> None:
    uow = FakeIngestUnitOfWork()
    identified = a_contact(external_id="user-1", email="ada@example.com")
    anonymous = a_contact(email="ada@example.com")

    async with uow:
        await uow.contacts.add(identified)
        await uow.contacts.add(anonymous)
        found = await uow.contacts.by_email("team-1", "ada@example.com")

    assert found is not None and found.id == anonymous.id


async def test_a_contact_save_that_meets_a_stored_identity_merges_like_on_conflict_do_update() -> None:
    uow = FakeIngestUnitOfWork()
    first = dataclasses.replace(
        a_contact(external_id="user-1", email="ada@example.com", name="Ada"),
        phone="+14155550100",
        custom_fields={"plan": "pro", "age": 36},
        tags=("vip",),
        topics=("news",),
    )

    async with uow:
        await uow.contacts.add(first)
        stored, created = await uow.contacts.add(
            dataclasses.replace(a_contact(external_id="user-1", name=None), custom_fields={"plan": "team"})
        )

    assert created is False
    # COALESCE(excluded, stored) for email, phone and name; stored || excluded for custom fields;
    # tags and topics are not part of the upsert.
    assert (stored.email, stored.phone, stored.name) == ("ada@example.com", "+14155550100", "Ada")
    assert stored.custom_fields == {"plan": "team", "age": 36}
    assert (stored.tags, stored.topics) == (("vip",), ("news",))


async def test_a_contact_update_keeps_the_unique_indexes() -> None:
    uow = FakeIngestUnitOfWork()
    ada, _ = await uow.contacts.add(a_contact(email="ada@example.com"))
    bea, _ = await uow.contacts.add(a_contact(email="bea@example.com"))
    await uow.contacts.add(a_contact(external_id="user-1"))

    with pytest.raises(Conflict) as anonymous_clash:
        await uow.contacts.update(dataclasses.replace(bea, email="ada@example.com"))
    with pytest.raises(Conflict) as external_clash:
        await uow.contacts.update(dataclasses.replace(ada, external_id="user-1"))
    assert anonymous_clash.value.reason == external_clash.value.reason == "CONTACT_IDENTITY_CLASH"
    with pytest.raises(LookupError):
        await uow.contacts.update(dataclasses.replace(ada, team_id="team-2"))


async def test_a_unit_of_work_cannot_be_entered_twice_at_once() -> None:
    uow = FakeIngestUnitOfWork()

    async with uow:
        with pytest.raises(RuntimeError, match="still open"):
            await uow.__aenter__()

    async with uow:  # once the first transaction ended, the next may begin
        pass


def an_event(*, scheduled_for: datetime | None = None, contact: Contact | None = None) -> AcceptedEvent:
    return AcceptedEvent(
        id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id="team-1",
        name="user_signup",
        contact=contact,
        data={},
        variables={},
        source=EventSource(),
        occurred_at=NOW,
        accepted_at=NOW,
        scheduled_for=scheduled_for,
    )


async def test_triggers_roll_back_with_their_events() -> None:
    uow = FakeIngestUnitOfWork()
    event = an_event(scheduled_for=NOW + timedelta(hours=1))

    async with uow:
        await uow.events.add(event)
        record = await uow.events.trigger("team-1", event.trigger_id)
        assert record is not None and record.status == "scheduled"

    assert uow.events.rows == {} and uow.events.triggers == {}
    assert await uow.events.trigger("team-1", event.trigger_id) is None


async def test_only_a_scheduled_trigger_can_be_cancelled() -> None:
    uow = FakeIngestUnitOfWork()
    scheduled, queued = an_event(scheduled_for=NOW + timedelta(hours=1)), an_event()
    await uow.events.add(scheduled)
    await uow.events.add(queued)

    cancelled = await uow.events.cancel("team-1", scheduled.trigger_id, utcnow())

    assert cancelled is not None and cancelled.status == "cancelled"
    assert await uow.events.cancel("team-1", scheduled.trigger_id, utcnow()) is None
    assert await uow.events.cancel("team-1", queued.trigger_id, utcnow()) is None
    assert await uow.events.cancel("team-2", scheduled.trigger_id, utcnow()) is None


async def test_claim_due_returns_each_due_event_once_with_its_current_contact() -> None:
    uow = FakeIngestUnitOfWork()
    contact, _ = await uow.contacts.add(a_contact(external_id="user-1", name="Ada"))
    later = an_event(scheduled_for=NOW + timedelta(minutes=2), contact=contact)
    sooner = an_event(scheduled_for=NOW + timedelta(minutes=1))
    not_yet = an_event(scheduled_for=NOW + timedelta(hours=1))
    for event in (later, sooner, not_yet):
        await uow.events.add(event)
    await uow.contacts.update(dataclasses.replace(contact, name="Ada Lovelace"))

    first = await uow.events.claim_due(NOW + timedelta(minutes=5), limit=1)
    second = await uow.events.claim_due(NOW + timedelta(minutes=5), limit=10)
    third = await uow.events.claim_due(NOW + timedelta(minutes=5), limit=10)

    assert [event.id for event in first] == [sooner.id]
    assert [event.id for event in second] == [later.id]
    assert third == []
    assert second[0].contact is not None and second[0].contact.name == "Ada Lovelace"
    record = await uow.events.trigger("team-1", later.trigger_id)
    assert record is not None and record.status == "queued"


async def test_an_idempotency_key_is_claimed_once_until_it_expires() -> None:
    clock = [NOW]
    uow = FakeIngestUnitOfWork(clock=lambda: clock[0])
    first, second = uuid.uuid4(), uuid.uuid4()

    assert await uow.idempotency.claim("team-1", "k", "fp-1", first, NOW + timedelta(hours=1)) is None
    assert await uow.idempotency.claim("team-1", "k", "fp-2", second, NOW + timedelta(hours=1)) == (
        IdempotencyRecord("fp-1", first)
    )
    assert await uow.idempotency.claim("team-2", "k", "fp-2", second, NOW + timedelta(hours=1)) is None
    clock[0] = NOW + timedelta(hours=2)
    assert await uow.idempotency.claim("team-1", "k", "fp-2", second, NOW + timedelta(hours=3)) is None
    assert await uow.idempotency.claim("team-1", "k", "fp-3", uuid.uuid4(), NOW + timedelta(hours=3)) == (
        IdempotencyRecord("fp-2", second)
    )


async def test_the_rate_limiter_counts_per_team_and_hour_and_refuses_past_the_limit() -> None:
    limiter = FakeRateLimiter()
    at = NOW.replace(minute=59, second=30)

    first = await limiter.consume("team-1", 2, 1, at)
    second = await limiter.consume("team-1", 2, 1, at)
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.consume("team-1", 2, 1, at)
    other_team = await limiter.consume("team-2", 2, 1, at)
    next_hour = await limiter.consume("team-1", 2, 1, at + timedelta(minutes=1))

    assert (first.remaining, second.remaining) == (1, 0)
    assert first.reset_seconds == 30
    assert raised.value.reason == "RATE_LIMITED"
    assert raised.value.headers["retry-after"] == "30"
    assert (other_team.remaining, next_hour.remaining) == (1, 1)


def a_run(run_id: uuid.UUID) -> Run:
    return Run(
        id=run_id,
        team_id="team-1",
        trigger_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        workflow_key="welcome",
        workflow_version=1,
        contact_id="",
        context={},
        steps=[StepState(StepSpec("welcome", "email", "Hi", "Body"), position=0)],
    )


async def test_run_add_leaves_out_an_existing_run_id() -> None:
    uow = FakeExecutorUnitOfWork()
    run_id = uuid.uuid4()

    async with uow:
        assert await uow.runs.add([a_run(run_id)]) == {run_id}
        assert await uow.runs.add([a_run(run_id)]) == set()


async def test_a_locked_run_changes_only_when_saved_and_committed() -> None:
    uow = FakeExecutorUnitOfWork()
    run_id = uuid.uuid4()
    async with uow:
        await uow.runs.add([a_run(run_id)])
        await uow.commit()

    async with uow:
        run = await uow.runs.lock(run_id)
        assert run is not None
        run.steps[0].attempts = 3
        await uow.runs.save(run)

    stored = await uow.runs.lock(run_id)
    assert stored is not None
    assert stored.steps[0].attempts == 0
