"""The tracker's PostgreSQL schema `tracker`: triggers and the facts reported about them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, case, distinct, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from herald.bus.v1 import tracking_pb2
from kernel.clock import from_timestamp
from kernel.database import schema_metadata
from kernel.unit_of_work import SqlUnitOfWork
from services.tracker.domain import Progress, Summary, TriggerState, TriggerStatus, TriggerView

SCHEMA = "tracker"


class TrackerBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class TriggerRow(TrackerBase):
    __tablename__ = "triggers"
    __table_args__ = (Index("ix_triggers_team_created", "team_id", "created_at"),)

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


class DecisionRow(TrackerBase):
    __tablename__ = "trigger_decisions"

    trigger_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workflow_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_version: Mapped[int] = mapped_column(Integer)
    matched: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[uuid.UUID | None]


class RunRow(TrackerBase):
    __tablename__ = "trigger_runs"

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

    delivery_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    trigger_id: Mapped[uuid.UUID] = mapped_column(index=True)
    run_id: Mapped[uuid.UUID]
    step_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    sent: Mapped[bool]
    attempts: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


RUN_FINISHED = ("completed", "failed")


class SqlTriggerRepository:
    """Each `record_*` applies one fact at most once: a repeated fact inserts nothing."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def lock(self, trigger_id: uuid.UUID, team_id: str) -> TriggerState:
        await self._session.execute(
            insert(TriggerRow)
            .values(id=trigger_id, team_id=team_id, status=TriggerStatus.QUEUED)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = (
            await self._session.scalars(
                select(TriggerRow).where(TriggerRow.id == trigger_id).with_for_update()
            )
        ).one()
        return TriggerState(
            row.id,
            row.team_id,
            row.status,
            row.created_at,
            row.scheduled_for,
            row.started_at,
            row.completed_at,
        )

    async def save(self, state: TriggerState) -> None:
        row = await self._session.get(TriggerRow, state.id)
        assert row is not None
        row.status, row.started_at, row.completed_at = state.status, state.started_at, state.completed_at

    async def record_accepted(self, trigger_id: uuid.UUID, fact: tracking_pb2.TriggerAccepted) -> None:
        row = await self._session.get(TriggerRow, trigger_id)
        assert row is not None
        row.event_id = uuid.UUID(fact.event_id)
        row.event_name = fact.event_name
        row.contact_id = fact.contact_id or None
        row.created_at = from_timestamp(fact.created_at)
        if fact.HasField("scheduled_for"):
            row.scheduled_for = from_timestamp(fact.scheduled_for)

    async def record_matched(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.EventMatched, at: datetime
    ) -> None:
        row = await self._session.get(TriggerRow, trigger_id)
        assert row is not None
        if row.matched_at is not None:
            return
        row.matched_at = at
        if fact.decisions:
            await self._session.execute(
                insert(DecisionRow).on_conflict_do_nothing(),
                [
                    {
                        "trigger_id": trigger_id,
                        "workflow_key": decision.workflow_key,
                        "contact_id": decision.contact_id,
                        "workflow_version": decision.workflow_version,
                        "matched": decision.outcome == tracking_pb2.MATCH_OUTCOME_MATCHED,
                        "reason": decision.reason,
                        "run_id": uuid.UUID(decision.run_id) if decision.run_id else None,
                    }
                    for decision in fact.decisions
                ],
            )

    async def record_run_started(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.RunStarted, at: datetime
    ) -> None:
        await self._session.execute(
            insert(RunRow)
            .values(
                run_id=uuid.UUID(fact.run_id),
                trigger_id=trigger_id,
                workflow_key=fact.workflow_key,
                contact_id=fact.contact_id,
                status="running",
                started_at=at,
            )
            .on_conflict_do_update(
                index_elements=["run_id"],
                set_={
                    "workflow_key": fact.workflow_key,
                    "contact_id": fact.contact_id,
                    "started_at": at,
                },
            )
        )

    async def record_run_finished(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.RunFinished, at: datetime
    ) -> None:
        status = "completed" if fact.outcome == tracking_pb2.RUN_OUTCOME_COMPLETED else "failed"
        await self._session.execute(
            insert(RunRow)
            .values(
                run_id=uuid.UUID(fact.run_id),
                trigger_id=trigger_id,
                status=status,
                detail=fact.detail,
                finished_at=at,
            )
            .on_conflict_do_update(
                index_elements=["run_id"],
                set_={
                    "status": status,
                    "detail": fact.detail,
                    "finished_at": at,
                },
            )
        )

    async def record_delivery(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.DeliveryRecorded, at: datetime
    ) -> None:
        await self._session.execute(
            insert(DeliveryRow)
            .values(
                delivery_id=uuid.UUID(fact.delivery_id),
                trigger_id=trigger_id,
                run_id=uuid.UUID(fact.run_id),
                step_id=fact.step_id,
                channel=fact.channel,
                sent=fact.outcome == tracking_pb2.DELIVERY_OUTCOME_SENT,
                attempts=fact.attempts,
                detail=fact.detail,
                recorded_at=at,
            )
            .on_conflict_do_nothing(index_elements=["delivery_id"])
        )

    async def progress(self, trigger_id: uuid.UUID) -> Progress:
        matched_at = await self._session.scalar(
            select(TriggerRow.matched_at).where(TriggerRow.id == trigger_id)
        )
        counts = (
            await self._session.execute(
                select(
                    func.count(DecisionRow.run_id),
                    func.count(RunRow.run_id).filter(RunRow.status.in_(RUN_FINISHED)),
                    func.count(RunRow.run_id).filter(RunRow.status == "failed"),
                    func.max(RunRow.finished_at),
                )
                .select_from(DecisionRow)
                .outerjoin(RunRow, RunRow.run_id == DecisionRow.run_id)
                .where(DecisionRow.trigger_id == trigger_id, DecisionRow.matched)
            )
        ).one()
        return Progress(
            matched=matched_at is not None,
            expected_runs=counts[0],
            finished_runs=counts[1],
            failed_runs=counts[2],
            matched_at=matched_at,
            last_finished_at=counts[3],
        )

    async def view(self, team_id: str, trigger_id: uuid.UUID) -> TriggerView | None:
        row = (
            await self._session.scalars(
                select(TriggerRow).where(TriggerRow.id == trigger_id, TriggerRow.team_id == team_id)
            )
        ).first()
        if row is None or row.created_at is None:
            return None
        decisions = (
            await self._session.execute(
                select(
                    func.count(distinct(case((DecisionRow.matched, DecisionRow.contact_id)))),
                    func.count().filter(~DecisionRow.matched),
                ).where(DecisionRow.trigger_id == trigger_id)
            )
        ).one()
        deliveries = (
            await self._session.execute(
                select(func.count().filter(DeliveryRow.sent), func.count().filter(~DeliveryRow.sent)).where(
                    DeliveryRow.trigger_id == trigger_id
                )
            )
        ).one()
        summary = Summary(
            total_contacts=decisions[0], sent=deliveries[0], failed=deliveries[1], filtered=decisions[1]
        )
        return TriggerView(row.id, row.status, row.created_at, row.started_at, row.completed_at, summary)


class TrackerSqlUnitOfWork(SqlUnitOfWork):
    triggers: SqlTriggerRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.triggers = SqlTriggerRepository(session)
