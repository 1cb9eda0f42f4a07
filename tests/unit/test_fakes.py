"""The fakes keep the promises of the SQL adapters, or the handler tests would prove nothing."""

from __future__ import annotations

import uuid

import pytest

from kernel.bus import OutgoingMessage
from services.executor.domain import Run, StepSpec, StepState
from services.ingest.domain import Contact
from tests.unit.fakes import FakeExecutorUnitOfWork, FakeIngestUnitOfWork, UniqueViolation


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
        await uow.contacts.add(contact)
        uow.publish(a_message("never"))
        assert await uow.contacts.by_email("team-1", "ada@example.com") == contact

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
        stored = await uow.contacts.add(racing)
        await uow.commit()

    assert stored.id == first.id
    assert stored.name == "Ada Lovelace"
    assert list(uow.contacts.rows) == [first.id]


async def test_contact_save_upserts_anonymous_contacts_by_email() -> None:
    uow = FakeIngestUnitOfWork()
    first = a_contact(email="ada@example.com")

    async with uow:
        await uow.contacts.add(first)
        stored = await uow.contacts.add(a_contact(email="ada@example.com", name="Ada"))
        identified = await uow.contacts.add(a_contact(external_id="user-9", email="ada@example.com"))
        await uow.commit()

    assert stored.id == first.id
    assert identified.id != first.id
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

    assert found == anonymous


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


async def test_run_add_is_false_for_an_existing_run_id() -> None:
    uow = FakeExecutorUnitOfWork()
    run_id = uuid.uuid4()

    async with uow:
        assert await uow.runs.add(a_run(run_id)) is True
        assert await uow.runs.add(a_run(run_id)) is False


async def test_a_locked_run_changes_only_when_saved_and_committed() -> None:
    uow = FakeExecutorUnitOfWork()
    run_id = uuid.uuid4()
    async with uow:
        await uow.runs.add(a_run(run_id))
        await uow.commit()

    async with uow:
        run = await uow.runs.lock(run_id)
        assert run is not None
        run.steps[0].attempts = 3
        await uow.runs.save(run)

    stored = await uow.runs.lock(run_id)
    assert stored is not None
    assert stored.steps[0].attempts == 0
