"""Group commit on real PostgreSQL and JetStream: two ingest replicas (two intakes, each with its
own group commit) accepting the same contacts, keys and rate limit at the same time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.auth import Authenticator
from kernel.bus import BusPublisher
from kernel.errors import ResourceExhausted
from kernel.outbox import Outbox
from kernel.policy import PolicyCache, PolicyChange, update_policy
from services.ingest import handlers
from services.ingest.adapters import OUTBOX, ContactRow, EventRow, IdempotencyKeyRow, TriggerRow
from services.ingest.domain import EventQueued, SendEvent, UserInfo
from services.ingest.handlers import Intake
from services.ingest.main import registrations
from tests.conftest import TeamCredentials


@pytest.fixture
async def replicas(
    sessions: async_sessionmaker[AsyncSession], nats_client: NatsClient, team: TeamCredentials
) -> AsyncIterator[list[Intake]]:
    """Two ingest replicas' intakes over one database and bus."""
    intakes = []
    for _ in range(2):
        outbox = Outbox(OUTBOX, sessions, BusPublisher(nats_client))
        _services, intake = registrations(Authenticator(sessions), sessions, outbox)
        assert intake.groups is not None
        intakes.append(intake)
    yield intakes
    async with sessions() as session, session.begin():
        await session.execute(delete(OUTBOX).where(OUTBOX.c.project_id == team.team_id))


async def count(sessions: async_sessionmaker[AsyncSession], model: Any, team_id: str, **equal: str) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(model).where(model.team_id == team_id)
        for column, value in equal.items():
            query = query.where(getattr(model, column) == value)
        return int(await session.scalar(query) or 0)


async def test_replicas_racing_on_new_contacts_and_keys_store_each_once(
    replicas: list[Intake], sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    tag = uuid.uuid4().hex[:6]

    def command(index: int) -> SendEvent:
        person = index % 20  # 20 new contacts, each named by ten events
        return SendEvent(
            team_id=team.team_id,
            event_name="order.completed",
            user_info=UserInfo(external_id=f"{tag}-{person}", email=f"{tag}.{person}@example.com"),
            event_data={"index": index % 100},
            idempotency_key=f"{tag}-key-{index % 100}",  # each key sent twice, once per replica
        )

    sends = [handlers.send_event(command(i), replicas[i % 2]) for i in range(200)]
    answers = await asyncio.gather(*sends)

    assert all(isinstance(answer, EventQueued) for answer in answers)
    by_key: dict[str, set[uuid.UUID]] = {}
    for index, answer in enumerate(answers):
        by_key.setdefault(f"key-{index % 100}", set()).add(answer.trigger_id)
    assert all(len(triggers) == 1 for triggers in by_key.values()), "a key made two triggers"
    assert sum(answer.replayed for answer in answers) == 100
    assert await count(sessions, EventRow, team.team_id, name="order.completed") == 100
    assert await count(sessions, TriggerRow, team.team_id, event_name="order.completed") == 100
    assert await count(sessions, ContactRow, team.team_id) == 20
    assert await count(sessions, EventRow, team.team_id, name="herald.contact.created") == 20
    assert await count(sessions, IdempotencyKeyRow, team.team_id) == 100
    contacts = {answer.contact_id for answer in answers}
    assert len(contacts) == 20 and None not in contacts


async def test_replicas_in_groups_share_one_rate_limit(
    replicas: list[Intake], sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    async with sessions() as session, session.begin():
        await update_policy(session, team.team_id, PolicyChange(rate_limit_per_hour=50))
    for intake in replicas:
        assert isinstance(intake.policies, PolicyCache)
        intake.policies.forget(team.team_id)

    async def send(index: int) -> EventQueued | BaseException:
        event = SendEvent(team_id=team.team_id, event_name="page.viewed", event_data={"i": index})
        try:
            return await handlers.send_event(event, replicas[index % 2])
        except ResourceExhausted as error:
            return error

    outcomes = await asyncio.gather(*(send(i) for i in range(120)))

    accepted = [o for o in outcomes if isinstance(o, EventQueued)]
    limited = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert (len(accepted), len(limited)) == (50, 70)
    assert await count(sessions, EventRow, team.team_id, name="page.viewed") == 50
    remaining = sorted(o.rate.remaining for o in accepted if o.rate is not None)
    assert remaining == list(range(50)), "each accepted event answers its own place in the count"
