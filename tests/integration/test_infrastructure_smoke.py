from __future__ import annotations

from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import TeamCredentials


async def test_database_has_every_schema(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        names = set(
            (await session.scalars(text("SELECT schema_name FROM information_schema.schemata"))).all()
        )
    assert {"tenancy", "ingest", "matcher", "executor", "tracker"} <= names


async def test_jetstream_has_every_stream(nats_client: NatsClient) -> None:
    names = {info.config.name for info in await nats_client.jetstream().streams_info()}
    assert {"EVENTS", "RUNS", "STEPS", "TRACKING", "DLQ"} <= names


async def test_team_fixture_issues_a_key(team: TeamCredentials) -> None:
    assert team.api_key.startswith("hk_")
    assert team.headers["X-Team-ID"] == team.team_id
