"""Ingest's repositories on real PostgreSQL: contacts (identity, upserts, races), events and their
triggers (scheduling, cancelling, claiming due ones, retention), idempotency keys, event types,
the shared rate limiter and project policies."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.bus import BusPublisher
from kernel.clock import utcnow
from kernel.errors import Conflict, InvalidArgument, ResourceExhausted
from kernel.outbox import Outbox
from kernel.policy import PolicyChange, ProjectPolicy, load_policy, update_policy
from services.ingest.adapters import (
    IDEMPOTENCY_KEYS,
    OUTBOX,
    RATE_COUNTERS,
    ContactRow,
    EventRow,
    IngestSqlUnitOfWork,
    SqlContactRepository,
    SqlEventRepository,
    SqlEventTypeRepository,
    SqlIdempotencyRepository,
    SqlRateLimiter,
    TriggerRow,
)
from services.ingest.domain import AcceptedEvent, Contact, EventSource, IdempotencyRecord, UserInfo
from services.ingest.domain import normalized_user_info as normalized
from services.ingest.handlers import resolve_contact
from tests.conftest import TeamCredentials
from tests.integration.waiting import backend_pid, until_waiting_on_lock

UnitOfWorkFactory = Callable[[], IngestSqlUnitOfWork]


@pytest.fixture
def unit_of_work(sessions: async_sessionmaker[AsyncSession], nats_client: NatsClient) -> UnitOfWorkFactory:
    outbox = Outbox(OUTBOX, sessions, BusPublisher(nats_client))
    return lambda: IngestSqlUnitOfWork(sessions, outbox)


def other_team() -> str:
    return f"other-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------


def contact(
    team_id: str,
    *,
    external_id: str | None = None,
    email: str | None = None,
    name: str = "",
    phone: str | None = None,
    custom_fields: dict[str, object] | None = None,
    tags: tuple[str, ...] = (),
    topics: tuple[str, ...] = (),
) -> Contact:
    return Contact(
        id=uuid.uuid4(),
        team_id=team_id,
        external_id=external_id,
        email=email,
        phone=phone,
        name=name or None,
        custom_fields=dict(custom_fields or {}),
        tags=tags,
        topics=topics,
    )


async def contact_rows(sessions: async_sessionmaker[AsyncSession], team_id: str) -> list[ContactRow]:
    async with sessions() as session:
        return list(await session.scalars(select(ContactRow).where(ContactRow.team_id == team_id)))


async def save(sessions: async_sessionmaker[AsyncSession], new: Contact) -> tuple[Contact, bool]:
    async with sessions() as session, session.begin():
        return await SqlContactRepository(session).add(new)


async def test_saving_a_known_external_id_updates_the_one_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first, first_created = await save(
        sessions, contact(team.team_id, external_id="user-1", email="a@example.com", name="Ann")
    )
    second, second_created = await save(
        sessions, contact(team.team_id, external_id="user-1", email="b@example.com", name="Bea")
    )

    assert (first_created, second_created) == (True, False)
    assert second.id == first.id
    assert (second.email, second.name) == ("b@example.com", "Bea")
    assert first.created_at is not None and second.updated_at is not None
    rows = await contact_rows(sessions, team.team_id)
    assert [(row.id, row.email) for row in rows] == [(first.id, "b@example.com")]


async def test_saving_a_known_identity_merges_like_the_fakes_do(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first, _ = await save(
        sessions,
        contact(
            team.team_id,
            external_id="user-1",
            email="ada@example.com",
            phone="+14155550100",
            name="Ada",
            custom_fields={"plan": "pro", "age": 36},
            tags=("vip",),
            topics=("news",),
        ),
    )

    merged, created = await save(
        sessions, contact(team.team_id, external_id="user-1", custom_fields={"plan": "team"})
    )

    assert created is False
    assert merged.id == first.id
    assert (merged.email, merged.phone, merged.name) == ("ada@example.com", "+14155550100", "Ada")
    assert merged.custom_fields == {"plan": "team", "age": 36}
    assert (merged.tags, merged.topics) == (("vip",), ("news",))


async def test_two_transactions_creating_the_same_external_id_end_with_one_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """The second insert waits for the first transaction, then updates its row instead of failing."""
    winner = contact(team.team_id, external_id="racer", name="First")
    loser = contact(team.team_id, external_id="racer", name="Second")
    async with sessions() as first_session, sessions() as second_session:
        saved_first, first_created = await SqlContactRepository(first_session).add(winner)
        second_pid = await backend_pid(second_session)
        second_save = asyncio.create_task(SqlContactRepository(second_session).add(loser))
        await until_waiting_on_lock(sessions, second_pid)
        assert not second_save.done()
        await first_session.commit()
        saved_second, second_created = await second_save
        await second_session.commit()

    assert (saved_first.id, first_created) == (winner.id, True)
    assert saved_second.id == winner.id, "the loser should get the winner's contact back"
    assert second_created is False, "the loser did not create the contact"
    rows = await contact_rows(sessions, team.team_id)
    assert [(row.id, row.name) for row in rows] == [(winner.id, "Second")]


async def test_concurrent_saves_of_one_new_contact_all_succeed_and_one_creates_it(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    results = await asyncio.gather(
        *(save(sessions, contact(team.team_id, external_id="burst", name=f"n{i}")) for i in range(5)),
        *(save(sessions, contact(team.team_id, email="burst@example.com")) for _ in range(5)),
    )

    by_external_id, by_email = results[:5], results[5:]
    assert len({saved.id for saved, _ in by_external_id}) == 1
    assert len({saved.id for saved, _ in by_email}) == 1
    assert [created for _, created in by_external_id].count(True) == 1
    assert [created for _, created in by_email].count(True) == 1
    rows = await contact_rows(sessions, team.team_id)
    assert sorted((row.external_id or "", row.email or "") for row in rows) == [
        ("", "burst@example.com"),
        ("burst", ""),
    ]


async def test_email_only_contacts_are_unique_per_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    elsewhere_team = other_team()
    first, _ = await save(sessions, contact(team.team_id, email="solo@example.com", name="Solo"))
    again, _ = await save(sessions, contact(team.team_id, email="solo@example.com", name="Solo Again"))
    elsewhere, _ = await save(sessions, contact(elsewhere_team, email="solo@example.com"))
    identified, _ = await save(sessions, contact(team.team_id, external_id="u-9", email="solo@example.com"))

    assert again.id == first.id
    assert again.name == "Solo Again"
    assert elsewhere.id != first.id
    assert identified.id != first.id, "a contact with an external id may share an anonymous email"
    assert len(await contact_rows(sessions, team.team_id)) == 2
    assert len(await contact_rows(sessions, elsewhere_team)) == 1


async def test_an_update_that_breaks_a_unique_index_is_refused(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """A clash with another contact's identity is a Conflict (409), and the session stays usable."""
    await save(sessions, contact(team.team_id, external_id="user-1"))
    anonymous, _ = await save(sessions, contact(team.team_id, email="a@example.com"))
    await save(sessions, contact(team.team_id, email="b@example.com"))

    for clash in (
        Contact(**{**anonymous.__dict__, "external_id": "user-1"}),
        Contact(**{**anonymous.__dict__, "email": "b@example.com"}),
    ):
        async with sessions() as session, session.begin():
            with pytest.raises(Conflict) as refused:
                await SqlContactRepository(session).update(clash)
            assert refused.value.reason == "CONTACT_IDENTITY_CLASH"
            assert await SqlContactRepository(session).by_id(team.team_id, anonymous.id) == anonymous


async def test_contacts_are_found_by_id_and_deleted_by_external_id_within_their_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    saved, _ = await save(sessions, contact(team.team_id, external_id="user-1", tags=("a", "b")))

    async with sessions() as session, session.begin():
        contacts = SqlContactRepository(session)
        assert await contacts.by_id(team.team_id, saved.id) == saved
        assert await contacts.by_id(other_team(), saved.id) is None
        assert await contacts.erase(dataclasses.replace(saved, team_id=other_team())) == {
            "ingest.contacts": 0,
            "ingest.events": 0,
            "ingest.triggers": 0,
            "ingest.idempotency_keys": 0,
            "ingest.outbox": 0,
        }
        assert (await contacts.erase(saved))["ingest.contacts"] == 1
        assert (await contacts.erase(saved))["ingest.contacts"] == 0

    assert await contact_rows(sessions, team.team_id) == []


async def resolve(unit_of_work: UnitOfWorkFactory, team_id: str, info: UserInfo) -> Contact | None:
    async with unit_of_work() as uow:
        found = await resolve_contact(team_id, normalized(info), utcnow(), uow)
        await uow.commit()
    return found


async def test_by_email_expects_the_normalized_address(
    unit_of_work: UnitOfWorkFactory, team: TeamCredentials
) -> None:
    created = await resolve(unit_of_work, team.team_id, UserInfo(email="  Ada.Lovelace@Example.COM "))
    assert created is not None
    assert created.email == "ada.lovelace@example.com"

    async with unit_of_work() as uow:
        contacts = uow.contacts
        assert (await contacts.by_email(team.team_id, "ada.lovelace@example.com")) == created
        assert await contacts.by_email(team.team_id, "Ada.Lovelace@Example.COM") is None
        assert await contacts.by_email(other_team(), "ada.lovelace@example.com") is None

    same = await resolve(unit_of_work, team.team_id, UserInfo(email="ADA.LOVELACE@example.com"))
    assert same is not None and same.id == created.id


async def test_email_resolution_treats_composed_and_decomposed_unicode_alike(
    unit_of_work: UnitOfWorkFactory, sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    composed = await resolve(unit_of_work, team.team_id, UserInfo(email="Jos\u00e9@example.com"))
    decomposed = await resolve(unit_of_work, team.team_id, UserInfo(email="jose\u0301@example.com"))

    assert composed is not None and decomposed is not None
    assert decomposed.id == composed.id
    assert len(await contact_rows(sessions, team.team_id)) == 1


async def test_by_email_prefers_the_anonymous_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    identified, _ = await save(
        sessions, contact(team.team_id, external_id="known", email="shared@example.com")
    )
    anonymous, _ = await save(sessions, contact(team.team_id, email="shared@example.com"))

    async with sessions() as session:
        found = await SqlContactRepository(session).by_email(team.team_id, "shared@example.com")

    assert identified.id != anonymous.id
    assert found is not None and found.id == anonymous.id


async def test_an_email_only_contact_can_gain_an_external_id(
    unit_of_work: UnitOfWorkFactory, team: TeamCredentials
) -> None:
    anonymous = await resolve(unit_of_work, team.team_id, UserInfo(email="later@example.com"))
    identified = await resolve(
        unit_of_work, team.team_id, UserInfo(external_id="user-77", email="later@example.com")
    )

    assert anonymous is not None and identified is not None
    assert identified.id == anonymous.id
    assert identified.external_id == "user-77"


async def test_a_new_contact_stores_its_herald_contact_created_event_and_trigger(
    unit_of_work: UnitOfWorkFactory, sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    created = await resolve(unit_of_work, team.team_id, UserInfo(external_id="user-1"))
    again = await resolve(unit_of_work, team.team_id, UserInfo(external_id="user-1", name="Ada"))

    assert created is not None and again is not None and again.id == created.id
    async with sessions() as session:
        events = (await session.execute(select(EventRow).where(EventRow.team_id == team.team_id))).scalars()
        [event] = list(events)
        [trigger] = list(await session.scalars(select(TriggerRow).where(TriggerRow.team_id == team.team_id)))
    assert (event.name, event.contact_id, event.data) == (
        "herald.contact.created",
        created.id,
        {"contact_id": str(created.id)},
    )
    assert event.source["type"] == "herald"
    assert (trigger.event_id, trigger.status, trigger.event_name) == (
        event.id,
        "queued",
        "herald.contact.created",
    )


# --------------------------------------------------------------------------------------------
# Events and triggers
# --------------------------------------------------------------------------------------------


def accepted_event(
    team_id: str,
    known: Contact | None = None,
    *,
    at: datetime | None = None,
    scheduled_for: datetime | None = None,
) -> AcceptedEvent:
    now = at or utcnow()
    return AcceptedEvent(
        id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id=team_id,
        name="order.completed",
        contact=known,
        data={"total": 42.5, "items": ["book"]},
        variables={"coupon": "WELCOME"},
        source=EventSource(type="api", ip="10.0.0.1", user_agent="tests"),
        occurred_at=now - timedelta(minutes=1),
        accepted_at=now,
        scheduled_for=scheduled_for,
    )


async def add_events(sessions: async_sessionmaker[AsyncSession], *events: AcceptedEvent) -> None:
    async with sessions() as session, session.begin():
        repository = SqlEventRepository(session)
        for event in events:
            await repository.add(event)


async def test_added_event_has_a_queued_trigger_visible_only_to_its_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    known, _ = await save(sessions, contact(team.team_id, external_id="buyer"))
    event = accepted_event(team.team_id, known)
    await add_events(sessions, event)

    async with sessions() as session:
        events = SqlEventRepository(session)
        record = await events.trigger(team.team_id, event.trigger_id)
        from_other_team = await events.trigger(other_team(), event.trigger_id)
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
    assert (record.contact_id, record.occurred_at) == (known.id, event.occurred_at)
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


async def test_a_scheduled_event_has_a_scheduled_trigger_that_only_cancel_moves_to_cancelled(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    fires_at = utcnow() + timedelta(days=1)
    scheduled = accepted_event(team.team_id, scheduled_for=fires_at)
    queued = accepted_event(team.team_id)
    await add_events(sessions, scheduled, queued)

    async with sessions() as session, session.begin():
        events = SqlEventRepository(session)
        before = await events.trigger(team.team_id, scheduled.trigger_id)
        assert await events.cancel(other_team(), scheduled.trigger_id, utcnow()) is None
        assert await events.cancel(team.team_id, queued.trigger_id, utcnow()) is None
        assert await events.cancel(team.team_id, uuid.uuid4(), utcnow()) is None
        cancelled = await events.cancel(team.team_id, scheduled.trigger_id, utcnow())
        twice = await events.cancel(team.team_id, scheduled.trigger_id, utcnow())

    assert before is not None and (before.status, before.scheduled_for) == ("scheduled", fires_at)
    assert cancelled is not None
    assert (cancelled.id, cancelled.status, cancelled.scheduled_for) == (
        scheduled.trigger_id,
        "cancelled",
        fires_at,
    )
    assert twice is None
    async with sessions() as session:
        events = SqlEventRepository(session)
        stored = await events.trigger(team.team_id, scheduled.trigger_id)
        still_queued = await events.trigger(team.team_id, queued.trigger_id)
    assert stored is not None and stored.status == "cancelled"
    assert still_queued is not None and still_queued.status == "queued"


async def claim(
    sessions: async_sessionmaker[AsyncSession], now: datetime, limit: int = 200
) -> list[AcceptedEvent]:
    async with sessions() as session, session.begin():
        return await SqlEventRepository(session).claim_due(now, limit)


# claim_due claims every team's due triggers: each test schedules its events in its own year long
# past, and claims with that year's clock, so no test claims another's (or a real) event.


async def test_claim_due_returns_due_events_once_and_marks_them_queued(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2001, 3, 1, tzinfo=UTC)
    first = accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(hours=1))
    second = accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(hours=2))
    later = accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(hours=3))
    await add_events(sessions, later, second, first)

    claimed = await claim(sessions, base + timedelta(hours=2))
    again = await claim(sessions, base + timedelta(hours=2))

    assert sorted(e.id for e in claimed) == sorted([first.id, second.id])
    assert again == []
    by_id = {event.id: event for event in claimed}
    got = by_id[first.id]
    assert (got.trigger_id, got.team_id, got.name) == (first.trigger_id, team.team_id, "order.completed")
    assert (got.data, got.variables, got.source) == (first.data, first.variables, first.source)
    assert (got.occurred_at, got.accepted_at, got.scheduled_for) == (
        first.occurred_at,
        first.accepted_at,
        first.scheduled_for,
    )
    assert got.contact is None
    async with sessions() as session:
        events = SqlEventRepository(session)
        statuses = [(await events.trigger(team.team_id, e.trigger_id)) for e in (first, second, later)]
    assert [record.status if record else None for record in statuses] == ["queued", "queued", "scheduled"]
    assert [e.id for e in await claim(sessions, base + timedelta(hours=3))] == [later.id]


async def test_claim_due_takes_the_earliest_first_within_its_limit(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2002, 3, 1, tzinfo=UTC)
    events = [
        accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(minutes=m)) for m in (5, 1, 3)
    ]
    await add_events(sessions, *events)

    first = await claim(sessions, base + timedelta(hours=1), limit=2)
    rest = await claim(sessions, base + timedelta(hours=1), limit=2)

    assert sorted(e.scheduled_for or base for e in first) == [
        base + timedelta(minutes=1),
        base + timedelta(minutes=3),
    ]
    assert [e.scheduled_for for e in rest] == [base + timedelta(minutes=5)]


async def test_claim_due_returns_a_due_event_with_its_contact_as_it_is_now(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2003, 3, 1, tzinfo=UTC)
    known, _ = await save(sessions, contact(team.team_id, external_id="buyer", name="Ada"))
    event = accepted_event(team.team_id, known, at=base, scheduled_for=base + timedelta(hours=1))
    await add_events(sessions, event)
    await save(sessions, contact(team.team_id, external_id="buyer", name="Ada Lovelace", tags=()))

    try:
        [claimed] = await claim(sessions, base + timedelta(hours=1))
    finally:
        await cancel_leftovers(sessions, team.team_id)

    assert claimed.contact is not None
    assert (claimed.contact.id, claimed.contact.name) == (known.id, "Ada Lovelace")


async def cancel_leftovers(sessions: async_sessionmaker[AsyncSession], team_id: str) -> None:
    """Cancel whatever a failing test left scheduled, so no later claim meets it."""
    async with sessions() as session, session.begin():
        triggers = SqlEventRepository(session)
        ids = await session.scalars(
            select(TriggerRow.id).where(TriggerRow.team_id == team_id, TriggerRow.status == "scheduled")
        )
        for trigger_id in list(ids):
            await triggers.cancel(team_id, trigger_id, utcnow())


async def test_a_claimer_skips_the_due_events_another_transaction_holds(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2004, 3, 1, tzinfo=UTC)
    events = [
        accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(seconds=s)) for s in range(6)
    ]
    await add_events(sessions, *events)
    now = base + timedelta(hours=1)

    async with sessions() as first_session, sessions() as second_session:
        held = await SqlEventRepository(first_session).claim_due(now, 3)
        # Does not wait for the first transaction: it skips the rows that one locked.
        others = await asyncio.wait_for(SqlEventRepository(second_session).claim_due(now, 10), timeout=5)
        await second_session.commit()
        await first_session.commit()

    assert len(held) == 3 and len(others) == 3
    assert {e.id for e in held}.isdisjoint({e.id for e in others})
    assert {e.id for e in held} | {e.id for e in others} == {e.id for e in events}
    assert await claim(sessions, now) == []


async def test_concurrent_claimers_never_return_the_same_event(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2005, 3, 1, tzinfo=UTC)
    events = [
        accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(milliseconds=i))
        for i in range(40)
    ]
    await add_events(sessions, *events)
    now = base + timedelta(hours=1)

    async def worker() -> list[uuid.UUID]:
        got: list[uuid.UUID] = []
        while batch := await claim(sessions, now, limit=3):
            got.extend(event.id for event in batch)
        return got

    results = await asyncio.gather(*(worker() for _ in range(4)))

    claimed = [event_id for result in results for event_id in result]
    assert len(claimed) == len(set(claimed)), "an event was claimed twice"
    assert set(claimed) == {e.id for e in events}


async def test_cancel_waits_for_a_claim_in_progress_and_then_finds_nothing_to_cancel(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2006, 3, 1, tzinfo=UTC)
    event = accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(minutes=1))
    await add_events(sessions, event)

    async with sessions() as timer, sessions() as canceller:
        [fired] = await SqlEventRepository(timer).claim_due(base + timedelta(hours=1), 10)
        canceller_pid = await backend_pid(canceller)
        cancelling = asyncio.create_task(
            SqlEventRepository(canceller).cancel(team.team_id, event.trigger_id, utcnow())
        )
        await until_waiting_on_lock(sessions, canceller_pid)
        await timer.commit()
        cancelled = await cancelling
        await canceller.commit()

    assert fired.id == event.id
    assert cancelled is None, "an event that fired cannot be cancelled"


async def test_purge_deletes_a_teams_events_accepted_before_the_cutoff_with_their_triggers(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now = utcnow()
    old = [accepted_event(team.team_id, at=now - timedelta(days=10)) for _ in range(3)]
    recent = accepted_event(team.team_id, at=now - timedelta(days=1))
    elsewhere_team = other_team()
    elsewhere = accepted_event(elsewhere_team, at=now - timedelta(days=10))
    await add_events(sessions, *old, recent, elsewhere)

    async with sessions() as session, session.begin():
        events = SqlEventRepository(session)
        first = await events.purge(team.team_id, now - timedelta(days=5), 2)
        second = await events.purge(team.team_id, now - timedelta(days=5), 2)
        third = await events.purge(team.team_id, now - timedelta(days=5), 2)

    assert [purged["ingest.events"] for purged in (first, second, third)] == [2, 1, 0]
    assert [purged["ingest.triggers"] for purged in (first, second, third)] == [2, 1, 0]
    async with sessions() as session:
        events = SqlEventRepository(session)
        assert [await events.trigger(team.team_id, e.trigger_id) for e in old] == [None, None, None]
        assert await events.trigger(team.team_id, recent.trigger_id) is not None
        assert await events.trigger(elsewhere_team, elsewhere.trigger_id) is not None
        orphans = await session.scalar(
            select(func.count()).select_from(TriggerRow).where(TriggerRow.id.in_([e.trigger_id for e in old]))
        )
    assert orphans == 0


async def test_purge_keeps_a_scheduled_event_until_it_fires(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    base = datetime(2007, 3, 1, tzinfo=UTC)
    event = accepted_event(team.team_id, at=base, scheduled_for=base + timedelta(days=120))
    await add_events(sessions, event)

    async with sessions() as session, session.begin():
        purged = await SqlEventRepository(session).purge(team.team_id, base + timedelta(days=90), 100)
    try:
        fired = await claim(sessions, base + timedelta(days=120))
    finally:
        await cancel_leftovers(sessions, team.team_id)

    assert [e.id for e in fired] == [event.id]
    assert purged == {"ingest.events": 0, "ingest.triggers": 0}


# --------------------------------------------------------------------------------------------
# Idempotency keys
# --------------------------------------------------------------------------------------------


async def claim_key(
    sessions: async_sessionmaker[AsyncSession],
    team_id: str,
    key: str,
    fingerprint: str,
    trigger_id: uuid.UUID,
    expires_at: datetime | None = None,
) -> IdempotencyRecord | None:
    async with sessions() as session, session.begin():
        return await SqlIdempotencyRepository(session).claim(
            team_id, key, fingerprint, trigger_id, expires_at or utcnow() + timedelta(hours=24)
        )


async def key_rows(
    sessions: async_sessionmaker[AsyncSession], team_id: str
) -> list[tuple[str, str, uuid.UUID]]:
    async with sessions() as session:
        rows = await session.execute(
            select(IDEMPOTENCY_KEYS.c.key, IDEMPOTENCY_KEYS.c.fingerprint, IDEMPOTENCY_KEYS.c.trigger_id)
            .where(IDEMPOTENCY_KEYS.c.team_id == team_id)
            .order_by(IDEMPOTENCY_KEYS.c.key)
        )
        return [(row.key, row.fingerprint, row.trigger_id) for row in rows]


async def test_a_new_key_is_claimed_and_a_repeated_one_answers_the_first_claim(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()

    new = await claim_key(sessions, team.team_id, "order-42", "fp-1", first)
    repeated = await claim_key(sessions, team.team_id, "order-42", "fp-2", second)
    elsewhere = await claim_key(sessions, other_team(), "order-42", "fp-2", second)

    assert new is None
    assert repeated == IdempotencyRecord("fp-1", first)
    assert elsewhere is None, "keys are each team's own"
    assert await key_rows(sessions, team.team_id) == [("order-42", "fp-1", first)]


async def test_an_expired_key_is_taken_over_by_the_next_claim(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    earlier, later = uuid.uuid4(), uuid.uuid4()
    await claim_key(sessions, team.team_id, "k", "fp-old", earlier, utcnow() - timedelta(seconds=1))

    taken = await claim_key(sessions, team.team_id, "k", "fp-new", later)
    repeated = await claim_key(sessions, team.team_id, "k", "fp-other", uuid.uuid4())

    assert taken is None
    assert repeated == IdempotencyRecord("fp-new", later)
    assert await key_rows(sessions, team.team_id) == [("k", "fp-new", later)]


async def test_two_transactions_claiming_one_key_end_with_exactly_one_claim(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """The second claim waits for the first transaction, then answers its claim."""
    first_trigger, second_trigger = uuid.uuid4(), uuid.uuid4()
    expires = utcnow() + timedelta(hours=1)
    async with sessions() as first_session, sessions() as second_session:
        first = await SqlIdempotencyRepository(first_session).claim(
            team.team_id, "race", "fp-1", first_trigger, expires
        )
        second_pid = await backend_pid(second_session)
        second_claim = asyncio.create_task(
            SqlIdempotencyRepository(second_session).claim(
                team.team_id, "race", "fp-2", second_trigger, expires
            )
        )
        await until_waiting_on_lock(sessions, second_pid)
        assert not second_claim.done()
        await first_session.commit()
        second = await second_claim
        await second_session.commit()

    assert first is None
    assert second == IdempotencyRecord("fp-1", first_trigger)
    assert await key_rows(sessions, team.team_id) == [("race", "fp-1", first_trigger)]


async def test_a_claim_rolled_back_leaves_the_key_to_the_transaction_waiting_for_it(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first_trigger, second_trigger = uuid.uuid4(), uuid.uuid4()
    expires = utcnow() + timedelta(hours=1)
    async with sessions() as first_session, sessions() as second_session:
        await SqlIdempotencyRepository(first_session).claim(
            team.team_id, "race", "fp-1", first_trigger, expires
        )
        second_pid = await backend_pid(second_session)
        second_claim = asyncio.create_task(
            SqlIdempotencyRepository(second_session).claim(
                team.team_id, "race", "fp-2", second_trigger, expires
            )
        )
        await until_waiting_on_lock(sessions, second_pid)
        await first_session.rollback()
        second = await second_claim
        await second_session.commit()

    assert second is None
    assert await key_rows(sessions, team.team_id) == [("race", "fp-2", second_trigger)]


async def test_many_concurrent_claims_of_one_key_leave_one_claim(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    triggers = [uuid.uuid4() for _ in range(8)]

    answers = await asyncio.gather(
        *(claim_key(sessions, team.team_id, "burst", f"fp-{i}", t) for i, t in enumerate(triggers))
    )

    winners = [t for t, answer in zip(triggers, answers, strict=True) if answer is None]
    assert len(winners) == 1
    assert {answer for answer in answers if answer is not None} == {
        IdempotencyRecord(f"fp-{triggers.index(winners[0])}", winners[0])
    }


async def test_purge_expired_deletes_only_expired_keys(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now = utcnow()
    kept = uuid.uuid4()
    for key in ("a", "b"):
        await claim_key(sessions, team.team_id, key, "fp", uuid.uuid4(), now - timedelta(days=400 + len(key)))
    await claim_key(sessions, team.team_id, "c", "fp", kept, now + timedelta(hours=1))

    async with sessions() as session, session.begin():
        removed = await SqlIdempotencyRepository(session).purge_expired(
            team.team_id, now - timedelta(days=399), 100
        )

    assert removed == 2
    assert await key_rows(sessions, team.team_id) == [("c", "fp", kept)]


# --------------------------------------------------------------------------------------------
# The rate limiter
# --------------------------------------------------------------------------------------------

HOUR_END = datetime(2030, 1, 1, 10, 59, 30, tzinfo=UTC)


async def counted(sessions: async_sessionmaker[AsyncSession], team_id: str) -> list[tuple[datetime, int]]:
    async with sessions() as session:
        rows = await session.execute(
            select(RATE_COUNTERS.c.window_start, RATE_COUNTERS.c["count"])
            .where(RATE_COUNTERS.c.team_id == team_id)
            .order_by(RATE_COUNTERS.c.window_start)
        )
        return [(row[0], row[1]) for row in rows]


async def test_every_replica_counts_against_one_hourly_limit(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    replicas = [SqlRateLimiter(sessions), SqlRateLimiter(sessions)]

    states = [await replicas[i % 2].consume(team.team_id, 3, 1, HOUR_END) for i in range(3)]
    with pytest.raises(ResourceExhausted) as raised:
        await replicas[0].consume(team.team_id, 3, 1, HOUR_END)

    assert [(s.limit, s.remaining, s.reset_seconds) for s in states] == [(3, 2, 30), (3, 1, 30), (3, 0, 30)]
    error = raised.value
    assert error.reason == "RATE_LIMITED"
    assert (
        error.message
        == "Rate limit exceeded: this project may send 3 events per hour; try again in 30 seconds"
    )
    assert error.metadata == {"limit": "3", "retry_after": "30"}
    assert error.headers == {
        "retry-after": "30",
        "ratelimit-limit": "3",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "30",
        "ratelimit-policy": "3;w=3600",
    }
    assert await counted(sessions, team.team_id) == [(datetime(2030, 1, 1, 10, tzinfo=UTC), 3)]


async def test_a_refused_count_is_not_counted_and_the_next_window_starts_afresh(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    limiter = SqlRateLimiter(sessions)
    await limiter.consume(team.team_id, 5, 4, HOUR_END)

    with pytest.raises(ResourceExhausted):
        await limiter.consume(team.team_id, 5, 2, HOUR_END)
    with pytest.raises(ResourceExhausted):
        await limiter.consume(other_team(), 5, 6, HOUR_END)
    last = await limiter.consume(team.team_id, 5, 1, HOUR_END)
    next_hour = await limiter.consume(team.team_id, 5, 2, HOUR_END + timedelta(minutes=1))

    assert last.remaining == 0
    assert (next_hour.remaining, next_hour.reset_seconds) == (3, 3570)
    assert await counted(sessions, team.team_id) == [
        (datetime(2030, 1, 1, 10, tzinfo=UTC), 5),
        (datetime(2030, 1, 1, 11, tzinfo=UTC), 2),
    ]


async def test_concurrent_events_never_go_past_the_limit(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    limiter = SqlRateLimiter(sessions)

    outcomes = await asyncio.gather(
        *(limiter.consume(team.team_id, 4, 1, HOUR_END) for _ in range(10)), return_exceptions=True
    )

    assert sum(1 for o in outcomes if isinstance(o, ResourceExhausted)) == 6
    assert sorted(o.remaining for o in outcomes if not isinstance(o, BaseException)) == [0, 1, 2, 3]
    assert await counted(sessions, team.team_id) == [(datetime(2030, 1, 1, 10, tzinfo=UTC), 4)]


# --------------------------------------------------------------------------------------------
# Event types
# --------------------------------------------------------------------------------------------


async def test_event_types_are_catalogued_registered_listed_and_deleted_per_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    elsewhere_team = other_team()
    async with sessions() as session, session.begin():
        types = SqlEventTypeRepository(session)
        await types.catalogue(team.team_id, "order.completed")
        await types.catalogue(team.team_id, "order.completed")
        assert await types.exists(team.team_id, "order.completed") is True
        assert await types.exists(elsewhere_team, "order.completed") is False
        [catalogued] = await types.list(team.team_id)
        registered = await types.register(team.team_id, "order.completed", "An order was paid")
        await types.catalogue(team.team_id, "order.completed")
        await types.register(team.team_id, "cart.abandoned", "")
        await types.register(elsewhere_team, "zzz.other", "")
        listed = await types.list(team.team_id)

    assert (catalogued.name, catalogued.origin, catalogued.description) == (
        "order.completed",
        "catalogued",
        "",
    )
    assert (registered.origin, registered.description) == ("registered", "An order was paid")
    assert registered.created_at == catalogued.created_at
    assert [(t.name, t.origin, t.description) for t in listed] == [
        ("cart.abandoned", "registered", ""),
        ("order.completed", "registered", "An order was paid"),
    ]
    async with sessions() as session, session.begin():
        types = SqlEventTypeRepository(session)
        assert await types.delete(team.team_id, "cart.abandoned") is True
        assert await types.delete(team.team_id, "cart.abandoned") is False
        assert await types.delete(team.team_id, "zzz.other") is False
        assert [t.name for t in await types.list(team.team_id)] == ["order.completed"]
        assert [t.name for t in await types.list(elsewhere_team)] == ["zzz.other"]


# --------------------------------------------------------------------------------------------
# Project policy (kernel.policy)
# --------------------------------------------------------------------------------------------


async def test_a_project_without_a_stored_policy_has_the_defaults(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session:
        assert await load_policy(session, team.team_id) == ProjectPolicy()


async def test_update_policy_stores_each_change_on_top_of_the_last(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        first = await update_policy(
            session, team.team_id, PolicyChange(unknown_events="reject", idempotency_window="P1DT2H")
        )
    async with sessions() as session, session.begin():
        second = await update_policy(
            session, team.team_id, PolicyChange(plan="starter", rate_limit_per_hour=50, retention_days=7)
        )
    async with sessions() as session:
        loaded = await load_policy(session, team.team_id)
        elsewhere = await load_policy(session, other_team())

    assert first == ProjectPolicy(unknown_events="reject", idempotency_window="P1DT2H")
    assert (
        loaded
        == second
        == ProjectPolicy(
            unknown_events="reject",
            idempotency_window="P1DT2H",
            plan="starter",
            rate_limit_per_hour=50,
            retention_days=7,
        )
    )
    assert loaded.effective_rate_limit == 50
    assert loaded.idempotency_period == timedelta(days=1, hours=2)  # read back as written
    assert elsewhere == ProjectPolicy()


async def test_an_invalid_policy_change_stores_nothing(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        await update_policy(session, team.team_id, PolicyChange(retention_days=30))

    async with sessions() as session, session.begin():
        with pytest.raises(InvalidArgument) as raised:
            await update_policy(
                session, team.team_id, PolicyChange(retention_days=7, idempotency_window="P1Y")
            )

    assert raised.value.reason == "INVALID_DURATION"
    async with sessions() as session:
        assert await load_policy(session, team.team_id) == ProjectPolicy(retention_days=30)


async def test_concurrent_changes_of_different_fields_both_hold(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """The second PATCH waits for the first (advisory lock), then applies on top of it."""
    async with sessions() as first_session, sessions() as second_session:
        await update_policy(first_session, team.team_id, PolicyChange(unknown_events="reject"))
        second_pid = await backend_pid(second_session)
        second_update = asyncio.create_task(
            update_policy(second_session, team.team_id, PolicyChange(event_payload_limit_bytes=1000))
        )
        await until_waiting_on_lock(sessions, second_pid)
        await first_session.commit()
        second = await second_update
        await second_session.commit()

    assert second == ProjectPolicy(unknown_events="reject", event_payload_limit_bytes=1000)
    async with sessions() as session:
        assert await load_policy(session, team.team_id) == second
