"""Teams and their API keys (the `tenancy` schema).

A team is what the Sendrealm page calls a project: every event, contact, workflow and trigger
belongs to one. API keys are shown once when created and stored only as SHA-256 hashes (they are
long random secrets, so a fast hash is the right one); a revoked key stops working within a
second (kernel.auth caches answers that long) and is never reinstated.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.clock import utcnow
from kernel.database import schema_metadata
from kernel.errors import FailedPrecondition, InvalidArgument, NotFound

SCHEMA = "tenancy"
KEY_PREFIX = "hk_"
TEAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class TenancyBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class TeamRow(TenancyBase):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKeyRow(TenancyBase):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Team:
    id: str
    name: str


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    team_id: str
    display_prefix: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedKey:
    """A new key: the only moment its secret is known."""

    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def validate_team_id(team_id: str) -> str:
    if not TEAM_ID_PATTERN.fullmatch(team_id):
        raise InvalidArgument(
            f"Invalid team id {team_id!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit",
            reason="INVALID_TEAM_ID",
        )
    return team_id


async def ensure_team(session: AsyncSession, team_id: str, name: str | None = None) -> Team:
    """The team `team_id`, created if new."""
    validate_team_id(team_id)
    row = await session.get(TeamRow, team_id)
    if row is None:
        row = TeamRow(id=team_id, name=name or team_id)
        session.add(row)
        await session.flush()
    return Team(row.id, row.name)


async def issue_key(
    session: AsyncSession, team_id: str, *, label: str = "", secret: str | None = None
) -> IssuedKey:
    """Store a key for `team_id` (a new random secret unless one is given) and return it once."""
    secret = secret or generate_secret()
    existing = (
        await session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(secret)))
    ).first()
    if existing is not None:
        if existing.team_id != team_id:
            raise InvalidArgument("That API key already belongs to another team", reason="KEY_IN_USE")
        if existing.revoked_at is not None:
            raise FailedPrecondition("That API key was revoked: issue a new one", reason="KEY_REVOKED")
        return IssuedKey(_key(existing), secret)
    row = ApiKeyRow(
        id=uuid.uuid4(),
        team_id=team_id,
        key_hash=hash_key(secret),
        display_prefix=secret[:10],
        label=label,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return IssuedKey(_key(row), secret)


async def list_keys(session: AsyncSession, team_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
    if team_id is not None:
        query = query.where(ApiKeyRow.team_id == team_id)
    return [_key(row) for row in await session.scalars(query)]


async def revoke_key(session: AsyncSession, key_or_id: str) -> ApiKey:
    """Revoke by the key's secret, its id, or its display prefix (when that names one key)."""
    query = select(ApiKeyRow)
    try:
        query = query.where(ApiKeyRow.id == uuid.UUID(key_or_id))
    except ValueError:
        query = query.where(ApiKeyRow.display_prefix == key_or_id)
    rows = list(await session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key_or_id))))
    if not rows:
        rows = list(await session.scalars(query))
    if len(rows) != 1:
        raise NotFound(f"No single API key matches {key_or_id!r}", reason="KEY_NOT_FOUND")
    rows[0].revoked_at = rows[0].revoked_at or utcnow()
    return _key(rows[0])


async def team_for_secret(session: AsyncSession, secret: str) -> Team | None:
    """The team of an active key, or None when the key is unknown or revoked."""
    row = (
        await session.execute(
            select(TeamRow.id, TeamRow.name)
            .join(ApiKeyRow, ApiKeyRow.team_id == TeamRow.id)
            .where(ApiKeyRow.key_hash == hash_key(secret), ApiKeyRow.revoked_at.is_(None))
        )
    ).first()
    return Team(row.id, row.name) if row else None


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.id, row.team_id, row.display_prefix, row.label, row.created_at, row.revoked_at)
