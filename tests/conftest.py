"""Test session fixtures: real PostgreSQL and NATS JetStream for integration and end-to-end tests.

By default the session starts its own embedded servers (in a temporary directory, on free ports);
with HERALD_DATABASE_URL / HERALD_NATS_URL set it uses those servers instead. Unit tests use
neither. A server that cannot start fails the tests that need it, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kernel import bus
from kernel.database import create_engine, session_factory
from kernel.migrations import upgrade_all
from kernel.tenancy import ensure_team, issue_key
from stack.embedded import EmbeddedNats, EmbeddedPostgres


@dataclass(frozen=True)
class Infrastructure:
    database_url: str
    nats_url: str


@dataclass(frozen=True)
class TeamCredentials:
    team_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "X-Team-ID": self.team_id}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key), ("x-team-id", self.team_id))


@pytest.fixture(scope="session")
def infrastructure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    base = tmp_path_factory.mktemp("infrastructure")
    postgres = nats = None
    database_url = os.environ.get("HERALD_DATABASE_URL", "")
    nats_url = os.environ.get("HERALD_NATS_URL", "")
    try:
        if not database_url:
            postgres = EmbeddedPostgres(base / "postgres", durable=False)
            database_url = postgres.start()
        if not nats_url:
            nats = EmbeddedNats(base / "nats")
            nats_url = nats.start()
        upgrade_all(database_url)
        yield Infrastructure(database_url, nats_url)
    finally:
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()


@pytest.fixture(scope="session")
async def engine(infrastructure: Infrastructure) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(infrastructure.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture(scope="session")
async def nats_client(infrastructure: Infrastructure) -> AsyncIterator[NatsClient]:
    client = await bus.connect(infrastructure.nats_url, name="herald-tests")
    await bus.ensure_streams(client.jetstream())
    yield client
    await client.close()


@pytest.fixture
async def team(sessions: async_sessionmaker[AsyncSession]) -> TeamCredentials:
    """A new team with one API key, so that no two tests share data."""
    team_id = f"team-{uuid.uuid4().hex[:12]}"
    async with sessions() as session, session.begin():
        await ensure_team(session, team_id)
        issued = await issue_key(session, team_id, label="tests")
    return TeamCredentials(team_id, issued.secret)


@pytest.fixture(autouse=True)
def structlog_left_as_found() -> Iterator[None]:
    """A test that runs the CLI in-process configures logging onto its captured stderr, which
    pytest closes after the test: put back the configuration every other test logs with."""
    found = structlog.get_config()
    yield
    structlog.configure(**found)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)
