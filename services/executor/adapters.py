"""The executor's PostgreSQL schema `executor`: runs and their steps, timers and waits, in-app
feeds, dead letters, channel providers and the development capture of SMS and push."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Text,
    Uuid,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.clock import utcnow
from kernel.database import (
    DriverStatement,
    changed_rows,
    delete_some,
    driver,
    insert_many,
    insert_many_returning,
    read_together,
    schema_metadata,
    table_of,
    update_many,
)
from kernel.outbox import delete_naming, outbox_table
from kernel.retention import ContactNames
from kernel.steps import StepSpec
from kernel.unit_of_work import SqlUnitOfWork
from services.executor.domain import (
    DeadLetter,
    DeadLetterQuery,
    DeadLetterStatus,
    FeedItem,
    OutgoingText,
    ProviderSettings,
    Run,
    RunStatus,
    StepState,
    Timer,
    TimerKind,
    new_webhook_secret,
)

SCHEMA = "executor"


class ExecutorBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class RunRow(ExecutorBase):
    __tablename__ = "runs"
    __table_args__ = (
        Index(
            "ix_executor_runs_team_finished",
            "team_id",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        Index("ix_executor_runs_team_contact", "team_id", "contact_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64), index=True)
    trigger_id: Mapped[uuid.UUID] = mapped_column(index=True)
    event_id: Mapped[uuid.UUID]
    workflow_key: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int] = mapped_column(Integer)
    contact_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replays: Mapped[int] = mapped_column(Integer, server_default="0")
    waited_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RunStepRow(ExecutorBase):
    __tablename__ = "run_steps"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TimerRow(ExecutorBase):
    """A run's delay, or its wait for an event (which times out at `due_at`)."""

    __tablename__ = "timers"
    __table_args__ = (
        Index("ix_executor_timers_due_at", "due_at"),
        Index(
            "ix_executor_timers_waits",
            "team_id",
            "event",
            "contact_id",
            postgresql_where=text("kind = 'wait'"),
        ),
        Index(
            "ix_executor_timers_not_caught_up",
            "run_id",
            postgresql_where=text("kind = 'wait' AND NOT caught_up"),
        ),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    contact_id: Mapped[str] = mapped_column(String(64), default="")
    event: Mapped[str] = mapped_column(String(200), default="")
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A wait's look-back over the events that arrived before it existed has run.
    caught_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedItemRow(ExecutorBase):
    __tablename__ = "feed_items"
    __table_args__ = (
        Index("ix_executor_feed_items_contact", "team_id", "external_id", "created_at"),
        Index("ix_executor_feed_items_team_created", "team_id", "created_at"),
        Index("ix_executor_feed_items_team_contact", "team_id", "contact_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[uuid.UUID]
    step_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeadLetterRow(ExecutorBase):
    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_executor_dead_letters_team", "team_id", "failed_at"),
        # The DLQ's size (status dead) and the list filtered by status, newest first.
        Index("ix_executor_dead_letters_team_status", "team_id", "status", "failed_at", "id"),
        Index("ix_executor_dead_letters_run", "run_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[uuid.UUID]
    trigger_id: Mapped[uuid.UUID]
    step_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    replays: Mapped[int] = mapped_column(Integer, default=0)
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChannelProviderRow(ExecutorBase):
    __tablename__ = "channel_providers"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookSecretRow(ExecutorBase):
    __tablename__ = "webhook_secrets"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DevMessageRow(ExecutorBase):
    """An SMS or push notification kept by the development provider."""

    __tablename__ = "dev_messages"
    __table_args__ = (Index("ix_executor_dev_messages_team", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    to: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(ExecutorBase.metadata)
RUNS = table_of(RunRow)
RUN_STEPS = table_of(RunStepRow)
TIMERS = table_of(TimerRow)
FEED_ITEMS = table_of(FeedItemRow)
DEAD_LETTERS = table_of(DeadLetterRow)
CHANNEL_PROVIDERS = table_of(ChannelProviderRow)
WEBHOOK_SECRETS = table_of(WebhookSecretRow)
DEV_MESSAGES = table_of(DevMessageRow)


class SqlRunRepository:
    """Runs and their steps, with plain SQL statements (SQLAlchemy Core): this is the hot path of
    every delivery, and the ORM's unit-of-work bookkeeping is not needed for it."""

    def __init__(self, session: AsyncSession):
        self._session = session
        # What each run (and each of its steps) was when loaded or added; None: steps not stored yet.
        self._loaded: dict[uuid.UUID, tuple[tuple[Any, ...] | None, dict[str, tuple[Any, ...]] | None]] = {}

    async def add(self, runs: Sequence[Run]) -> set[uuid.UUID]:
        """Store the runs that are new, in one statement; the ids of those. Their steps are
        written by `save`, as the run's first moves left them."""
        rows: dict[uuid.UUID, dict[str, Any]] = {}
        for run in runs:
            rows[run.id] = {
                "id": run.id,
                "team_id": run.team_id,
                "trigger_id": run.trigger_id,
                "event_id": run.event_id,
                "workflow_key": run.workflow_key,
                "workflow_version": run.workflow_version,
                "contact_id": run.contact_id,
                "status": run.status,
                "context": run.context,
                "replays": run.replays,
                "waited_until": run.waited_until,
                "created_at": run.created_at or utcnow(),
            }
        inserted = await insert_many_returning(
            await driver(self._session),
            RUNS,
            [rows[run_id] for run_id in sorted(rows)],
            "id",
            on_conflict="ON CONFLICT (id) DO NOTHING",
        )
        new = {run_id for (run_id,) in inserted}
        for run in runs:
            if run.id in new:
                self._loaded[run.id] = (_run_values(run), None)
        return new

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None:
        loaded = await self._load_runs(await RUN_OF_TEAM.rows(self._session, run_id=run_id, team_id=team_id))
        return loaded.get(run_id)

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        return (await self.lock_many([run_id])).get(run_id)

    async def lock_many(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Run]:
        """The runs of `run_ids` that exist, locked in the order of their ids (so two workers
        locking overlapping sets wait for each other rather than deadlock), with their steps:
        both statements in one round trip. The steps are read by a statement of their own, after
        the lock: one statement joining the steps to the locked runs would, after waiting for
        another worker's lock, return the steps as they were before that worker's change
        (PostgreSQL re-reads only the locked rows), and send a step twice."""
        ids = sorted(set(run_ids))
        runs, steps = await read_together(
            self._session,
            [RUNS_LOCKED.bound(run_ids=ids), STEPS_OF_RUNS.bound(run_ids=ids)],
        )
        return self._load(runs, steps)

    async def _load_runs(self, rows: list[Any]) -> dict[uuid.UUID, Run]:
        if not rows:
            return {}
        # Read only once the runs are locked (see lock_many).
        return self._load(rows, await STEPS_OF_RUNS.rows(self._session, run_ids=[row.id for row in rows]))

    def _load(self, rows: list[Any], step_rows: list[Any]) -> dict[uuid.UUID, Run]:
        steps: dict[uuid.UUID, list[Any]] = {row.id: [] for row in rows}
        for step in step_rows:
            if step.run_id in steps:
                steps[step.run_id].append(step)
        return {row.id: self._run(row, steps[row.id]) for row in rows}

    def _run(self, row: Any, steps: list[Any]) -> Run:
        # As loaded, so that `save` writes only what changed.
        self._loaded[row.id] = (_run_values(row), {step.step_id: _step_values(step) for step in steps})
        return Run(
            id=row.id,
            team_id=row.team_id,
            trigger_id=row.trigger_id,
            event_id=row.event_id,
            workflow_key=row.workflow_key,
            workflow_version=row.workflow_version,
            contact_id=row.contact_id,
            context=row.context,
            steps=[
                StepState(
                    spec=StepSpec.from_document(step.definition),
                    position=step.position,
                    status=step.status,
                    attempts=step.attempts,
                    detail=step.detail,
                    finished_at=step.finished_at,
                )
                for step in steps
            ],
            status=row.status,
            created_at=row.created_at,
            finished_at=row.finished_at,
            replays=row.replays,
            waited_until=row.waited_until,
        )

    async def save(self, *runs: Run) -> None:
        """Write the runs' and their steps' changes since they were loaded or added (everything,
        for a run this repository did not load): one statement for the changed runs, one for
        the new steps and one for the changed steps, however many runs there are."""
        changed_runs: list[dict[str, Any]] = []
        new_steps: list[dict[str, Any]] = []
        changed_steps: list[dict[str, Any]] = []
        for run in runs:
            loaded_run, loaded_steps = self._loaded.get(run.id, (None, {}))
            run_values = _run_values(run)
            if run_values != loaded_run:
                changed_runs.append(
                    {
                        "id": run.id,
                        "status": run.status,
                        "finished_at": run.finished_at,
                        "replays": run.replays,
                        "waited_until": run.waited_until,
                    }
                )
            if loaded_steps is None:
                new_steps += [
                    {
                        "run_id": run.id,
                        "step_id": step.spec.id,
                        "position": step.position,
                        "definition": step.spec.document(),
                        "status": step.status,
                        "attempts": step.attempts,
                        "detail": step.detail,
                        "finished_at": step.finished_at,
                    }
                    for step in run.steps
                ]
            else:
                changed_steps += [
                    {
                        "run_id": run.id,
                        "step_id": step.spec.id,
                        "status": step.status,
                        "attempts": step.attempts,
                        "detail": step.detail,
                        "finished_at": step.finished_at,
                    }
                    for step in run.steps
                    if _step_values(step, step.spec.id) != loaded_steps.get(step.spec.id)
                ]
            self._loaded[run.id] = (
                run_values,
                {step.spec.id: _step_values(step, step.spec.id) for step in run.steps},
            )
        if not (changed_runs or new_steps or changed_steps):
            return
        connection = await driver(self._session)
        await update_many(connection, RUNS, changed_runs, RUN_CHANGES)
        await insert_many(connection, RUN_STEPS, new_steps)
        await update_many(connection, RUN_STEPS, changed_steps, STEP_CHANGES, key="run_id", where=SAME_STEP)


def _run_values(run: Any) -> tuple[Any, ...]:
    """What `save` writes of a run (a Run, or a row of the runs table)."""
    return (run.status, run.finished_at, run.replays, run.waited_until)


def _step_values(step: Any, step_id: str | None = None) -> tuple[Any, ...]:
    """What `save` writes of a step (a StepState, or a row of the steps table)."""
    return (step_id or step.step_id, step.status, step.attempts, step.detail, step.finished_at)


# What `save` sets from the rows of update_many (the table is `t`, the row `r`).
RUN_CHANGES = (
    "status = r.status, finished_at = r.finished_at, replays = r.replays, waited_until = r.waited_until"
)
STEP_CHANGES = "status = r.status, attempts = r.attempts, detail = r.detail, finished_at = r.finished_at"
SAME_STEP = "t.step_id = r.step_id"
# The reads of every step a run takes, compiled once (see DriverStatement).
RUNS_LOCKED = DriverStatement.of(
    select(RUNS)
    .where(RUNS.c.id == any_(bindparam("run_ids", type_=ARRAY(Uuid))))
    .order_by(RUNS.c.id)
    .with_for_update()
)
RUN_OF_TEAM = DriverStatement.of(
    select(RUNS).where(
        RUNS.c.id == bindparam("run_id", type_=Uuid), RUNS.c.team_id == bindparam("team_id", type_=String)
    )
)
STEPS_OF_RUNS = DriverStatement.of(
    select(RUN_STEPS)
    .where(RUN_STEPS.c.run_id == any_(bindparam("run_ids", type_=ARRAY(Uuid))))
    .order_by(RUN_STEPS.c.run_id, RUN_STEPS.c.position)
)


class SqlTimerRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, timer: Timer) -> None:
        values = {field: getattr(timer, field) for field in TIMER_FIELDS}
        await self._session.execute(
            insert(TIMERS)
            .values(**values, caught_up=False)
            .on_conflict_do_update(index_elements=["run_id", "step_id"], set_={**values, "caught_up": False})
        )

    async def due(self, now: datetime, limit: int) -> list[Timer]:
        rows = await self._session.execute(
            select(TIMERS)
            .where(TIMERS.c.due_at <= now)
            .order_by(TIMERS.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_timer(row) for row in rows]

    async def waits_for(self, team_id: str, event: str, contact_id: str) -> list[Timer]:
        rows = await self._session.execute(
            select(TIMERS)
            .where(
                TIMERS.c.team_id == team_id,
                TIMERS.c.event == event,
                TIMERS.c.contact_id == contact_id,
                TIMERS.c.kind == TimerKind.WAIT,
            )
            .order_by(TIMERS.c.run_id, TIMERS.c.step_id)
            .with_for_update()
        )
        return [_timer(row) for row in rows]

    async def not_caught_up(self, limit: int, created_before: datetime) -> list[Timer]:
        rows = await self._session.execute(
            select(TIMERS)
            .where(
                TIMERS.c.kind == TimerKind.WAIT,
                TIMERS.c.caught_up.is_(False),
                TIMERS.c.created_at < created_before,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_timer(row) for row in rows]

    async def awaited_events(self, team_id: str) -> frozenset[str]:
        rows = await self._session.execute(
            select(TIMERS.c.event)
            .distinct()
            .where(TIMERS.c.team_id == team_id, TIMERS.c.kind == TimerKind.WAIT)
        )
        return frozenset(rows.scalars())

    async def caught_up(self, timer: Timer) -> None:
        await self._session.execute(
            update(TIMERS)
            .where(TIMERS.c.run_id == timer.run_id, TIMERS.c.step_id == timer.step_id)
            .values(caught_up=True)
        )

    async def delete(self, timer: Timer) -> None:
        await self._session.execute(
            delete(TIMERS).where(TIMERS.c.run_id == timer.run_id, TIMERS.c.step_id == timer.step_id)
        )

    async def of_run(self, run_id: uuid.UUID) -> list[Timer]:
        rows = await self._session.execute(select(TIMERS).where(TIMERS.c.run_id == run_id))
        return [_timer(row) for row in rows]

    async def postpone(self, timer: Timer, until: datetime) -> None:
        await self._session.execute(
            update(TIMERS)
            .where(TIMERS.c.run_id == timer.run_id, TIMERS.c.step_id == timer.step_id)
            .values(due_at=until)
        )


TIMER_FIELDS = ("run_id", "step_id", "team_id", "kind", "due_at", "contact_id", "event", "since")


def _timer(row: Row[Any]) -> Timer:
    return Timer(**{field: getattr(row, field) for field in TIMER_FIELDS})


class SqlFeedRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, item: FeedItem) -> None:
        await self._session.execute(
            insert(FEED_ITEMS).values(**asdict(item)).on_conflict_do_nothing(index_elements=["id"])
        )

    async def newest(self, team_id: str, external_id: str, limit: int, unread_only: bool) -> list[FeedItem]:
        query = select(FEED_ITEMS).where(
            FEED_ITEMS.c.team_id == team_id, FEED_ITEMS.c.external_id == external_id
        )
        if unread_only:
            query = query.where(FEED_ITEMS.c.read_at.is_(None))
        rows = await self._session.execute(query.order_by(FEED_ITEMS.c.created_at.desc()).limit(limit))
        return [FeedItem(**row._mapping) for row in rows]

    async def mark_read(self, team_id: str, external_id: str, ids: list[uuid.UUID], at: datetime) -> int:
        statement = update(FEED_ITEMS).where(
            FEED_ITEMS.c.team_id == team_id,
            FEED_ITEMS.c.external_id == external_id,
            FEED_ITEMS.c.read_at.is_(None),
        )
        if ids:
            statement = statement.where(FEED_ITEMS.c.id.in_(ids))
        result = await self._session.execute(statement.values(read_at=at))
        return int(getattr(result, "rowcount", 0) or 0)


class SqlDeadLetterRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, letter: DeadLetter) -> None:
        values = asdict(letter)
        again = {name: values[name] for name in ("error", "attempts", "failed_at", "status")}
        await self._session.execute(
            insert(DEAD_LETTERS).values(**values).on_conflict_do_update(index_elements=["id"], set_=again)
        )

    async def newest(self, team_id: str, query: DeadLetterQuery) -> list[DeadLetter]:
        conditions: list[ColumnElement[bool]] = [DEAD_LETTERS.c.team_id == team_id]
        if query.status:
            conditions.append(DEAD_LETTERS.c.status == query.status)
        if query.channel:
            conditions.append(DEAD_LETTERS.c.channel == query.channel)
        if query.after is not None:
            at, letter_id = query.after
            conditions.append(tuple_(DEAD_LETTERS.c.failed_at, DEAD_LETTERS.c.id) < tuple_(at, letter_id))
        rows = await self._session.execute(
            select(DEAD_LETTERS)
            .where(*conditions)
            .order_by(DEAD_LETTERS.c.failed_at.desc(), DEAD_LETTERS.c.id.desc())
            .limit(query.limit)
        )
        return [DeadLetter(**row._mapping) for row in rows]

    async def count_dead(self, team_id: str) -> int:
        found = await self._session.scalar(
            select(func.count())
            .select_from(DEAD_LETTERS)
            .where(DEAD_LETTERS.c.team_id == team_id, DEAD_LETTERS.c.status == DeadLetterStatus.DEAD)
        )
        return int(found or 0)

    async def get(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None:
        return await self._one(team_id, letter_id, lock=False)

    async def lock(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None:
        return await self._one(team_id, letter_id, lock=True)

    async def _one(self, team_id: str, letter_id: uuid.UUID, *, lock: bool) -> DeadLetter | None:
        query = select(DEAD_LETTERS).where(DEAD_LETTERS.c.id == letter_id, DEAD_LETTERS.c.team_id == team_id)
        row = (await self._session.execute(query.with_for_update() if lock else query)).first()
        return DeadLetter(**row._mapping) if row else None

    async def save(self, letter: DeadLetter) -> None:
        await self._session.execute(
            update(DEAD_LETTERS)
            .where(DEAD_LETTERS.c.id == letter.id)
            .values(status=letter.status, replays=letter.replays, replayed_at=letter.replayed_at)
        )


class SqlChannelRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def provider(self, team_id: str, channel: str) -> ProviderSettings | None:
        row = (
            await self._session.execute(
                select(CHANNEL_PROVIDERS).where(
                    CHANNEL_PROVIDERS.c.team_id == team_id, CHANNEL_PROVIDERS.c.channel == channel
                )
            )
        ).first()
        return ProviderSettings(**row._mapping) if row else None

    async def put_provider(self, settings: ProviderSettings) -> ProviderSettings:
        values = {"url": settings.url, "headers": settings.headers, "updated_at": func.now()}
        row = (
            await self._session.execute(
                insert(CHANNEL_PROVIDERS)
                .values(team_id=settings.team_id, channel=settings.channel, **values)
                .on_conflict_do_update(index_elements=["team_id", "channel"], set_=values)
                .returning(*CHANNEL_PROVIDERS.c)
            )
        ).one()
        return ProviderSettings(**row._mapping)

    async def webhook_secret(self, team_id: str) -> str:
        await self._session.execute(
            insert(WEBHOOK_SECRETS)
            .values(team_id=team_id, secret=new_webhook_secret())
            .on_conflict_do_nothing(index_elements=["team_id"])
        )
        secret = await self._session.scalar(
            select(WEBHOOK_SECRETS.c.secret).where(WEBHOOK_SECRETS.c.team_id == team_id)
        )
        assert secret is not None
        return str(secret)

    async def set_webhook_secret(self, team_id: str, secret: str) -> None:
        values = {"secret": secret, "updated_at": func.now()}
        await self._session.execute(
            insert(WEBHOOK_SECRETS)
            .values(team_id=team_id, **values)
            .on_conflict_do_update(index_elements=["team_id"], set_=values)
        )


class SqlDevMessageRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, message: OutgoingText, at: datetime) -> None:
        await self._session.execute(
            insert(DEV_MESSAGES)
            .values(
                id=message.idempotency_key,
                team_id=message.project_id,
                channel=message.channel,
                to=message.to,
                title=message.title,
                body=message.body,
                url=message.url,
                created_at=at,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )

    async def newest(self, team_id: str, channel: str, limit: int) -> list[tuple[OutgoingText, datetime]]:
        query = select(DEV_MESSAGES).where(DEV_MESSAGES.c.team_id == team_id)
        if channel:
            query = query.where(DEV_MESSAGES.c.channel == channel)
        rows = await self._session.execute(query.order_by(DEV_MESSAGES.c.created_at.desc()).limit(limit))
        return [
            (
                OutgoingText(
                    channel=row.channel,
                    project_id=row.team_id,
                    to=row.to,
                    body=row.body,
                    idempotency_key=row.id,
                    title=row.title,
                    url=row.url,
                ),
                row.created_at,
            )
            for row in rows
        ]


class SqlLifecycleRepository:
    """Retention purges and the right to erasure, over every table of the schema."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Up to `limit` rows of each kind older than `before`: runs that finished before it (never
        one still running or waiting) with their steps and timers, dead letters, feed items and
        development messages."""
        session = self._session
        old_runs = (
            (
                await session.execute(
                    select(RUNS.c.id)
                    .where(
                        RUNS.c.team_id == team_id,
                        RUNS.c.finished_at < before,
                        RUNS.c.status != RunStatus.RUNNING,
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            .scalars()
            .all()
        )
        purged = await self._delete_runs(list(old_runs))
        purged["executor.dead_letters"] = await delete_some(
            session,
            DEAD_LETTERS,
            [DEAD_LETTERS.c.id],
            DEAD_LETTERS.c.team_id == team_id,
            DEAD_LETTERS.c.failed_at < before,
            limit=limit,
        )
        purged["executor.feed_items"] = await delete_some(
            session,
            FEED_ITEMS,
            [FEED_ITEMS.c.id],
            FEED_ITEMS.c.team_id == team_id,
            FEED_ITEMS.c.created_at < before,
            limit=limit,
        )
        purged["executor.dev_messages"] = await delete_some(
            session,
            DEV_MESSAGES,
            [DEV_MESSAGES.c.id],
            DEV_MESSAGES.c.team_id == team_id,
            DEV_MESSAGES.c.created_at < before,
            limit=limit,
        )
        return purged

    async def _delete_runs(self, run_ids: list[uuid.UUID]) -> dict[str, int]:
        """Delete runs with their steps and timers (counted, rather than left to the cascade)."""
        counts = {"executor.runs": 0, "executor.run_steps": 0, "executor.timers": 0}
        if not run_ids:
            return counts
        session = self._session
        counts["executor.run_steps"] = await changed_rows(
            session, delete(RUN_STEPS).where(RUN_STEPS.c.run_id.in_(run_ids))
        )
        counts["executor.timers"] = await changed_rows(
            session, delete(TIMERS).where(TIMERS.c.run_id.in_(run_ids))
        )
        counts["executor.runs"] = await changed_rows(session, delete(RUNS).where(RUNS.c.id.in_(run_ids)))
        return counts

    async def erase_contact(self, team_id: str, names: ContactNames) -> dict[str, int]:
        """Delete every row about the contact: its runs (running ones too: there is no one left
        to send to) with their steps (rendered details), timers and dead letters, its feed,
        the development messages sent to it and the outbox rows naming it."""
        session = self._session
        run_ids = list(
            (
                await session.execute(
                    select(RUNS.c.id)
                    .where(RUNS.c.team_id == team_id, RUNS.c.contact_id == names.contact_id)
                    .with_for_update()
                )
            ).scalars()
        )
        erased = {"executor.dead_letters": 0}
        if run_ids:
            erased["executor.dead_letters"] = await changed_rows(
                session,
                delete(DEAD_LETTERS).where(
                    DEAD_LETTERS.c.team_id == team_id, DEAD_LETTERS.c.run_id.in_(run_ids)
                ),
            )
        erased.update(await self._delete_runs(run_ids))
        feed_of = FEED_ITEMS.c.contact_id == names.contact_id
        if names.external_id:
            feed_of = or_(feed_of, FEED_ITEMS.c.external_id == names.external_id)
        erased["executor.feed_items"] = await changed_rows(
            session, delete(FEED_ITEMS).where(FEED_ITEMS.c.team_id == team_id, feed_of)
        )
        erased["executor.dev_messages"] = await changed_rows(
            session,
            delete(DEV_MESSAGES).where(
                DEV_MESSAGES.c.team_id == team_id, DEV_MESSAGES.c.to.in_(names.identifiers)
            ),
        )
        erased["executor.outbox"] = await delete_naming(session, OUTBOX, team_id, names.identifiers)
        return erased


class ExecutorSqlUnitOfWork(SqlUnitOfWork):
    runs: SqlRunRepository
    timers: SqlTimerRepository
    feed: SqlFeedRepository
    dead_letters: SqlDeadLetterRepository
    channels: SqlChannelRepository
    dev_messages: SqlDevMessageRepository
    lifecycle: SqlLifecycleRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.runs = SqlRunRepository(session)
        self.timers = SqlTimerRepository(session)
        self.feed = SqlFeedRepository(session)
        self.dead_letters = SqlDeadLetterRepository(session)
        self.channels = SqlChannelRepository(session)
        self.dev_messages = SqlDevMessageRepository(session)
        self.lifecycle = SqlLifecycleRepository(session)
