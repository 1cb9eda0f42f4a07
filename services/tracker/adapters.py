"""The tracker's PostgreSQL schema `tracker`: triggers and the facts reported about them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    CompoundSelect,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    distinct,
    extract,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from herald.bus.v1 import tracking_pb2
from kernel.clock import utcnow
from kernel.database import (
    DriverStatement,
    changed_rows,
    driver,
    insert_many,
    insert_many_returning,
    schema_metadata,
    table_of,
    update_many,
)
from kernel.retention import ContactNames
from kernel.unit_of_work import SqlUnitOfWork
from services.tracker.domain import (
    EventLatency,
    Latency,
    Outcome,
    Page,
    Position,
    Progress,
    QueueLagSample,
    RunEnd,
    RunRecord,
    RunStatus,
    StatsBucket,
    Summary,
    TimelineEntry,
    TimelineKind,
    TriggerListing,
    TriggerQuery,
    TriggerState,
    TriggerStatus,
    TriggerView,
    status_now,
)

SCHEMA = "tracker"


class TrackerBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class TriggerRow(TrackerBase):
    __tablename__ = "triggers"
    # Newest first by (created_at, id): the list, its filters by event name and contact, a
    # contact's timeline, and the latency per event name.
    __table_args__ = (
        Index("ix_triggers_team_created_id", "team_id", "created_at", "id"),
        Index("ix_triggers_team_event_created", "team_id", "event_name", "created_at", "id"),
        Index("ix_triggers_team_contact_created", "team_id", "contact_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID | None]
    event_name: Mapped[str | None] = mapped_column(String(128))
    contact_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    matched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its first step was done (a message delivered, or failed for good): for latency.
    first_step_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A trigger of several events (a direct workflow trigger): how many, and how many contacts it
    # targets. None for an event's own trigger: one event, matched once matched_at is set.
    expected_events: Mapped[int | None] = mapped_column(Integer)
    contacts: Mapped[int | None] = mapped_column(Integer)
    # Counters kept as facts arrive (under the trigger's lock), so a fact costs the same whatever
    # the trigger's size: its events decided (of several), the runs its decisions started, and
    # how many of those have finished and failed.
    events_matched: Mapped[int] = mapped_column(Integer, server_default="0")
    runs_expected: Mapped[int] = mapped_column(Integer, server_default="0")
    runs_finished: Mapped[int] = mapped_column(Integer, server_default="0")
    runs_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MatchRow(TrackerBase):
    """An event of a trigger of several events that the matcher has decided."""

    __tablename__ = "trigger_matches"

    trigger_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class DecisionRow(TrackerBase):
    __tablename__ = "trigger_decisions"
    __table_args__ = (
        Index("ix_trigger_decisions_run_id", "run_id"),
        Index("ix_tracker_trigger_decisions_contact", "contact_id"),
    )

    trigger_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workflow_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_version: Mapped[int] = mapped_column(Integer)
    matched: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[uuid.UUID | None]


class RunRow(TrackerBase):
    __tablename__ = "trigger_runs"
    __table_args__ = (Index("ix_trigger_runs_contact_id", "contact_id"),)

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    trigger_id: Mapped[uuid.UUID] = mapped_column(index=True)
    workflow_key: Mapped[str | None] = mapped_column(String(100))
    contact_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryRow(TrackerBase):
    __tablename__ = "trigger_deliveries"
    __table_args__ = (
        Index("ix_trigger_deliveries_run_id", "run_id"),
        # The stats timeline: a window's deliveries, each joined to its trigger for the project.
        Index(
            "ix_trigger_deliveries_recorded",
            "recorded_at",
            postgresql_include=["trigger_id", "channel", "sent"],
        ),
    )

    delivery_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    trigger_id: Mapped[uuid.UUID] = mapped_column(index=True)
    run_id: Mapped[uuid.UUID]
    step_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    sent: Mapped[bool]
    attempts: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TRIGGERS = table_of(TriggerRow)
MATCHES = table_of(MatchRow)
DECISIONS = table_of(DecisionRow)
RUNS = table_of(RunRow)
DELIVERIES = table_of(DeliveryRow)


class SqlTriggerRepository:
    """Facts are applied a fetch at a time: a handful of statements for all the triggers of a
    fetch and all their facts, whatever their number, and each trigger's row written once. Each
    fact is stored at most once: a repeated fact (from an earlier fetch, or twice in this one)
    stores nothing.

    Plain SQL statements: this is the busiest write path of the tracker."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def lock(self, trigger_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TriggerState]:
        rows = await LOCK.rows(self._session, trigger_ids=sorted(trigger_ids))
        return {row.id: _state(row) for row in rows}

    async def create(self, triggers: Sequence[TriggerState]) -> set[uuid.UUID]:
        # A trigger another transaction is creating waits for it to end, and is then left out.
        rows = await insert_many_returning(
            await driver(self._session),
            TRIGGERS,
            [_row(state) for state in sorted(triggers, key=lambda state: state.id)],
            "id",
            on_conflict="ON CONFLICT (id) DO NOTHING",
        )
        return {row[0] for row in rows}

    async def save(self, states: Sequence[TriggerState]) -> None:
        # Every column, changed or not: an indexed column set to the value it has does not cost
        # the update its HOT (heap-only) path, and one statement text serves every batch.
        await update_many(await driver(self._session), TRIGGERS, [_row(state) for state in states], SAVED)

    async def add_events_decided(
        self, events: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> set[tuple[uuid.UUID, uuid.UUID]]:
        return set(
            await insert_many_returning(
                await driver(self._session),
                MATCHES,
                [{"trigger_id": trigger_id, "event_id": event_id} for trigger_id, event_id in events],
                "trigger_id, event_id",
                on_conflict="ON CONFLICT DO NOTHING",
            )
        )

    async def add_decisions(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.EventMatched]]
    ) -> dict[uuid.UUID, uuid.UUID]:
        rows = [
            {
                "trigger_id": trigger_id,
                "workflow_key": decision.workflow_key,
                "contact_id": decision.contact_id,
                "workflow_version": decision.workflow_version,
                "matched": decision.outcome == tracking_pb2.MATCH_OUTCOME_MATCHED,
                "reason": decision.reason,
                "run_id": uuid.UUID(decision.run_id) if decision.run_id else None,
            }
            for trigger_id, fact in facts
            for decision in fact.decisions
        ]
        inserted = await insert_many_returning(
            await driver(self._session),
            DECISIONS,
            rows,
            "trigger_id, run_id, matched",
            on_conflict="ON CONFLICT DO NOTHING",
        )
        return {
            run_id: trigger_id for trigger_id, run_id, matched in inserted if matched and run_id is not None
        }

    async def runs(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunRecord]:
        ends: dict[uuid.UUID, tuple[str | None, datetime | None]] = {}
        decided_by: dict[uuid.UUID, set[uuid.UUID]] = {}
        for row in await RUNS_RECORDED.rows(self._session, run_ids=list(set(run_ids))):
            if row.decided_by is None:
                ends[row.run_id] = (row.status, row.finished_at)
            else:
                decided_by.setdefault(row.run_id, set()).add(row.decided_by)
        return {
            run_id: RunRecord(*ends.get(run_id, (None, None)), frozenset(decided_by.get(run_id, ())))
            for run_id in ends.keys() | decided_by.keys()
        }

    async def record_runs_started(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.RunStarted, datetime]]
    ) -> None:
        rows = {
            fact.run_id: {
                "run_id": uuid.UUID(fact.run_id),
                "trigger_id": trigger_id,
                "workflow_key": fact.workflow_key,
                "contact_id": fact.contact_id,
                "status": RunStatus.RUNNING,
                "detail": "",
                "started_at": at,
            }
            for trigger_id, fact, at in facts
        }
        # A run whose end came first gets what its start says; a start again changes nothing.
        await insert_many(
            await driver(self._session),
            RUNS,
            list(rows.values()),
            on_conflict="ON CONFLICT (run_id) DO UPDATE SET workflow_key = EXCLUDED.workflow_key, "
            "contact_id = EXCLUDED.contact_id, started_at = EXCLUDED.started_at "
            "WHERE (trigger_runs.workflow_key, trigger_runs.contact_id, trigger_runs.started_at) "
            "IS DISTINCT FROM (EXCLUDED.workflow_key, EXCLUDED.contact_id, EXCLUDED.started_at)",
        )

    async def record_run_ends(self, ends: Sequence[RunEnd]) -> None:
        await insert_many(
            await driver(self._session),
            RUNS,
            [
                {
                    "run_id": end.run_id,
                    "trigger_id": end.trigger_id,
                    "status": end.status,
                    "detail": end.detail,
                    "finished_at": end.finished_at,
                }
                for end in ends
            ],
            on_conflict="ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status, "
            "detail = EXCLUDED.detail, finished_at = EXCLUDED.finished_at",
        )

    async def record_deliveries(
        self, facts: Sequence[tuple[uuid.UUID, tracking_pb2.DeliveryRecorded, datetime]]
    ) -> None:
        await insert_many(
            await driver(self._session),
            DELIVERIES,
            [
                {
                    "delivery_id": uuid.UUID(fact.delivery_id),
                    "trigger_id": trigger_id,
                    "run_id": uuid.UUID(fact.run_id),
                    "step_id": fact.step_id,
                    "channel": fact.channel,
                    "sent": fact.outcome == tracking_pb2.DELIVERY_OUTCOME_SENT,
                    "attempts": fact.attempts,
                    "detail": fact.detail,
                    "recorded_at": at,
                }
                for trigger_id, fact, at in facts
            ],
            on_conflict="ON CONFLICT (delivery_id) DO NOTHING",
        )

    async def progress(self, trigger_id: uuid.UUID) -> Progress:
        rows = await PROGRESS.rows(self._session, trigger_id=trigger_id)
        if not rows:  # no fact about the trigger yet
            return Progress(matched=False, expected_runs=0, finished_runs=0, failed_runs=0)
        return _state(rows[0]).progress

    async def view(self, team_id: str, trigger_id: uuid.UUID) -> TriggerView | None:
        decisions = (
            select(
                func.count(distinct(case((DECISIONS.c.matched, DECISIONS.c.contact_id)))).label(
                    "matched_contacts"
                ),
                func.count().filter(~DECISIONS.c.matched).label("filtered"),
            )
            .where(DECISIONS.c.trigger_id == trigger_id)
            .subquery()
        )
        deliveries = (
            select(
                func.count().filter(DELIVERIES.c.sent).label("sent"),
                func.count().filter(~DELIVERIES.c.sent).label("failed"),
            )
            .where(DELIVERIES.c.trigger_id == trigger_id)
            .subquery()
        )
        row = (
            await self._session.execute(
                select(TRIGGERS, decisions, deliveries)
                .select_from(TRIGGERS.join(decisions, true()).join(deliveries, true()))
                .where(TRIGGERS.c.id == trigger_id, TRIGGERS.c.team_id == team_id)
            )
        ).first()
        if row is None or row.created_at is None:
            return None
        summary = Summary(
            total_contacts=row.contacts if row.contacts is not None else row.matched_contacts,
            sent=row.sent,
            failed=row.failed,
            filtered=row.filtered,
        )
        return TriggerView(
            row.id,
            status_now(row.status, row.scheduled_for, utcnow()),
            row.created_at,
            row.started_at,
            row.completed_at,
            summary,
            row.event_name or "",
        )

    async def outcomes(self, trigger_id: uuid.UUID, limit: int) -> tuple[list[Outcome], int]:
        """The first `limit` decisions about the trigger (matched first, then by workflow and
        contact) with their runs, and how many decisions there are."""
        rows = await self._session.execute(
            select(
                DECISIONS,
                RUNS.c.status.label("run_status"),
                RUNS.c.started_at.label("run_started_at"),
                RUNS.c.finished_at.label("run_finished_at"),
                func.count().over().label("total"),
            )
            .select_from(DECISIONS.outerjoin(RUNS, RUNS.c.run_id == DECISIONS.c.run_id))
            .where(DECISIONS.c.trigger_id == trigger_id)
            .order_by(DECISIONS.c.matched.desc(), DECISIONS.c.workflow_key, DECISIONS.c.contact_id)
            .limit(limit)
        )
        outcomes, total = [], 0
        for row in rows:
            total = row.total
            outcomes.append(
                Outcome(
                    workflow_key=row.workflow_key,
                    workflow_version=row.workflow_version,
                    contact_id=row.contact_id,
                    matched=row.matched,
                    reason=row.reason,
                    run_id=row.run_id,
                    run_status=(row.run_status or "pending") if row.matched else "",
                    run_started_at=row.run_started_at,
                    run_finished_at=row.run_finished_at,
                )
            )
        return outcomes, total

    async def list_triggers(self, team_id: str, query: TriggerQuery, now: datetime) -> Page[TriggerListing]:
        """A page of the team's triggers, newest first (by created_at, then id)."""
        conditions = [TRIGGERS.c.team_id == team_id, TRIGGERS.c.created_at.is_not(None)]
        if query.statuses:
            conditions.append(or_(*(_status_is(status, now) for status in query.statuses)))
        if query.event_name:
            conditions.append(TRIGGERS.c.event_name == query.event_name)
        if query.contact_id:
            conditions.append(TRIGGERS.c.contact_id == query.contact_id)
        if query.created_after is not None:
            conditions.append(TRIGGERS.c.created_at >= query.created_after)
        if query.created_before is not None:
            conditions.append(TRIGGERS.c.created_at < query.created_before)
        if query.after is not None:
            conditions.append(
                tuple_(TRIGGERS.c.created_at, TRIGGERS.c.id)
                < tuple_(
                    literal(query.after.at, DateTime(timezone=True)), literal(uuid.UUID(query.after.key))
                )
            )
        rows = list(
            await self._session.execute(
                select(TRIGGERS)
                .where(*conditions)
                .order_by(TRIGGERS.c.created_at.desc(), TRIGGERS.c.id.desc())
                .limit(query.limit + 1)
            )
        )
        shown = rows[: query.limit]
        summaries = await self._summaries(shown)
        items = [
            TriggerListing(
                TriggerView(
                    row.id,
                    status_now(row.status, row.scheduled_for, now),
                    row.created_at,
                    row.started_at,
                    row.completed_at,
                    summaries[row.id],
                    row.event_name or "",
                ),
                row.contact_id or "",
            )
            for row in shown
        ]
        return Page(items, items[-1].position if len(rows) > query.limit else None)

    async def _summaries(self, triggers: Sequence[Any]) -> dict[uuid.UUID, Summary]:
        """The summary of each of the trigger rows (as `view` counts it), in two grouped statements."""
        ids = [row.id for row in triggers]
        if not ids:
            return {}
        decided = {
            row.trigger_id: row
            for row in await self._session.execute(
                select(
                    DECISIONS.c.trigger_id,
                    func.count(distinct(case((DECISIONS.c.matched, DECISIONS.c.contact_id)))).label(
                        "matched_contacts"
                    ),
                    func.count().filter(~DECISIONS.c.matched).label("filtered"),
                )
                .where(DECISIONS.c.trigger_id.in_(ids))
                .group_by(DECISIONS.c.trigger_id)
            )
        }
        delivered = {
            row.trigger_id: row
            for row in await self._session.execute(
                select(
                    DELIVERIES.c.trigger_id,
                    func.count().filter(DELIVERIES.c.sent).label("sent"),
                    func.count().filter(~DELIVERIES.c.sent).label("failed"),
                )
                .where(DELIVERIES.c.trigger_id.in_(ids))
                .group_by(DELIVERIES.c.trigger_id)
            )
        }
        summaries = {}
        for trigger in triggers:
            decisions, deliveries = decided.get(trigger.id), delivered.get(trigger.id)
            matched_contacts = decisions.matched_contacts if decisions else 0
            summaries[trigger.id] = Summary(
                total_contacts=trigger.contacts if trigger.contacts is not None else matched_contacts,
                sent=deliveries.sent if deliveries else 0,
                failed=deliveries.failed if deliveries else 0,
                filtered=decisions.filtered if decisions else 0,
            )
        return summaries

    async def timeline(
        self, team_id: str, contact_id: str, limit: int, after: Position | None, now: datetime
    ) -> Page[TimelineEntry]:
        """A page of the contact's events, runs and deliveries, newest first."""
        story = _timeline(team_id, contact_id).subquery("story")
        conditions = []
        if after is not None:
            conditions.append(
                tuple_(story.c.at, story.c.rank, story.c.key)
                < tuple_(literal(after.at, DateTime(timezone=True)), literal(after.rank), literal(after.key))
            )
        rows = list(
            await self._session.execute(
                select(story)
                .where(*conditions)
                .order_by(story.c.at.desc(), story.c.rank.desc(), story.c.key.desc())
                .limit(limit + 1)
            )
        )
        items = [
            TimelineEntry(
                kind=row.kind,
                at=row.at,
                key=row.key,
                trigger_id=row.trigger_id,
                event_name=row.event_name or "",
                run_id=row.run_id,
                workflow_key=row.workflow_key or "",
                step_id=row.step_id or "",
                channel=row.channel or "",
                outcome=status_now(row.outcome, row.scheduled_for, now)
                if row.kind == TimelineKind.EVENT
                else row.outcome,
                detail=row.detail or "",
            )
            for row in rows[:limit]
        ]
        return Page(items, items[-1].position if len(rows) > limit else None)

    async def latency(
        self, team_id: str, since: datetime, until: datetime, event_name: str | None = None
    ) -> list[EventLatency]:
        """Per event name (or for `event_name` only), the triggers accepted between `since` and
        `until`: how many, and how long they took from accepted (or due, when scheduled) to matched
        and to their first step done. Busiest first."""
        start = func.greatest(TRIGGERS.c.created_at, TRIGGERS.c.scheduled_for)
        to_matched = _milliseconds(TRIGGERS.c.matched_at - start)
        to_first_step = _milliseconds(TRIGGERS.c.first_step_at - start)
        count = func.count()
        rows = await self._session.execute(
            select(
                TRIGGERS.c.event_name,
                count.label("total"),
                func.count(TRIGGERS.c.matched_at).label("matched"),
                func.count(TRIGGERS.c.first_step_at).label("first_step_done"),
                *_latency_columns("matched", to_matched),
                *_latency_columns("first_step", to_first_step),
            )
            .where(
                TRIGGERS.c.team_id == team_id,
                TRIGGERS.c.event_name.is_not(None)
                if event_name is None
                else TRIGGERS.c.event_name == event_name,
                TRIGGERS.c.created_at >= since,
                TRIGGERS.c.created_at <= until,
            )
            .group_by(TRIGGERS.c.event_name)
            .order_by(count.desc(), TRIGGERS.c.event_name)
        )
        return [
            EventLatency(
                event_name=row.event_name,
                count=row.total,
                matched=row.matched,
                first_step_done=row.first_step_done,
                accepted_to_matched=_latency(row, "matched"),
                accepted_to_first_step=_latency(row, "first_step"),
            )
            for row in rows
        ]


def _status_is(status: str, now: datetime) -> ColumnElement[bool]:
    """Triggers whose status as of `now` is `status` (see status_now: a scheduled trigger whose
    time has come is queued)."""
    due = and_(
        TRIGGERS.c.status == TriggerStatus.SCHEDULED,
        TRIGGERS.c.scheduled_for.is_not(None),
        TRIGGERS.c.scheduled_for <= now,
    )
    if status == TriggerStatus.QUEUED:
        return or_(TRIGGERS.c.status == TriggerStatus.QUEUED, due)
    if status == TriggerStatus.SCHEDULED:
        return and_(TRIGGERS.c.status == TriggerStatus.SCHEDULED, not_(due))
    return TRIGGERS.c.status == status


def _timeline(team_id: str, contact_id: str) -> CompoundSelect[Any]:
    """Every entry of the contact's story: its triggers' events, its runs' starts and ends, and
    their deliveries; each with kind, rank, at, key and what it is about."""
    runs = RUNS.join(TRIGGERS, TRIGGERS.c.id == RUNS.c.trigger_id)
    of_runs = (RUNS.c.contact_id == contact_id, TRIGGERS.c.team_id == team_id)

    def entry(kind: str, at: Any, key: Any, **columns: Any) -> list[Any]:
        values = {
            "trigger_id": TRIGGERS.c.id,
            "event_name": TRIGGERS.c.event_name,
            "run_id": null(),
            "workflow_key": null(),
            "step_id": null(),
            "channel": null(),
            "outcome": literal(""),
            "detail": literal(""),
            "scheduled_for": null(),
            **columns,
        }
        types: dict[str, TypeEngine[Any]] = {
            "trigger_id": Uuid(),
            "run_id": Uuid(),
            "scheduled_for": DateTime(timezone=True),
        }
        return [
            literal(kind).label("kind"),
            literal(TimelineKind.RANK[kind]).label("rank"),
            at.label("at"),
            cast(key, Text).label("key"),
            # Typed alike in every part of the union, NULLs included.
            *(cast(value, types.get(name, Text())).label(name) for name, value in values.items()),
        ]

    events = select(
        *entry(
            TimelineKind.EVENT,
            TRIGGERS.c.created_at,
            TRIGGERS.c.id,
            outcome=TRIGGERS.c.status,
            scheduled_for=TRIGGERS.c.scheduled_for,
        )
    ).where(
        TRIGGERS.c.team_id == team_id, TRIGGERS.c.contact_id == contact_id, TRIGGERS.c.created_at.is_not(None)
    )
    run_columns = {"run_id": RUNS.c.run_id, "workflow_key": RUNS.c.workflow_key}
    started = (
        select(
            *entry(
                TimelineKind.RUN_STARTED,
                RUNS.c.started_at,
                RUNS.c.run_id,
                outcome=literal("started"),
                **run_columns,
            )
        )
        .select_from(runs)
        .where(*of_runs, RUNS.c.started_at.is_not(None))
    )
    finished = (
        select(
            *entry(
                TimelineKind.RUN_FINISHED,
                RUNS.c.finished_at,
                RUNS.c.run_id,
                outcome=RUNS.c.status,
                detail=RUNS.c.detail,
                **run_columns,
            )
        )
        .select_from(runs)
        .where(*of_runs, RUNS.c.finished_at.is_not(None))
    )
    delivered = (
        select(
            *entry(
                TimelineKind.DELIVERY,
                DELIVERIES.c.recorded_at,
                DELIVERIES.c.delivery_id,
                step_id=DELIVERIES.c.step_id,
                channel=DELIVERIES.c.channel,
                outcome=case((DELIVERIES.c.sent, literal("sent")), else_=literal("failed")),
                detail=DELIVERIES.c.detail,
                **run_columns,
            )
        )
        .select_from(DELIVERIES.join(runs, RUNS.c.run_id == DELIVERIES.c.run_id))
        .where(*of_runs)
    )
    return union_all(events, started, delivered, finished)


def _milliseconds(interval: Any) -> ColumnElement[float]:
    return cast(extract("epoch", interval) * 1000, Float)


PERCENTILES = (0.5, 0.95, 0.99)


def _latency_columns(name: str, milliseconds: ColumnElement[float]) -> list[Any]:
    return [
        func.avg(milliseconds).label(f"{name}_avg"),
        func.percentile_cont(postgresql.array(PERCENTILES))
        .within_group(milliseconds)
        .label(f"{name}_percentiles"),
        func.max(milliseconds).label(f"{name}_max"),
    ]


def _latency(row: Any, name: str) -> Latency | None:
    average = getattr(row, f"{name}_avg")
    if average is None:
        return None
    p50, p95, p99 = getattr(row, f"{name}_percentiles")
    return Latency(
        avg_ms=float(average),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(getattr(row, f"{name}_max")),
    )


# A trigger's columns, as TriggerState has them.
TRIGGER_COLUMNS = tuple(column.name for column in TRIGGERS.c)
assert set(TRIGGER_COLUMNS) == {field.name for field in fields(TriggerState)}


def _state(row: Any) -> TriggerState:
    """A trigger from its row (every column)."""
    return TriggerState(**{name: getattr(row, name) for name in TRIGGER_COLUMNS})


def _row(state: TriggerState) -> dict[str, Any]:
    """A trigger's row (every column), for insert_many and update_many."""
    return {name: getattr(state, name) for name in TRIGGER_COLUMNS}


# What `save` writes: every column but the key and the team.
SAVED = ", ".join(f"{name} = r.{name}" for name in TRIGGER_COLUMNS if name not in ("id", "team_id"))

# The statements facts run, compiled once (see DriverStatement).
RUN_IDS = bindparam("run_ids", type_=ARRAY(Uuid))
# The triggers of :trigger_ids that exist, locked one by one in the order of the ids (a
# sub-select per id, so through the key's index: `id = ANY(…)` of a whole batch's ids made the
# planner read a table of a few thousand rows from end to end).
LOCK = DriverStatement.of(
    text(
        f"SELECT t.* FROM unnest(CAST(:trigger_ids AS uuid[])) AS k(id) CROSS JOIN LATERAL "
        f"(SELECT * FROM {SCHEMA}.triggers WHERE triggers.id = k.id FOR UPDATE) AS t"
    )
)
# Each run's record (decided_by null) and, a row each, the triggers whose matched decisions
# started it (status and finished_at null).
RUNS_RECORDED = DriverStatement.of(
    union_all(
        select(RUNS.c.run_id, RUNS.c.status, RUNS.c.finished_at, null().label("decided_by")).where(
            RUNS.c.run_id == any_(RUN_IDS)
        ),
        select(DECISIONS.c.run_id, null(), null(), DECISIONS.c.trigger_id).where(
            DECISIONS.c.run_id == any_(RUN_IDS), DECISIONS.c.matched
        ),
    )
)
PROGRESS = DriverStatement.of(select(TRIGGERS).where(TRIGGERS.c.id == bindparam("trigger_id", type_=Uuid)))


# The tables of a trigger's facts, each with its trigger_id.
FACT_TABLES = ("trigger_decisions", "trigger_runs", "trigger_deliveries", "trigger_matches")
# Up to :limit facts of the triggers :ids (a trigger of 10,000 contacts has 10,000 decisions, so a
# round deletes facts by the row, not by the trigger).
DELETE_FACTS = {
    table: text(
        f"DELETE FROM {SCHEMA}.{table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {SCHEMA}.{table} WHERE trigger_id = ANY(:ids) LIMIT :limit))"
    )
    for table in FACT_TABLES
}
# The triggers among :ids that have no fact left.
DELETE_BARE_TRIGGERS = text(
    f"DELETE FROM {SCHEMA}.triggers t WHERE t.id = ANY(:ids) AND "
    + " AND ".join(
        f"NOT EXISTS (SELECT 1 FROM {SCHEMA}.{table} f WHERE f.trigger_id = t.id)" for table in FACT_TABLES
    )
)


class SqlLifecycleRepository:
    """Retention purges and the right to erasure over the triggers and their facts."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Triggers created before `before` (not one whose runs are still under way, nor one
        still scheduled) with their facts: up to `limit` rows of each table."""
        session = self._session
        ids = list(
            (
                await session.execute(
                    select(TRIGGERS.c.id)
                    .where(
                        TRIGGERS.c.team_id == team_id,
                        TRIGGERS.c.created_at < before,
                        TRIGGERS.c.status != TriggerStatus.PROCESSING,
                        ~(
                            (TRIGGERS.c.status == TriggerStatus.SCHEDULED)
                            & (TRIGGERS.c.scheduled_for > func.now())
                        ),
                    )
                    .order_by(TRIGGERS.c.created_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        return await self._delete_triggers(ids, limit)

    async def _delete_triggers(self, ids: list[uuid.UUID], limit: int) -> dict[str, int]:
        counts = {f"tracker.{table}": 0 for table in ("triggers", *FACT_TABLES)}
        if not ids:
            return counts
        for table in FACT_TABLES:
            counts[f"tracker.{table}"] = await changed_rows(
                self._session, DELETE_FACTS[table], {"ids": ids, "limit": limit}
            )
        counts["tracker.triggers"] = await changed_rows(self._session, DELETE_BARE_TRIGGERS, {"ids": ids})
        return counts

    async def erase_contact(self, team_id: str, names: ContactNames) -> dict[str, int]:
        """A trigger about the contact alone goes with all its facts; in a trigger of several
        contacts (a direct workflow trigger) the contact's decisions, runs and deliveries go, and
        the trigger's counters forget them, so that the others' figures stay right."""
        session = self._session
        contact_id = names.contact_id
        own = list(
            (
                await session.execute(
                    select(TRIGGERS.c.id)
                    .where(
                        TRIGGERS.c.team_id == team_id,
                        TRIGGERS.c.contact_id == contact_id,
                        TRIGGERS.c.contacts.is_(None),
                    )
                    .with_for_update()
                )
            ).scalars()
        )
        erased = await self._delete_triggers(own, 2**31 - 1)
        # The contact's decisions and runs in the team's other triggers (a join on the trigger,
        # so that only the contact's rows are read, whatever the team's size).
        of_team = (TRIGGERS.c.team_id == team_id,)
        decisions = (
            await session.execute(
                delete(DECISIONS)
                .where(
                    DECISIONS.c.contact_id == contact_id, DECISIONS.c.trigger_id == TRIGGERS.c.id, *of_team
                )
                .returning(DECISIONS.c.trigger_id, DECISIONS.c.run_id, DECISIONS.c.matched)
            )
        ).all()
        decided_runs = [row.run_id for row in decisions if row.run_id is not None]
        runs = (
            await session.execute(
                delete(RUNS)
                .where(
                    RUNS.c.trigger_id == TRIGGERS.c.id,
                    *of_team,
                    or_(RUNS.c.contact_id == contact_id, RUNS.c.run_id.in_(decided_runs)),
                )
                .returning(RUNS.c.run_id, RUNS.c.status, RUNS.c.finished_at)
            )
        ).all()
        deliveries = 0
        if runs:
            deliveries = await changed_rows(
                session, delete(DELIVERIES).where(DELIVERIES.c.run_id.in_([row.run_id for row in runs]))
            )
        # The counters of the triggers the contact shared: its runs are no longer expected.
        ended = {row.run_id: row for row in runs if row.finished_at is not None}
        counts: dict[uuid.UUID, dict[str, Any]] = {}
        for row in decisions:
            if not row.matched or row.run_id is None:
                continue
            count = counts.setdefault(
                row.trigger_id, {"id": row.trigger_id, "expected": 0, "finished": 0, "failed": 0}
            )
            count["expected"] += 1
            end = ended.get(row.run_id)
            if end is not None:
                count["finished"] += 1
                count["failed"] += end.status == RunStatus.FAILED
        if counts:
            await update_many(
                await driver(session),
                TRIGGERS,
                [
                    {
                        "id": c["id"],
                        "runs_expected": c["expected"],
                        "runs_finished": c["finished"],
                        "runs_failed": c["failed"],
                    }
                    for c in counts.values()
                ],
                "runs_expected = greatest(t.runs_expected - r.runs_expected, 0), "
                "runs_finished = greatest(t.runs_finished - r.runs_finished, 0), "
                "runs_failed = greatest(t.runs_failed - r.runs_failed, 0)",
            )
        shared = await changed_rows(
            session,
            update(TRIGGERS)
            .where(TRIGGERS.c.team_id == team_id, TRIGGERS.c.contact_id == contact_id)
            .values(contact_id=None),
        )
        erased["tracker.trigger_decisions"] += len(decisions)
        erased["tracker.trigger_runs"] += len(runs)
        erased["tracker.trigger_deliveries"] += deliveries
        erased["tracker.triggers"] += shared
        return erased


class QueueLagSampleRow(TrackerBase):
    """The bus's lag over every consumer, sampled every QUEUE_LAG_SAMPLE_SECONDS (tracker.main)."""

    __tablename__ = "queue_lag_samples"

    sampled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    pending: Mapped[int] = mapped_column(BigInteger)
    oldest_age_seconds: Mapped[float] = mapped_column(Float)


QUEUE_LAG_SAMPLES = table_of(QueueLagSampleRow)

# Per bucket (by created_at): the triggers accepted, by status as of :now, and their latency to the
# first step done. Reads the window through ix_triggers_team_created_id.
TIMELINE_TRIGGERS = text(
    """
    SELECT bucket, status_now, count(*) AS total,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY first_step_ms) AS p50_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY first_step_ms) AS p99_ms
      FROM (SELECT floor(extract(epoch FROM created_at - :since) / :step)::int AS bucket,
                   CASE WHEN status = 'scheduled' AND scheduled_for <= :now THEN 'queued'
                        ELSE status END AS status_now,
                   extract(epoch FROM first_step_at - greatest(created_at, scheduled_for)) * 1000
                       AS first_step_ms
              FROM tracker.triggers
             WHERE team_id = :team_id AND created_at >= :since AND created_at < :until) accepted
     GROUP BY GROUPING SETS ((bucket, status_now), (bucket))
    """
)
# Per bucket (by recorded_at): the project's deliveries by channel and outcome. Reads the window
# through ix_trigger_deliveries_recorded, and each delivery's trigger by its key.
TIMELINE_DELIVERIES = text(
    """
    SELECT floor(extract(epoch FROM d.recorded_at - :since) / :step)::int AS bucket,
           d.channel, d.sent, count(*) AS total
      FROM tracker.trigger_deliveries d
      JOIN tracker.triggers t ON t.id = d.trigger_id
     WHERE d.recorded_at >= :since AND d.recorded_at < :until AND t.team_id = :team_id
     GROUP BY 1, 2, 3
    """
)
# Per bucket: the highest queue lag sampled (the whole platform's).
TIMELINE_QUEUE_LAG = text(
    """
    SELECT floor(extract(epoch FROM sampled_at - :since) / :step)::int AS bucket,
           max(pending) AS pending, max(oldest_age_seconds) AS oldest_age_seconds
      FROM tracker.queue_lag_samples
     WHERE sampled_at >= :since AND sampled_at < :until
     GROUP BY 1
    """
)


class SqlStatsRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def fill_timeline(
        self, team_id: str, buckets: Sequence[StatsBucket], step: timedelta, now: datetime
    ) -> None:
        """Fill the buckets (consecutive, `step` long, oldest first) with the project's figures."""
        if not buckets:
            return
        since, until = buckets[0].at, buckets[-1].at + step
        params = {
            "team_id": team_id,
            "since": since,
            "until": until,
            "step": step.total_seconds(),
            "now": now,
        }
        for row in await self._session.execute(TIMELINE_TRIGGERS, params):
            bucket = buckets[row.bucket]
            if row.status_now is None:  # the bucket's grouping set: every status
                bucket.events = row.total
                bucket.p50_ms = None if row.p50_ms is None else round(float(row.p50_ms), 3)
                bucket.p99_ms = None if row.p99_ms is None else round(float(row.p99_ms), 3)
            else:
                bucket.triggers[row.status_now] = row.total
        for row in await self._session.execute(TIMELINE_DELIVERIES, params):
            bucket = buckets[row.bucket]
            bucket.deliveries[(row.channel, "sent" if row.sent else "failed")] = row.total
            if not row.sent:
                bucket.dead_letters += row.total
        for row in await self._session.execute(TIMELINE_QUEUE_LAG, params):
            bucket = buckets[row.bucket]
            bucket.queue_pending, bucket.queue_oldest_age_seconds = (
                int(row.pending),
                float(row.oldest_age_seconds),
            )

    async def add_queue_lag(self, sample: QueueLagSample, keep_after: datetime) -> None:
        """Store the sample and forget those sampled before `keep_after`."""
        await self._session.execute(
            postgresql.insert(QUEUE_LAG_SAMPLES)
            .values(
                sampled_at=sample.sampled_at,
                pending=sample.pending,
                oldest_age_seconds=sample.oldest_age_seconds,
            )
            .on_conflict_do_nothing()
        )
        await self._session.execute(
            delete(QUEUE_LAG_SAMPLES).where(QUEUE_LAG_SAMPLES.c.sampled_at < keep_after)
        )


class TrackerSqlUnitOfWork(SqlUnitOfWork):
    triggers: SqlTriggerRepository
    stats: SqlStatsRepository
    lifecycle: SqlLifecycleRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.triggers = SqlTriggerRepository(session)
        self.stats = SqlStatsRepository(session)
        self.lifecycle = SqlLifecycleRepository(session)
