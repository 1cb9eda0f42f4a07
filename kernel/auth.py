"""Who is calling: the team behind the credentials in a request's metadata.

Two credential styles are accepted, as the two product documents use them:
- Sendmator: `x-api-key: <key>` plus `x-team-id: <team>`; the team must be the key's team.
- Sendrealm: `authorization: Bearer <key>`.
Missing or unknown keys are 401 "Unauthorized"; a missing or wrong team is 401 "Invalid team
context". Answers are cached for one second, so a revoked key fails within a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.cache import TtlCache
from kernel.errors import Unauthenticated
from kernel.tenancy import Team, team_for_secret

CACHE_SECONDS = 1.0
Metadata = Iterable[tuple[str, str | bytes]]


def credentials(metadata: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(API key, claimed team id) from lower-cased metadata."""
    key = metadata.get("x-api-key")
    if not key:
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip(), metadata.get("x-team-id")
        return None, None
    return key.strip(), metadata.get("x-team-id")


def metadata_dict(metadata: Metadata | None) -> dict[str, str]:
    return {
        key.lower(): value.decode() if isinstance(value, bytes) else value for key, value in (metadata or ())
    }


class Authenticator:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], cache_seconds: float = CACHE_SECONDS):
        self._sessions = sessions
        self._teams: TtlCache[str, Team | None] = TtlCache(cache_seconds, self._load)

    async def authenticate(self, metadata: Metadata | None) -> Team:
        values = metadata_dict(metadata)
        secret, claimed_team = credentials(values)
        if not secret:
            raise Unauthenticated("Unauthorized", reason="MISSING_API_KEY")
        team = await self._teams.get(secret)
        if team is None:
            raise Unauthenticated("Unauthorized", reason="INVALID_API_KEY")
        sendmator_style = "x-api-key" in values
        if (sendmator_style and not claimed_team) or (claimed_team and claimed_team != team.id):
            raise Unauthenticated("Invalid team context", reason="INVALID_TEAM_CONTEXT")
        return team

    async def _load(self, secret: str) -> Team | None:
        async with self._sessions() as session:
            return await team_for_secret(session, secret)
