"""The executor's use cases: start runs, perform their steps one by one, report every fact."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import structlog

from herald.bus.v1 import run_pb2
from kernel.bus import Poison, RetryLater
from kernel.clock import utcnow
from kernel.errors import NotFound
from kernel.unit_of_work import UnitOfWork
from services.executor import messages
from services.executor.domain import (
    DeliveryError,
    OutgoingEmail,
    Run,
    RunStatus,
    StepState,
    StepStatus,
    render_email,
)

log = structlog.get_logger(__name__)


class RunRepository(Protocol):
    async def add(self, run: Run) -> bool:
        """Store a new run; False when a run with its id exists already."""
        ...

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None: ...

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        """The run, locked against every other worker until the unit of work ends."""
        ...

    async def save(self, run: Run) -> None: ...


class ExecutorUnitOfWork(UnitOfWork, Protocol):
    @property
    def runs(self) -> RunRepository: ...


class EmailSender(Protocol):
    async def send(self, email: OutgoingEmail) -> str:
        """Send `email`; return the provider's answer, or raise DeliveryError."""
        ...


@dataclass(frozen=True)
class Channels:
    """The senders of each channel and how hard to try."""

    email: EmailSender
    message_domain: str = "herald.local"
    max_attempts: int = 5


async def start_run(start: run_pb2.RunStart, uow: ExecutorUnitOfWork) -> None:
    """Store a requested run and queue its first step; a repeated request changes nothing."""
    run = messages.run_from_start(start)
    run.created_at = utcnow()
    async with uow:
        if not await uow.runs.add(run):
            log.info("run.already_started", run_id=str(run.id))
            return
        uow.publish(messages.run_started_record(run))
        advance(run, uow)
        await uow.runs.save(run)
        await uow.commit()
    log.info("run.started", run_id=str(run.id), workflow=run.workflow_key, version=run.workflow_version)


def advance(run: Run, uow: ExecutorUnitOfWork) -> None:
    """Queue the run's next step, or finish the run when no step is left."""
    if run.status != RunStatus.RUNNING:
        return
    if any(step.status == StepStatus.FAILED for step in run.steps):
        run.finish(RunStatus.FAILED, utcnow())
        uow.publish(messages.run_finished_record(run))
        return
    step = run.next_pending()
    if step is None:
        run.finish(RunStatus.COMPLETED, utcnow())
        uow.publish(messages.run_finished_record(run))
        return
    step.status = StepStatus.QUEUED
    uow.publish(messages.step_task(run, step))


async def perform_step(task: run_pb2.StepTask, uow: ExecutorUnitOfWork, channels: Channels) -> None:
    """Deliver one message step, at most once per run and step, then move the run on.

    The run stays locked while the message is sent, so two workers never send the same step;
    a step already sent or failed is skipped. A transient failure is retried by the bus with
    backoff, up to `max_attempts`; a permanent one, or the last attempt, fails the step and
    the run.
    """
    async with uow:
        run = await uow.runs.lock(uuid.UUID(task.run_id))
        step = run.step(task.step_id) if run else None
        if run is None or step is None:
            raise Poison(f"run {task.run_id} has no step {task.step_id!r}")
        if step.status in StepStatus.FINISHED:
            log.info("step.already_done", run_id=task.run_id, step_id=task.step_id, status=step.status)
            return
        step.attempts += 1
        try:
            step.detail = await _deliver(run, step, channels)
            step.status = StepStatus.SENT
        except DeliveryError as error:
            step.detail = str(error)
            if not error.permanent and step.attempts < channels.max_attempts:
                await uow.runs.save(run)
                await uow.commit()
                raise RetryLater(str(error)) from error
            step.status = StepStatus.FAILED
        step.finished_at = utcnow()
        uow.publish(messages.delivery_record(run, step))
        advance(run, uow)
        await uow.runs.save(run)
        await uow.commit()
    log.info(
        "step.done", run_id=task.run_id, step_id=step.spec.id, status=step.status, attempts=step.attempts
    )


async def _deliver(run: Run, step: StepState, channels: Channels) -> str:
    if step.spec.channel != "email":
        raise DeliveryError(f"no channel for step type {step.spec.type!r}", permanent=True)
    email = render_email(run, step.spec, channels.message_domain)
    try:
        return await channels.email.send(email)
    except DeliveryError:
        raise
    except Exception as error:  # a sender's own bug or an unforeseen failure: count it, retry it
        log.exception("step.sender_failed", run_id=str(run.id), step_id=step.spec.id)
        raise DeliveryError(f"sending failed unexpectedly: {error!r}") from error


async def get_run(team_id: str, run_id: str, uow: ExecutorUnitOfWork) -> Run:
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise NotFound("Run not found", reason="RUN_NOT_FOUND") from None
    async with uow:
        run = await uow.runs.get(team_id, parsed)
    if run is None:
        raise NotFound("Run not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id})
    return run
