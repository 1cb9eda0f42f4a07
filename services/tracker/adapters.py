"""The tracker's PostgreSQL schema `tracker`: triggers and the facts reported about them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    any_,
    bindparam,
    case,
    distinct,
    func,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from herald.bus.v1 import tracking_pb2
from kernel.clock import from_timestamp
from kernel.database import (
    DriverStatement,
    driver,
    insert_many,
    insert_many_returning,
    schema_metadata,
    table_of,
)
from kernel.unit_of_work import SqlUnitOfWork
from services.tracker.domain import Outcome, Progress, Summary, TriggerState, TriggerStatus, TriggerView

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
    __table_args__ = (Index("ix_trigger_decisions_run_id", "run_id"),)

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


TRIGGERS = table_of(TriggerRow)
MATCHES = table_of(MatchRow)
DECISIONS = table_of(DecisionRow)
RUNS = table_of(RunRow)
DELIVERIES = table_of(DeliveryRow)


class SqlTriggerRepository:
    """Each `record_*` applies one fact at most once: a repeated fact inserts nothing.

    Plain SQL statements (SQLAlchemy Core): every event brings several facts, so this is the
    busiest write path of the tracker, and the ORM's bookkeeping is not needed for it.
    """

    def __init__(self, session: AsyncSession):
        self._session = session
        # The progress of each trigger this transaction locked, as its last statement left it:
        # every statement that moves a trigger's counters returns them.
        self._progress: dict[uuid.UUID, Progress] = {}

    def _note(self, trigger_id: uuid.UUID, rows: list[Any]) -> list[Any]:
        """Remember the progress the statement's rows show (none: the statement changed nothing)."""
        if rows:
            self._progress[trigger_id] = _progress(rows[-1])
        return rows

    async def lock(self, trigger_id: uuid.UUID, team_id: str) -> TriggerState:
        rows = await LOCK.rows(self._session, trigger_id=trigger_id)
        if not rows:  # the trigger's first fact (or one racing it)
            await CREATE.execute(self._session, trigger_id=trigger_id, team_id=team_id)
            rows = await LOCK.rows(self._session, trigger_id=trigger_id)
        [row] = self._note(trigger_id, rows)
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
        await SAVE.execute(
            self._session,
            trigger_id=state.id,
            status=state.status,
            started_at=state.started_at,
            completed_at=state.completed_at,
        )

    async def record_accepted(self, trigger_id: uuid.UUID, fact: tracking_pb2.TriggerAccepted) -> None:
        self._note(
            trigger_id,
            await ACCEPTED.rows(
                self._session,
                trigger_id=trigger_id,
                event_id=uuid.UUID(fact.event_id),
                event_name=fact.event_name,
                contact_id=fact.contact_id or None,
                created_at=from_timestamp(fact.created_at),
                scheduled_for=from_timestamp(fact.scheduled_for) if fact.HasField("scheduled_for") else None,
                expected_events=fact.events if fact.events > 1 else None,
                contacts=fact.contacts if fact.contacts > 0 else None,
            ),
        )

    async def record_matched(
        self, trigger_id: uuid.UUID, facts: Sequence[tuple[tracking_pb2.EventMatched, datetime]]
    ) -> None:
        """Each event's decisions, stored the first time the event is reported decided."""
        decided: list[tracking_pb2.EventMatched] = []
        several = [(fact, at) for fact, at in facts if fact.trigger_events > 1]
        for fact, at in facts:
            if fact.trigger_events <= 1 and self._note(
                trigger_id, await MATCHED.rows(self._session, trigger_id=trigger_id, at=at)
            ):
                decided.append(fact)
        if several:
            # Events of a trigger of several: each is decided once; the trigger is matched when all are.
            new = {
                event_id
                for (event_id,) in await insert_many_returning(
                    await driver(self._session),
                    MATCHES,
                    [{"trigger_id": trigger_id, "event_id": uuid.UUID(fact.event_id)} for fact, _ in several],
                    "event_id",
                    on_conflict="ON CONFLICT DO NOTHING",
                )
            }
            firsts = []
            for fact, at in several:
                event_id = uuid.UUID(fact.event_id)
                if event_id in new:
                    new.discard(event_id)  # the same event twice in this batch counts once
                    firsts.append((fact, at))
            if firsts:
                await self._counted(
                    MATCHED_SOME_OF_SEVERAL,
                    trigger_id,
                    at=min(at for _, at in firsts),
                    expected_events=firsts[-1][0].trigger_events,
                    count=len(firsts),
                )
                decided += [fact for fact, _ in firsts]
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
            for fact in decided
            for decision in fact.decisions
        ]
        if not rows:
            return
        inserted = await insert_many_returning(
            await driver(self._session),
            DECISIONS,
            rows,
            "run_id, matched",
            on_conflict="ON CONFLICT DO NOTHING",
        )
        new_runs = [run_id for run_id, matched in inserted if matched and run_id is not None]
        if not new_runs:
            return
        # Runs whose end was reported before their decision count as finished now.
        [ended] = await ENDED.rows(self._session, run_ids=new_runs)
        await self._counted(
            COUNT_RUNS,
            trigger_id,
            expected=len(new_runs),
            finished=ended.finished,
            failed=ended.failed,
            last_finished_at=ended.last,
        )

    async def record_runs_started(
        self, trigger_id: uuid.UUID, facts: Sequence[tuple[tracking_pb2.RunStarted, datetime]]
    ) -> None:
        rows = {
            fact.run_id: {
                "run_id": uuid.UUID(fact.run_id),
                "trigger_id": trigger_id,
                "workflow_key": fact.workflow_key,
                "contact_id": fact.contact_id,
                "status": "running",
                "detail": "",
                "started_at": at,
            }
            for fact, at in facts
        }
        await insert_many(
            await driver(self._session),
            RUNS,
            list(rows.values()),
            on_conflict="ON CONFLICT (run_id) DO UPDATE SET workflow_key = EXCLUDED.workflow_key, "
            "contact_id = EXCLUDED.contact_id, started_at = EXCLUDED.started_at",
        )

    async def record_runs_finished(
        self, trigger_id: uuid.UUID, facts: Sequence[tuple[tracking_pb2.RunFinished, datetime]]
    ) -> None:
        """Record the runs' ends; the trigger's counters move for each run that newly finished
        (or, after a replay, finished the other way) and whose decision is known (the others are
        counted when their decision arrives). Of several ends of one run in a batch, the last counts."""
        ends = {uuid.UUID(fact.run_id): (fact, at) for fact, at in facts}
        before = {row.run_id: row for row in await RUN_ENDS.rows(self._session, run_ids=list(ends))}
        rows, moves = [], {}
        for run_id, (fact, at) in ends.items():
            status = "completed" if fact.outcome == tracking_pb2.RUN_OUTCOME_COMPLETED else "failed"
            known = before.get(run_id)
            was_finished = known is not None and known.finished_at is not None
            if was_finished and known is not None and known.status == status:
                continue  # the same end again
            rows.append(
                {"run_id": run_id, "trigger_id": trigger_id, "status": status, "detail": fact.detail,
                 "finished_at": at}
            )  # fmt: skip
            was_failed = was_finished and known is not None and known.status == "failed"
            moves[run_id] = (0 if was_finished else 1, (status == "failed") - was_failed, at)
        if not rows:
            return
        await insert_many(
            await driver(self._session),
            RUNS,
            rows,
            on_conflict="ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status, "
            "detail = EXCLUDED.detail, finished_at = EXCLUDED.finished_at",
        )
        decided = {
            row.run_id
            for row in await RUNS_DECIDED.rows(self._session, run_ids=list(moves), trigger_id=trigger_id)
        }
        counted = [move for run_id, move in moves.items() if run_id in decided]
        if counted:
            await self._counted(
                COUNT_RUNS,
                trigger_id,
                expected=0,
                finished=sum(finished for finished, _, _ in counted),
                failed=sum(failed for _, failed, _ in counted),
                last_finished_at=max(at for _, _, at in counted),
            )

    async def record_deliveries(
        self, trigger_id: uuid.UUID, facts: Sequence[tuple[tracking_pb2.DeliveryRecorded, datetime]]
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
                for fact, at in facts
            ],
            on_conflict="ON CONFLICT (delivery_id) DO NOTHING",
        )

    async def _counted(self, statement: DriverStatement, trigger_id: uuid.UUID, **parameters: Any) -> None:
        """Run a statement that moves the trigger's counters (returning them)."""
        self._note(trigger_id, await statement.rows(self._session, trigger_id=trigger_id, **parameters))

    async def progress(self, trigger_id: uuid.UUID) -> Progress:
        known = self._progress.get(trigger_id)
        if known is not None:  # locked by this transaction: what its statements returned
            return known
        rows = await PROGRESS.rows(self._session, trigger_id=trigger_id)
        if not rows:  # no fact about the trigger yet
            return Progress(matched=False, expected_runs=0, finished_runs=0, failed_runs=0)
        return _progress(rows[0])

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
            row.status,
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


def _progress(row: Any) -> Progress:
    """A trigger's progress from a row with its PROGRESS_COLUMNS."""
    return Progress(
        matched=row.matched_at is not None,
        expected_runs=row.runs_expected,
        finished_runs=row.runs_finished,
        failed_runs=row.runs_failed,
        matched_at=row.matched_at,
        last_finished_at=row.last_finished_at,
        undecided_events=max(row.expected_events - row.events_matched, 0) if row.expected_events else 0,
    )


# The statements facts run, compiled once (see DriverStatement).
def _param(name: str, type_: Any) -> Any:
    return bindparam(name, type_=type_)


TRIGGER_ID = _param("trigger_id", Uuid)
# What a trigger's progress is made of (see _progress).
PROGRESS_COLUMNS = (
    TRIGGERS.c.matched_at,
    TRIGGERS.c.expected_events,
    TRIGGERS.c.events_matched,
    TRIGGERS.c.runs_expected,
    TRIGGERS.c.runs_finished,
    TRIGGERS.c.runs_failed,
    TRIGGERS.c.last_finished_at,
)
RUN_ID = _param("run_id", Uuid)
AT = _param("at", DateTime(timezone=True))

LOCK = DriverStatement.of(select(TRIGGERS).where(TRIGGERS.c.id == TRIGGER_ID).with_for_update())
CREATE = DriverStatement.of(
    insert(TRIGGERS)
    .values(id=TRIGGER_ID, team_id=_param("team_id", String), status=TriggerStatus.QUEUED)
    .on_conflict_do_nothing(index_elements=["id"])
)
SAVE = DriverStatement.of(
    update(TRIGGERS)
    .where(TRIGGERS.c.id == TRIGGER_ID)
    .values(
        status=_param("status", String),
        started_at=_param("started_at", DateTime(timezone=True)),
        completed_at=_param("completed_at", DateTime(timezone=True)),
    )
)
ACCEPTED = DriverStatement.of(
    update(TRIGGERS)
    .where(TRIGGERS.c.id == TRIGGER_ID)
    .values(
        event_id=_param("event_id", Uuid),
        event_name=_param("event_name", String),
        contact_id=_param("contact_id", String),
        created_at=_param("created_at", DateTime(timezone=True)),
        scheduled_for=_param("scheduled_for", DateTime(timezone=True)),
        # Only a trigger of several events says how many; only a direct trigger, how many contacts.
        expected_events=func.coalesce(_param("expected_events", Integer), TRIGGERS.c.expected_events),
        contacts=func.coalesce(_param("contacts", Integer), TRIGGERS.c.contacts),
    )
    .returning(*PROGRESS_COLUMNS)
)
MATCHED = DriverStatement.of(
    update(TRIGGERS)
    .where(TRIGGERS.c.id == TRIGGER_ID, TRIGGERS.c.matched_at.is_(None))
    .values(matched_at=AT)
    .returning(*PROGRESS_COLUMNS)
)
MATCHED_SOME_OF_SEVERAL = DriverStatement.of(
    update(TRIGGERS)
    .where(TRIGGERS.c.id == TRIGGER_ID)
    .values(
        matched_at=func.coalesce(TRIGGERS.c.matched_at, AT),
        expected_events=_param("expected_events", Integer),
        events_matched=TRIGGERS.c.events_matched + _param("count", Integer),
    )
    .returning(*PROGRESS_COLUMNS)
)
ENDED = DriverStatement.of(
    select(
        func.count().filter(RUNS.c.finished_at.is_not(None)).label("finished"),
        func.count().filter(RUNS.c.status == "failed").label("failed"),
        func.max(RUNS.c.finished_at).label("last"),
    ).where(RUNS.c.run_id == any_(_param("run_ids", ARRAY(Uuid))))
)
COUNT_RUNS = DriverStatement.of(
    update(TRIGGERS)
    .where(TRIGGERS.c.id == TRIGGER_ID)
    .values(
        runs_expected=TRIGGERS.c.runs_expected + _param("expected", Integer),
        runs_finished=TRIGGERS.c.runs_finished + _param("finished", Integer),
        runs_failed=TRIGGERS.c.runs_failed + _param("failed", Integer),
        last_finished_at=func.greatest(
            TRIGGERS.c.last_finished_at, _param("last_finished_at", DateTime(timezone=True))
        ),
    )
    .returning(*PROGRESS_COLUMNS)
)
RUN_IDS = _param("run_ids", ARRAY(Uuid))
RUN_ENDS = DriverStatement.of(
    select(RUNS.c.run_id, RUNS.c.status, RUNS.c.finished_at).where(RUNS.c.run_id == any_(RUN_IDS))
)
RUNS_DECIDED = DriverStatement.of(
    select(DECISIONS.c.run_id).where(
        DECISIONS.c.run_id == any_(RUN_IDS), DECISIONS.c.trigger_id == TRIGGER_ID, DECISIONS.c.matched
    )
)
PROGRESS = DriverStatement.of(select(*PROGRESS_COLUMNS).where(TRIGGERS.c.id == TRIGGER_ID))


class TrackerSqlUnitOfWork(SqlUnitOfWork):
    triggers: SqlTriggerRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.triggers = SqlTriggerRepository(session)
