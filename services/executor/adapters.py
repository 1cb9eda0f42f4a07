"""The executor's PostgreSQL schema `executor` (runs and their steps) and its SMTP sender."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.database import schema_metadata, table_of
from kernel.outbox import outbox_table
from kernel.unit_of_work import SqlUnitOfWork
from services.executor.domain import DeliveryError, OutgoingEmail, Run, StepSpec, StepState

SCHEMA = "executor"


class ExecutorBase(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class RunRow(ExecutorBase):
    __tablename__ = "runs"

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


OUTBOX = outbox_table(ExecutorBase.metadata)
RUNS = table_of(RunRow)
RUN_STEPS = table_of(RunStepRow)


def _step_definition(spec: StepSpec) -> dict[str, Any]:
    return {"id": spec.id, "type": spec.type, "subject": spec.subject, "body": spec.body, "html": spec.html}


class SqlRunRepository:
    """Runs and their steps, with plain SQL statements (SQLAlchemy Core): this is the hot path of
    every delivery, and the ORM's unit-of-work bookkeeping is not needed for it."""

    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, run: Run) -> bool:
        values: dict[str, Any] = {
            "id": run.id,
            "team_id": run.team_id,
            "trigger_id": run.trigger_id,
            "event_id": run.event_id,
            "workflow_key": run.workflow_key,
            "workflow_version": run.workflow_version,
            "contact_id": run.contact_id,
            "status": run.status,
            "context": run.context,
        }
        if run.created_at:
            values["created_at"] = run.created_at
        inserted = (
            await self._session.execute(
                insert(RUNS)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(RUNS.c.id)
            )
        ).first()
        if inserted is None:
            return False
        await self._session.execute(
            insert(RUN_STEPS),
            [
                {
                    "run_id": run.id,
                    "step_id": step.spec.id,
                    "position": step.position,
                    "definition": _step_definition(step.spec),
                    "status": step.status,
                    "attempts": 0,
                    "detail": "",
                }
                for step in run.steps
            ],
        )
        return True

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None:
        return await self._load(select(RUNS).where(RUNS.c.id == run_id, RUNS.c.team_id == team_id))

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        return await self._load(select(RUNS).where(RUNS.c.id == run_id).with_for_update())

    async def _load(self, query: Select[Any]) -> Run | None:
        row = (await self._session.execute(query)).first()
        if row is None:
            return None
        steps = await self._session.execute(
            select(RUN_STEPS).where(RUN_STEPS.c.run_id == row.id).order_by(RUN_STEPS.c.position)
        )
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
                    spec=StepSpec(**step.definition),
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
        )

    async def save(self, run: Run) -> None:
        await self._session.execute(
            update(RUNS).where(RUNS.c.id == run.id).values(status=run.status, finished_at=run.finished_at)
        )
        await self._session.execute(
            update(RUN_STEPS)
            .where(RUN_STEPS.c.run_id == bindparam("b_run_id"), RUN_STEPS.c.step_id == bindparam("b_step_id"))
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                detail=bindparam("b_detail"),
                finished_at=bindparam("b_finished_at"),
            ),
            [
                {
                    "b_run_id": run.id,
                    "b_step_id": step.spec.id,
                    "b_status": step.status,
                    "b_attempts": step.attempts,
                    "b_detail": step.detail,
                    "b_finished_at": step.finished_at,
                }
                for step in run.steps
            ],
        )


class ExecutorSqlUnitOfWork(SqlUnitOfWork):
    runs: SqlRunRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.runs = SqlRunRepository(session)


@dataclass(frozen=True)
class SmtpServer:
    """Where email goes: smtp://[user:password@]host[:port] (STARTTLS when offered) or smtps://."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"HERALD_SMTP_URL must look like smtp://user:password@host:587, got {url!r}")
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
        )


class SmtpEmailSender:
    """Sends through an SMTP server with aiosmtplib. Each email keeps a deterministic Message-ID."""

    def __init__(self, server: SmtpServer, mail_from: str, timeout: float = 15.0):
        self._server = server
        self._mail_from = mail_from
        self._timeout = timeout
        self._tls = ssl.create_default_context()  # loading the CA store is slow: once per sender

    async def send(self, email: OutgoingEmail) -> str:
        message = EmailMessage()
        message["From"] = self._mail_from
        message["To"] = email.to
        message["Subject"] = email.subject
        message["Message-ID"] = email.message_id
        message["Date"] = formatdate(localtime=False, usegmt=True)
        for name, value in email.headers.items():
            message[name] = value
        message.set_content(email.text)
        if email.html:
            message.add_alternative(email.html, subtype="html")
        server = self._server
        try:
            _errors, response = await aiosmtplib.send(
                message,
                hostname=server.host,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.implicit_tls,
                start_tls=None if not server.implicit_tls else False,
                tls_context=self._tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            permanent = all(500 <= refusal.code < 600 for refusal in error.recipients)
            raise DeliveryError(f"recipient refused: {error}", permanent=permanent) from error
        except aiosmtplib.SMTPResponseException as error:
            raise DeliveryError(
                f"SMTP {error.code}: {error.message}", permanent=500 <= error.code < 600
            ) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"SMTP server unreachable: {error}") from error
        return f"{response} {email.message_id}".strip()
