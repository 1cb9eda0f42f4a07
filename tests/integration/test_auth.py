"""Credentials against the real `tenancy` schema: who is calling, and keys that stop working."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.auth import Authenticator
from kernel.errors import InvalidArgument, NotFound, Unauthenticated
from kernel.tenancy import Team, ensure_team, issue_key, list_keys, revoke_key, team_for_secret
from tests.conftest import TeamCredentials
from tests.integration.waiting import eventually


@pytest.fixture
def authenticator(sessions: async_sessionmaker[AsyncSession]) -> Authenticator:
    return Authenticator(sessions, cache_seconds=0)


async def new_team(sessions: async_sessionmaker[AsyncSession]) -> TeamCredentials:
    team_id = f"team-{uuid.uuid4().hex[:12]}"
    async with sessions() as session, session.begin():
        await ensure_team(session, team_id)
        issued = await issue_key(session, team_id, label="other")
    return TeamCredentials(team_id, issued.secret)


async def refusal(authenticator: Authenticator, metadata: tuple[tuple[str, str], ...]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as raised:
        await authenticator.authenticate(metadata)
    return raised.value


async def test_api_key_with_its_team_id_is_that_team(
    authenticator: Authenticator, team: TeamCredentials
) -> None:
    assert await authenticator.authenticate(team.metadata) == Team(team.team_id, team.team_id)


async def test_metadata_keys_are_case_insensitive_and_bytes_are_accepted(
    authenticator: Authenticator, team: TeamCredentials
) -> None:
    metadata = (("X-API-Key", team.api_key.encode()), ("X-Team-ID", team.team_id))
    team_found = await authenticator.authenticate(metadata)
    assert team_found.id == team.team_id


async def test_bearer_key_alone_is_its_team(authenticator: Authenticator, team: TeamCredentials) -> None:
    found = await authenticator.authenticate((("authorization", f"Bearer {team.api_key}"),))
    assert found.id == team.team_id


async def test_bearer_key_with_its_own_team_id_is_accepted(
    authenticator: Authenticator, team: TeamCredentials
) -> None:
    found = await authenticator.authenticate(
        (("authorization", f"bearer {team.api_key}"), ("x-team-id", team.team_id))
    )
    assert found.id == team.team_id


@pytest.mark.parametrize(
    "metadata",
    [(), (("x-team-id", "some-team"),), (("authorization", "Bearer "),), (("authorization", "Basic abc"),)],
    ids=["nothing", "team-only", "empty-bearer", "basic-auth"],
)
async def test_missing_key_is_unauthorized(
    authenticator: Authenticator, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = await refusal(authenticator, metadata)
    assert error.message == "Unauthorized"
    assert error.reason == "MISSING_API_KEY"


async def test_unknown_key_is_unauthorized(authenticator: Authenticator, team: TeamCredentials) -> None:
    error = await refusal(
        authenticator, (("x-api-key", "hk_not-a-key-anyone-issued"), ("x-team-id", team.team_id))
    )
    assert error.message == "Unauthorized"
    assert error.reason == "INVALID_API_KEY"

    bearer_error = await refusal(authenticator, (("authorization", "Bearer hk_unknown"),))
    assert bearer_error.message == "Unauthorized"


async def test_api_key_without_team_id_is_invalid_team_context(
    authenticator: Authenticator, team: TeamCredentials
) -> None:
    error = await refusal(authenticator, (("x-api-key", team.api_key),))
    assert error.message == "Invalid team context"
    assert error.reason == "INVALID_TEAM_CONTEXT"


async def test_key_with_another_teams_id_is_invalid_team_context(
    sessions: async_sessionmaker[AsyncSession], authenticator: Authenticator, team: TeamCredentials
) -> None:
    other = await new_team(sessions)

    sendmator = await refusal(authenticator, (("x-api-key", team.api_key), ("x-team-id", other.team_id)))
    bearer = await refusal(
        authenticator, (("authorization", f"Bearer {team.api_key}"), ("x-team-id", other.team_id))
    )

    assert sendmator.message == bearer.message == "Invalid team context"
    assert sendmator.reason == bearer.reason == "INVALID_TEAM_CONTEXT"


async def test_revoked_key_is_refused_at_once_without_a_cache(
    sessions: async_sessionmaker[AsyncSession], authenticator: Authenticator, team: TeamCredentials
) -> None:
    assert (await authenticator.authenticate(team.metadata)).id == team.team_id
    async with sessions() as session, session.begin():
        revoked = await revoke_key(session, team.api_key)

    assert revoked.revoked_at is not None
    error = await refusal(authenticator, team.metadata)
    assert error.message == "Unauthorized"
    assert error.reason == "INVALID_API_KEY"


async def test_revoked_key_is_refused_within_the_default_cache_second(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    authenticator = Authenticator(sessions)  # the default one-second cache
    assert (await authenticator.authenticate(team.metadata)).id == team.team_id
    async with sessions() as session, session.begin():
        await revoke_key(session, team.api_key)
    revoked_at = time.monotonic()

    async def refused() -> bool:
        try:
            await authenticator.authenticate(team.metadata)
        except Unauthenticated:
            return True
        return False

    await eventually(refused, within=1.5, what="revoked key refused")
    assert time.monotonic() - revoked_at <= 1.5


async def test_issuing_the_same_secret_twice_keeps_one_key(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    secret = f"hk_fixed_{uuid.uuid4().hex}"
    async with sessions() as session, session.begin():
        first = await issue_key(session, team.team_id, label="ci", secret=secret)
    async with sessions() as session, session.begin():
        second = await issue_key(session, team.team_id, label="ci", secret=secret)
        keys = await list_keys(session, team.team_id)

    assert second.key.id == first.key.id
    assert second.secret == secret
    assert [key.id for key in keys].count(first.key.id) == 1
    assert len(keys) == 2  # the fixture's key and this one


async def test_a_secret_cannot_be_issued_to_two_teams(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    other = await new_team(sessions)
    async with sessions() as session, session.begin():
        with pytest.raises(InvalidArgument) as raised:
            await issue_key(session, other.team_id, secret=team.api_key)
    assert raised.value.reason == "KEY_IN_USE"


@pytest.mark.parametrize("revoke_by", ["id", "secret", "prefix"])
async def test_revoke_by_id_secret_or_prefix(
    sessions: async_sessionmaker[AsyncSession],
    authenticator: Authenticator,
    team: TeamCredentials,
    revoke_by: str,
) -> None:
    async with sessions() as session, session.begin():
        issued = await issue_key(session, team.team_id, label=f"to revoke by {revoke_by}")
    handle = {
        "id": str(issued.key.id),
        "secret": issued.secret,
        "prefix": issued.key.display_prefix,
    }[revoke_by]
    other_key = TeamCredentials(team.team_id, issued.secret)
    assert (await authenticator.authenticate(other_key.metadata)).id == team.team_id

    async with sessions() as session, session.begin():
        revoked = await revoke_key(session, handle)

    assert revoked.id == issued.key.id
    async with sessions() as session:
        assert await team_for_secret(session, issued.secret) is None
        assert await team_for_secret(session, team.api_key) is not None  # the team's other key still works
    await refusal(authenticator, other_key.metadata)


async def test_revoking_an_unknown_key_is_not_found(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        with pytest.raises(NotFound):
            await revoke_key(session, str(uuid.uuid4()))
        with pytest.raises(NotFound):
            await revoke_key(session, "hk_no-such-key-was-ever-issued-here")


async def test_a_custom_secret_can_be_revoked_by_its_secret(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    secret = f"dev-key-{uuid.uuid4().hex}"
    async with sessions() as session, session.begin():
        issued = await issue_key(session, team.team_id, label="dev", secret=secret)
    async with sessions() as session, session.begin():
        revoked = await revoke_key(session, secret)
    assert revoked.id == issued.key.id


@pytest.mark.parametrize(
    "team_id", ["a b", "", "x" * 65, "-leading-dash", "team.dot", "team/slash"], ids=repr
)
async def test_ensure_team_rejects_bad_ids(sessions: async_sessionmaker[AsyncSession], team_id: str) -> None:
    async with sessions() as session:
        with pytest.raises(InvalidArgument) as raised:
            await ensure_team(session, team_id)
    assert raised.value.reason == "INVALID_TEAM_ID"


async def test_ensure_team_rejects_a_trailing_newline(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        with pytest.raises(InvalidArgument):
            await ensure_team(session, f"team-{uuid.uuid4().hex[:8]}\n")
        await session.rollback()


async def test_ensure_team_accepts_64_characters_and_is_idempotent(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    team_id = ("t" + uuid.uuid4().hex * 2)[:64]
    async with sessions() as session, session.begin():
        created = await ensure_team(session, team_id, name="Acme")
    async with sessions() as session, session.begin():
        again = await ensure_team(session, team_id, name="Renamed")
    assert created == again == Team(team_id, "Acme")
