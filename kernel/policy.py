"""Project policy (the `tenancy` schema): what a project accepts and how long it keeps things.

A project without a stored policy has the defaults below. Ingest reads the policy on every event
through `PolicyCache`, so a change made by any replica takes effect everywhere within a second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Integer, String, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from kernel import durations
from kernel.cache import TtlCache
from kernel.database import table_of
from kernel.errors import InvalidArgument
from kernel.tenancy import TeamRow, TenancyBase

# Hourly event limits of each plan; None is unlimited.
PLAN_LIMITS: dict[str, int | None] = {"starter": 1_000, "pro": 10_000, "enterprise": None}
UNKNOWN_EVENTS = ("accept", "reject")
# The gateway refuses bodies over 1 MiB, so a larger payload limit could never apply.
MAX_PAYLOAD_LIMIT_BYTES = 1024 * 1024
MIN_IDEMPOTENCY_WINDOW = timedelta(minutes=1)
MAX_IDEMPOTENCY_WINDOW = timedelta(days=30)
MAX_RETENTION_DAYS = 3650
CACHE_SECONDS = 1.0


class ProjectPolicyRow(TenancyBase):
    __tablename__ = "project_policies"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_payload_limit_bytes: Mapped[int] = mapped_column(Integer)
    unknown_events: Mapped[str] = mapped_column(String(16))
    retention_days: Mapped[int] = mapped_column(Integer)
    # The ISO 8601 duration as the project wrote it (PT24H, P7D), so it reads back unchanged.
    idempotency_window: Mapped[str] = mapped_column(String(32))
    plan: Mapped[str] = mapped_column(String(16))
    rate_limit_per_hour: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


POLICIES = table_of(ProjectPolicyRow)


@dataclass(frozen=True)
class ProjectPolicy:
    event_payload_limit_bytes: int = 256 * 1024
    unknown_events: str = "accept"
    retention_days: int = 90
    # ISO 8601 duration, as written: see `idempotency_period`.
    idempotency_window: str = "PT24H"
    # Self-hosted projects have no plan limit unless an operator sets one.
    plan: str = "enterprise"
    rate_limit_per_hour: int | None = None

    @property
    def idempotency_period(self) -> timedelta:
        return parse_duration(self.idempotency_window, "idempotency_window")

    @property
    def effective_rate_limit(self) -> int | None:
        """Events per hour the project may send: the override, else the plan's; None is unlimited."""
        return self.rate_limit_per_hour or PLAN_LIMITS[self.plan]


@dataclass(frozen=True)
class PolicyChange:
    """The fields of a PATCH; None leaves a field as it is (0 clears the rate-limit override)."""

    event_payload_limit_bytes: int | None = None
    unknown_events: str | None = None
    retention_days: int | None = None
    idempotency_window: str | None = None
    plan: str | None = None
    rate_limit_per_hour: int | None = None


def parse_duration(text: str, field: str) -> timedelta:
    """An ISO 8601 duration such as PT24H or P1D, without years or months (their length varies)."""
    try:
        return durations.parse_duration(text)
    except ValueError as error:
        raise InvalidArgument(
            f"Invalid {field}: {error}", reason="INVALID_DURATION", metadata={"field": field}
        ) from None


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid {field}: {message}", reason="INVALID_POLICY", metadata={"field": field})


def apply_change(policy: ProjectPolicy, change: PolicyChange) -> ProjectPolicy:
    """`policy` with `change` applied, or InvalidArgument naming the first field that is wrong."""
    updated = policy
    if change.event_payload_limit_bytes is not None:
        if not 1 <= change.event_payload_limit_bytes <= MAX_PAYLOAD_LIMIT_BYTES:
            raise _invalid("event_payload_limit_bytes", f"must be between 1 and {MAX_PAYLOAD_LIMIT_BYTES}")
        updated = replace(updated, event_payload_limit_bytes=change.event_payload_limit_bytes)
    if change.unknown_events is not None:
        if change.unknown_events not in UNKNOWN_EVENTS:
            raise _invalid("unknown_events", "must be 'accept' or 'reject'")
        updated = replace(updated, unknown_events=change.unknown_events)
    if change.retention_days is not None:
        if not 1 <= change.retention_days <= MAX_RETENTION_DAYS:
            raise _invalid("retention_days", f"must be between 1 and {MAX_RETENTION_DAYS}")
        updated = replace(updated, retention_days=change.retention_days)
    if change.idempotency_window is not None:
        window = parse_duration(change.idempotency_window, "idempotency_window")
        if not MIN_IDEMPOTENCY_WINDOW <= window <= MAX_IDEMPOTENCY_WINDOW:
            raise _invalid("idempotency_window", "must be between PT1M and P30D")
        updated = replace(updated, idempotency_window=change.idempotency_window.strip().upper())
    if change.plan is not None:
        if change.plan not in PLAN_LIMITS:
            raise _invalid("plan", "must be one of " + ", ".join(repr(p) for p in PLAN_LIMITS))
        updated = replace(updated, plan=change.plan)
    if change.rate_limit_per_hour is not None:
        if change.rate_limit_per_hour < 0:
            raise _invalid("rate_limit_per_hour", "must be 0 (use the plan's limit) or more")
        updated = replace(updated, rate_limit_per_hour=change.rate_limit_per_hour or None)
    return updated


async def load_policy(session: AsyncSession, team_id: str) -> ProjectPolicy:
    row = (await session.execute(select(POLICIES).where(POLICIES.c.team_id == team_id))).first()
    if row is None:
        return ProjectPolicy()
    return ProjectPolicy(
        event_payload_limit_bytes=row.event_payload_limit_bytes,
        unknown_events=row.unknown_events,
        retention_days=row.retention_days,
        idempotency_window=row.idempotency_window,
        plan=row.plan,
        rate_limit_per_hour=row.rate_limit_per_hour,
    )


async def save_policy(session: AsyncSession, team_id: str, policy: ProjectPolicy) -> None:
    values = {
        "event_payload_limit_bytes": policy.event_payload_limit_bytes,
        "unknown_events": policy.unknown_events,
        "retention_days": policy.retention_days,
        "idempotency_window": policy.idempotency_window,
        "plan": policy.plan,
        "rate_limit_per_hour": policy.rate_limit_per_hour,
    }
    statement = insert(POLICIES).values(team_id=team_id, **values)
    await session.execute(
        statement.on_conflict_do_update(index_elements=["team_id"], set_={**values, "updated_at": func.now()})
    )


async def update_policy(session: AsyncSession, team_id: str, change: PolicyChange) -> ProjectPolicy:
    """Apply `change` under a row lock, so that concurrent PATCHes of different fields both hold."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtext("herald.policy:" + team_id))))
    updated = apply_change(await load_policy(session, team_id), change)
    await save_policy(session, team_id, updated)
    return updated


async def retention_by_team(session: AsyncSession) -> list[tuple[str, int]]:
    """Every team with the number of days its events are kept."""
    rows = await session.execute(
        select(TeamRow.id, func.coalesce(POLICIES.c.retention_days, ProjectPolicy.retention_days)).outerjoin(
            POLICIES, POLICIES.c.team_id == TeamRow.id
        )
    )
    return [(row[0], int(row[1])) for row in rows]


class PolicyCache:
    """Each project's policy, read at most once a second per process."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cache_seconds: float = CACHE_SECONDS):
        self._sessions = sessions
        self._policies: TtlCache[str, ProjectPolicy] = TtlCache(cache_seconds, self._load)

    async def get(self, team_id: str) -> ProjectPolicy:
        return await self._policies.get(team_id)

    def forget(self, team_id: str) -> None:
        self._policies.forget(team_id)

    async def _load(self, team_id: str) -> ProjectPolicy:
        async with self._sessions() as session:
            return await load_policy(session, team_id)
