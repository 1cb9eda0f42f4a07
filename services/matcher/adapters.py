"""The matcher's PostgreSQL schema `matcher`: workflow versions and match decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Index,
    Integer,
    Row,
    Select,
    String,
    Text,
    UniqueConstraint,
    delete,
    false,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, distinct_on, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.database import (
    DriverStatement,
    changed_rows,
    delete_some,
    driver,
    insert_many,
    insert_many_returning,
    schema_metadata,
    table_of,
)
from kernel.errors import Conflict
from kernel.outbox import delete_naming, outbox_table
from kernel.retention import ContactNames
from kernel.unit_of_work import SqlUnitOfWork
from services.matcher.domain import Decision, MatchedEvent, Segment, Workflow, WorkflowDefinition
from services.matcher.messages import definition_document, definition_from_document

SCHEMA = "matcher"


class MatcherBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class WorkflowVersionRow(MatcherBase):
    __tablename__ = "workflow_versions"
    __table_args__ = (
        UniqueConstraint("team_id", "key", "version", name="uq_workflow_versions_team_key_version"),
        Index("ix_workflow_versions_team_trigger", "team_id", "trigger_event"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    team_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool]
    trigger_event: Mapped[str] = mapped_column(String(128))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A deleted workflow's last row: it matches nothing and is not listed; the versions before
    # it stay for the runs that used them.
    deleted: Mapped[bool] = mapped_column(server_default=false())


class MatchDecisionRow(MatcherBase):
    __tablename__ = "match_decisions"
    __table_args__ = (
        Index("ix_matcher_match_decisions_team_decided", "team_id", "decided_at"),
        Index("ix_matcher_match_decisions_team_contact", "team_id", "contact_id"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workflow_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    trigger_id: Mapped[uuid.UUID]
    workflow_version: Mapped[int] = mapped_column(Integer)
    contact_id: Mapped[str] = mapped_column(String(64))
    matched: Mapped[bool]
    reason: Mapped[str] = mapped_column(String(1000))
    run_id: Mapped[uuid.UUID | None]
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EventDecidedRow(MatcherBase):
    """One row per event the matcher decided, even when no workflow listened."""

    __tablename__ = "decided_events"
    __table_args__ = (Index("ix_matcher_decided_events_team_decided", "team_id", "decided_at"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    trigger_id: Mapped[uuid.UUID]
    team_id: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CooldownRow(MatcherBase):
    """When a workflow last ran for a contact, and until when it may not run again for them."""

    __tablename__ = "cooldowns"
    __table_args__ = (
        Index("ix_matcher_cooldowns_team_contact", "team_id", "contact_id"),
        Index("ix_matcher_cooldowns_team_last_run", "team_id", "last_run_at"),
    )

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SegmentRow(MatcherBase):
    __tablename__ = "segments"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    condition: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SegmentMemberRow(MatcherBase):
    """A contact in a segment, as the last event about it said; entering is announced once."""

    __tablename__ = "segment_members"
    __table_args__ = (Index("ix_matcher_segment_members_contact", "team_id", "contact_id"),)

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(MatcherBase.metadata)
SEGMENTS = table_of(SegmentRow)
SEGMENT_MEMBERS = table_of(SegmentMemberRow)


WORKFLOW_VERSIONS = table_of(WorkflowVersionRow)
MATCH_DECISIONS = table_of(MatchDecisionRow)
DECIDED_EVENTS = table_of(EventDecidedRow)

# A stored version never changes, so its parsed definition is kept (per process, bounded).
_PARSED: dict[uuid.UUID, WorkflowDefinition] = {}
_PARSED_LIMIT = 10_000


def _workflow(row: Row[Any]) -> Workflow:
    definition = _PARSED.get(row.id)
    if definition is None:
        if len(_PARSED) >= _PARSED_LIMIT:
            _PARSED.clear()
        definition = _PARSED[row.id] = definition_from_document(row.definition)
    return Workflow(row.team_id, definition, row.version, row.created_at, deleted=row.deleted)


def _latest_versions(team_id: str) -> Select[Any]:
    columns = WORKFLOW_VERSIONS.c
    return (
        select(WORKFLOW_VERSIONS)
        .ext(distinct_on(columns.key))
        .where(columns.team_id == team_id)
        .order_by(columns.key, columns.version.desc())
    )


class SqlWorkflowRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def latest(self, team_id: str, key: str) -> Workflow | None:
        columns = WORKFLOW_VERSIONS.c
        row = (
            await self._session.execute(
                select(WORKFLOW_VERSIONS)
                .where(columns.team_id == team_id, columns.key == key)
                .order_by(columns.version.desc())
                .limit(1)
            )
        ).first()
        return _workflow(row) if row else None

    async def all_latest(self, team_id: str) -> list[Workflow]:
        latest = _latest_versions(team_id).subquery()
        rows = await self._session.execute(select(latest).where(~latest.c.deleted).order_by(latest.c.key))
        return [_workflow(row) for row in rows]

    async def listening_to(self, team_id: str, event_name: str) -> list[Workflow]:
        latest = _latest_versions(team_id).subquery()
        rows = await self._session.execute(
            select(latest)
            .where(latest.c.trigger_event == event_name, ~latest.c.deleted)
            .order_by(latest.c.key)
        )
        return [_workflow(row) for row in rows]

    async def versions(self, team_id: str, key: str) -> list[Workflow]:
        columns = WORKFLOW_VERSIONS.c
        rows = await self._session.execute(
            select(WORKFLOW_VERSIONS)
            .where(columns.team_id == team_id, columns.key == key, ~columns.deleted)
            .order_by(columns.version.desc())
        )
        return [_workflow(row) for row in rows]

    async def add(self, workflow: Workflow) -> None:
        """Store a version; Conflict when another request stored that version number first."""
        definition = workflow.definition
        try:
            async with self._session.begin_nested():
                await self._insert(workflow, definition)
        except IntegrityError:
            raise Conflict(
                f"Workflow {definition.key!r} was changed by another request at the same time: "
                "read it again and send your change again",
                reason="WORKFLOW_CHANGED_CONCURRENTLY",
                metadata={"key": definition.key},
            ) from None

    async def _insert(self, workflow: Workflow, definition: WorkflowDefinition) -> None:
        await self._session.execute(
            insert(WORKFLOW_VERSIONS).values(
                id=uuid.uuid4(),
                team_id=workflow.team_id,
                key=definition.key,
                version=workflow.version,
                name=definition.name,
                active=definition.active,
                trigger_event=definition.trigger_event,
                definition=definition_document(definition),
                created_at=workflow.created_at,
                deleted=workflow.deleted,
            )
        )


# Claim a cooldown: insert, or take over one that has expired; no row back means it still runs.
CLAIM_COOLDOWN = text(
    """
    INSERT INTO matcher.cooldowns AS held (team_id, workflow_key, contact_id, last_run_at, until)
    VALUES (:team_id, :workflow_key, :contact_id, :now, :until)
    ON CONFLICT (team_id, workflow_key, contact_id) DO UPDATE
        SET last_run_at = EXCLUDED.last_run_at, until = EXCLUDED.until
        WHERE held.until <= EXCLUDED.last_run_at
    RETURNING until
    """
)
HELD_UNTIL = text(
    "SELECT until FROM matcher.cooldowns "
    "WHERE team_id = :team_id AND workflow_key = :workflow_key AND contact_id = :contact_id"
)


class SqlCooldownRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def claim(
        self, team_id: str, workflow_key: str, contact_id: str, now: datetime, until: datetime
    ) -> datetime | None:
        """Start the cooldown and return None, or return when the running one ends. Two
        replicas claiming at once queue on the row's key: the second sees the first's claim."""
        key = {"team_id": team_id, "workflow_key": workflow_key, "contact_id": contact_id}
        claimed = (await self._session.execute(CLAIM_COOLDOWN, {**key, "now": now, "until": until})).first()
        if claimed is not None:
            return None
        held: datetime = (await self._session.execute(HELD_UNTIL, key)).scalar_one()
        return held


class SqlDecisionRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def claim(self, events: Sequence[MatchedEvent]) -> set[uuid.UUID]:
        if not events:
            return set()
        ordered = sorted({event.event_id: event for event in events}.values(), key=lambda e: e.event_id)
        rows = await insert_many_returning(
            await driver(self._session),
            DECIDED_EVENTS,
            [{"event_id": e.event_id, "trigger_id": e.trigger_id, "team_id": e.team_id} for e in ordered],
            "event_id",
            on_conflict="ON CONFLICT (event_id) DO NOTHING",
        )
        return {event_id for (event_id,) in rows}

    async def add(self, decided: Sequence[tuple[MatchedEvent, list[Decision]]]) -> None:
        rows = [
            {
                "event_id": event.event_id,
                "workflow_key": decision.workflow.key,
                "team_id": event.team_id,
                "trigger_id": event.trigger_id,
                "workflow_version": decision.workflow.version,
                "contact_id": decision.contact_id,
                "matched": decision.matched,
                "reason": decision.reason,
                "run_id": decision.run_id,
            }
            for event, decisions in decided
            for decision in decisions
        ]
        await insert_many(await driver(self._session), MATCH_DECISIONS, rows)


class SqlSegmentRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, team_id: str, key: str) -> Segment | None:
        row = (
            await self._session.execute(
                select(SEGMENTS).where(SEGMENTS.c.team_id == team_id, SEGMENTS.c.key == key)
            )
        ).first()
        return Segment(**row._mapping) if row else None

    async def all(self, team_id: str) -> list[Segment]:
        rows = await self._session.execute(
            select(SEGMENTS).where(SEGMENTS.c.team_id == team_id).order_by(SEGMENTS.c.key)
        )
        return [Segment(**row._mapping) for row in rows]

    async def put(self, segment: Segment, *, replace: bool) -> Segment | None:
        """Store `segment`; None when it exists and `replace` is false."""
        values = {"name": segment.name, "condition": segment.condition}
        statement = insert(SEGMENTS).values(team_id=segment.team_id, key=segment.key, **values)
        if replace:
            statement = statement.on_conflict_do_update(
                index_elements=["team_id", "key"], set_={**values, "updated_at": func.now()}
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=["team_id", "key"])
        row = (await self._session.execute(statement.returning(*SEGMENTS.c))).first()
        return Segment(**row._mapping) if row else None

    async def delete(self, team_id: str, key: str) -> bool:
        await self._session.execute(
            delete(SEGMENT_MEMBERS).where(
                SEGMENT_MEMBERS.c.team_id == team_id, SEGMENT_MEMBERS.c.segment_key == key
            )
        )
        result = await self._session.execute(
            delete(SEGMENTS).where(SEGMENTS.c.team_id == team_id, SEGMENTS.c.key == key)
        )
        return bool(getattr(result, "rowcount", 0))

    async def set_memberships(
        self, members: Sequence[tuple[str, str, frozenset[str]]], now: datetime
    ) -> list[tuple[str, str, str]]:
        """Record that each contact is in exactly the segments given; the segments newly
        entered. Two statements for any number of contacts; rows in one order (team, segment,
        contact) so that two replicas never wait on each other in a cycle."""
        held = sorted((team_id, key, contact_id) for team_id, contact_id, keys in members for key in keys)
        await DROP_MEMBERSHIPS.execute(
            self._session,
            teams=[team_id for team_id, _, _ in members],
            contacts=[contact_id for _, contact_id, _ in members],
            held_teams=[team_id for team_id, _, _ in held],
            held_keys=[key for _, key, _ in held],
            held_contacts=[contact_id for _, _, contact_id in held],
        )
        entered = await insert_many_returning(
            await driver(self._session),
            SEGMENT_MEMBERS,
            [
                {"team_id": team_id, "segment_key": key, "contact_id": contact_id, "entered_at": now}
                for team_id, key, contact_id in held
            ],
            "team_id, contact_id, segment_key",
            on_conflict="ON CONFLICT (team_id, segment_key, contact_id) DO NOTHING",
        )
        return sorted(tuple(row) for row in entered)


# The memberships a batch's contacts no longer hold, compiled once (see DriverStatement).
DROP_MEMBERSHIPS = DriverStatement.of(
    text(
        """
        DELETE FROM matcher.segment_members AS m
        USING unnest(CAST(:teams AS varchar[]), CAST(:contacts AS varchar[])) AS c(team_id, contact_id)
        WHERE m.team_id = c.team_id AND m.contact_id = c.contact_id
          AND NOT EXISTS (
              SELECT 1
              FROM unnest(CAST(:held_teams AS varchar[]), CAST(:held_keys AS varchar[]),
                          CAST(:held_contacts AS varchar[])) AS h(team_id, segment_key, contact_id)
              WHERE h.team_id = m.team_id AND h.segment_key = m.segment_key AND h.contact_id = m.contact_id)
        """
    )
)


COOLDOWNS = table_of(CooldownRow)


class SqlLifecycleRepository:
    """Retention purges and the right to erasure. Workflow versions and segments are the
    project's configuration, never purged."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Up to `limit` decisions and decided events older than `before`, and cooldowns whose
        run was before it and that have expired."""
        session = self._session
        decisions = await delete_some(
            session,
            MATCH_DECISIONS,
            [MATCH_DECISIONS.c.event_id, MATCH_DECISIONS.c.workflow_key],
            MATCH_DECISIONS.c.team_id == team_id,
            MATCH_DECISIONS.c.decided_at < before,
            limit=limit,
        )
        decided = await delete_some(
            session,
            DECIDED_EVENTS,
            [DECIDED_EVENTS.c.event_id],
            DECIDED_EVENTS.c.team_id == team_id,
            DECIDED_EVENTS.c.decided_at < before,
            limit=limit,
        )
        cooldowns = await delete_some(
            session,
            COOLDOWNS,
            [COOLDOWNS.c.team_id, COOLDOWNS.c.workflow_key, COOLDOWNS.c.contact_id],
            COOLDOWNS.c.team_id == team_id,
            COOLDOWNS.c.last_run_at < before,
            COOLDOWNS.c.until < func.now(),
            limit=limit,
        )
        return {
            "matcher.match_decisions": decisions,
            "matcher.decided_events": decided,
            "matcher.cooldowns": cooldowns,
        }

    async def erase_contact(self, team_id: str, names: ContactNames) -> dict[str, int]:
        """Delete the decisions about the contact (a reason may quote its values), its cooldowns,
        its segment memberships and the outbox rows naming it."""
        session = self._session
        contact_id = names.contact_id
        return {
            "matcher.match_decisions": await changed_rows(
                session,
                delete(MATCH_DECISIONS).where(
                    MATCH_DECISIONS.c.team_id == team_id, MATCH_DECISIONS.c.contact_id == contact_id
                ),
            ),
            "matcher.cooldowns": await changed_rows(
                session,
                delete(COOLDOWNS).where(COOLDOWNS.c.team_id == team_id, COOLDOWNS.c.contact_id == contact_id),
            ),
            "matcher.segment_members": await changed_rows(
                session,
                delete(SEGMENT_MEMBERS).where(
                    SEGMENT_MEMBERS.c.team_id == team_id, SEGMENT_MEMBERS.c.contact_id == contact_id
                ),
            ),
            "matcher.outbox": await delete_naming(session, OUTBOX, team_id, names.identifiers),
        }


class MatcherSqlUnitOfWork(SqlUnitOfWork):
    workflows: SqlWorkflowRepository
    decisions: SqlDecisionRepository
    cooldowns: SqlCooldownRepository
    segments: SqlSegmentRepository
    lifecycle: SqlLifecycleRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.workflows = SqlWorkflowRepository(session)
        self.decisions = SqlDecisionRepository(session)
        self.cooldowns = SqlCooldownRepository(session)
        self.segments = SqlSegmentRepository(session)
        self.lifecycle = SqlLifecycleRepository(session)
