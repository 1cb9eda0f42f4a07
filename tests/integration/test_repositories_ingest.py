"""Ingest's repositories on real PostgreSQL: contacts (identity, upserts, races) and events."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from services.ingest.adapters import ContactRow, SqlContactRepository, SqlEventRepository
from services.ingest.domain import AcceptedEvent, Contact, EventSource, UserInfo
from services.ingest.handlers import resolve_contact
from tests.conftest import TeamCredentials
from tests.integration.waiting import backend_pid, until_waiting_on_lock


def contact(
    team_id: str, *, external_id: str | None = None, email: str | None = None, name: str = ""
) -> Contact:
    return Contact(
        id=uuid.uuid4(),
        team_id=team_id,
        external_id=external_id,
        email=email,
        phone=None,
        name=name or None,
    )


async def contact_rows(sessions: async_sessionmaker[AsyncSession], team_id: str) -> list[ContactRow]:
    async with sessions() as session:
        return list(await session.scalars(select(ContactRow).where(ContactRow.team_id == team_id)))


async def save(sessions: async_sessionmaker[AsyncSession], new: Contact) -> Contact:
    async with sessions() as session, session.begin():
        return await SqlContactRepository(session).add(new)


async def test_saving_a_known_external_id_updates_the_one_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first = await save(
        sessions, contact(team.team_id, external_id="user-1", email="a@example.com", name="Ann")
    )
    second = await save(
        sessions, contact(team.team_id, external_id="user-1", email="b@example.com", name="Bea")
    )

    assert second.id == first.id
    assert (second.email, second.name) == ("b@example.com", "Bea")
    rows = await contact_rows(sessions, team.team_id)
    assert [(row.id, row.email) for row in rows] == [(first.id, "b@example.com")]


async def test_two_transactions_creating_the_same_external_id_end_with_one_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """The second insert waits for the first transaction, then updates its row instead of failing."""
    winner = contact(team.team_id, external_id="racer", name="First")
    loser = contact(team.team_id, external_id="racer", name="Second")
    async with sessions() as first_session, sessions() as second_session:
        saved_first = await SqlContactRepository(first_session).add(winner)
        second_pid = await backend_pid(second_session)
        second_save = asyncio.create_task(SqlContactRepository(second_session).add(loser))
        await until_waiting_on_lock(sessions, second_pid)
        assert not second_save.done()
        await first_session.commit()
        saved_second = await second_save
        await second_session.commit()

    assert saved_first.id == winner.id
    assert saved_second.id == winner.id, "the loser should get the winner's contact back"
    rows = await contact_rows(sessions, team.team_id)
    assert [(row.id, row.name) for row in rows] == [(winner.id, "Second")]


async def test_concurrent_saves_of_one_new_contact_both_succeed(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    results = await asyncio.gather(
        *(save(sessions, contact(team.team_id, external_id="burst", name=f"n{i}")) for i in range(5)),
        *(save(sessions, contact(team.team_id, email="burst@example.com")) for _ in range(5)),
    )

    assert len({saved.id for saved in results[:5]}) == 1
    assert len({saved.id for saved in results[5:]}) == 1
    rows = await contact_rows(sessions, team.team_id)
    assert sorted((row.external_id or "", row.email or "") for row in rows) == [
        ("", "burst@example.com"),
        ("burst", ""),
    ]


async def test_email_only_contacts_are_unique_per_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    other_team = f"other-{uuid.uuid4().hex[:10]}"
    first = await save(sessions, contact(team.team_id, email="solo@example.com", name="Solo"))
    again = await save(sessions, contact(team.team_id, email="solo@example.com", name="Solo Again"))
    elsewhere = await save(sessions, contact(other_team, email="solo@example.com"))
    identified = await save(sessions, contact(team.team_id, external_id="u-9", email="solo@example.com"))

    assert again.id == first.id
    assert again.name == "Solo Again"
    assert elsewhere.id != first.id
    assert identified.id != first.id, "a contact with an external id may share an anonymous email"
    assert len(await contact_rows(sessions, team.team_id)) == 2
    assert len(await contact_rows(sessions, other_team)) == 1


async def test_by_email_expects_the_normalized_address(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        contacts = SqlContactRepository(session)
        created = await resolve_contact(team.team_id, UserInfo(email="  Ada.Lovelace@Example.COM "), contacts)
        assert created is not None
        assert created.email == "ada.lovelace@example.com"

        assert (await contacts.by_email(team.team_id, "ada.lovelace@example.com")) == created
        assert await contacts.by_email(team.team_id, "Ada.Lovelace@Example.COM") is None
        assert await contacts.by_email(f"other-{uuid.uuid4().hex[:8]}", "ada.lovelace@example.com") is None

        same = await resolve_contact(team.team_id, UserInfo(email="ADA.LOVELACE@example.com"), contacts)
        assert same is not None and same.id == created.id


async def test_email_resolution_treats_composed_and_decomposed_unicode_alike(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        contacts = SqlContactRepository(session)
        composed = await resolve_contact(team.team_id, UserInfo(email="Jos\u00e9@example.com"), contacts)
        decomposed = await resolve_contact(team.team_id, UserInfo(email="jose\u0301@example.com"), contacts)
    assert composed is not None and decomposed is not None
    assert decomposed.id == composed.id
    assert len(await contact_rows(sessions, team.team_id)) == 1


async def test_by_email_prefers_the_anonymous_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    identified = await save(sessions, contact(team.team_id, external_id="known", email="shared@example.com"))
    anonymous = await save(sessions, contact(team.team_id, email="shared@example.com"))

    async with sessions() as session:
        found = await SqlContactRepository(session).by_email(team.team_id, "shared@example.com")

    assert identified.id != anonymous.id
    assert found is not None and found.id == anonymous.id


async def test_an_email_only_contact_can_gain_an_external_id(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        anonymous = await resolve_contact(
            team.team_id, UserInfo(email="later@example.com"), SqlContactRepository(session)
        )
    async with sessions() as session, session.begin():
        identified = await resolve_contact(
            team.team_id,
            UserInfo(external_id="user-77", email="later@example.com"),
            SqlContactRepository(session),
        )

    assert anonymous is not None and identified is not None
    assert identified.id == anonymous.id
    assert identified.external_id == "user-77"


def accepted_event(team_id: str, known: Contact | None) -> AcceptedEvent:
    now = utcnow()
    return AcceptedEvent(
        id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id=team_id,
        name="order.completed",
        contact=known,
        data={"total": 42.5, "items": ["book"]},
        variables={"coupon": "WELCOME"},
        source=EventSource(type="api", ip="10.0.0.1", user_agent="tests"),
        occurred_at=now,
        accepted_at=now,
    )


async def test_added_event_has_a_queued_trigger_visible_only_to_its_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    known = await save(sessions, contact(team.team_id, external_id="buyer"))
    event = accepted_event(team.team_id, known)
    async with sessions() as session, session.begin():
        await SqlEventRepository(session).add(event)

    async with sessions() as session:
        events = SqlEventRepository(session)
        record = await events.trigger(team.team_id, event.trigger_id)
        from_other_team = await events.trigger(f"other-{uuid.uuid4().hex[:8]}", event.trigger_id)
        unknown = await events.trigger(team.team_id, uuid.uuid4())

    assert record is not None
    assert (record.id, record.event_id, record.event_name, record.status) == (
        event.trigger_id,
        event.id,
        "order.completed",
        "queued",
    )
    assert record.created_at == event.accepted_at
    assert record.scheduled_for is None
    assert from_other_team is None
    assert unknown is None


async def test_event_is_not_stored_when_its_transaction_rolls_back(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    event = accepted_event(team.team_id, None)
    async with sessions() as session:
        await SqlEventRepository(session).add(event)
        await session.rollback()
    async with sessions() as session:
        assert await SqlEventRepository(session).trigger(team.team_id, event.trigger_id) is None
