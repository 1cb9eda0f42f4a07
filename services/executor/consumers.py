"""The executor's bus side: run starts (RUNS), one worker per channel (STEPS), the waits that
events end (EVENTS), and the look-back over EVENTS for waits that began after their event."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from datetime import datetime

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient

from herald.bus.v1 import event_pb2, run_pb2
from kernel.bus import (
    BatchHandler,
    Delivery,
    Handler,
    Outcome,
    Poison,
    RetryLater,
    decode,
    event_subject,
    read_since,
)
from kernel.cache import TtlCache
from kernel.steps import CHANNEL_OF_STEP_TYPE
from services.executor import handlers
from services.executor.domain import StepStatus
from services.executor.metrics import count_delivery

log = structlog.get_logger(__name__)
RUNS_DURABLE, RUNS_FILTER = "executor-runs", "runs.>"
WAITS_DURABLE, WAITS_FILTER = "executor-waits", "events.>"
CHANNELS = tuple(sorted(set(CHANNEL_OF_STEP_TYPE.values())))


def step_consumer(channel: str) -> tuple[str, str]:
    """The durable name and subject filter of a channel's worker."""
    return f"executor-{channel}", f"steps.{channel}.>"


def _run_start(delivery: Delivery) -> run_pb2.RunStart:
    start = decode(run_pb2.RunStart, delivery)
    try:
        uuid.UUID(start.run_id), uuid.UUID(start.trigger_id), uuid.UUID(start.event.event_id)
    except ValueError:
        raise Poison(f"a run start with malformed ids: run {start.run_id!r}") from None
    return start


def run_start_handler(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        start = _run_start(delivery)
        structlog.contextvars.bind_contextvars(
            run_id=start.run_id, trigger_id=start.trigger_id, event_id=start.event.event_id
        )
        await handlers.start_run(start, unit_of_work())

    return handle


def run_start_batch_handler(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> BatchHandler:
    """Every run start of a fetch in one transaction (one insert of the runs, one of their steps,
    one of the messages that move them on)."""

    async def handle(deliveries: Sequence[Delivery]) -> None:
        await handlers.start_runs([_run_start(delivery) for delivery in deliveries], unit_of_work())

    return handle


def step_handler(
    unit_of_work: Callable[[], handlers.ExecutorUnitOfWork], channels: handlers.Channels, channel: str
) -> Handler:
    """A worker of `channel`: delivers each step task, counting the outcome (services.executor.metrics)."""

    async def handle(delivery: Delivery) -> None:
        task = decode(run_pb2.StepTask, delivery)
        # Left bound for the consumer's own lines about this message (each runs in its own task).
        structlog.contextvars.bind_contextvars(
            run_id=task.run_id, trigger_id=task.trigger_id, step_id=task.step_id
        )
        try:
            status = await handlers.perform_step(task, unit_of_work(), channels)
        except RetryLater as retry:
            _counted(channel, retry)
            raise
        _counted(channel, status)

    return handle


def step_batch_handler(
    unit_of_work: Callable[[], handlers.ExecutorUnitOfWork], channels: handlers.Channels, channel: str
) -> BatchHandler:
    """`step_handler` for a whole fetch: its tasks delivered in one transaction
    (handlers.perform_steps), each task's outcome answered to the consumer."""

    async def handle(deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(deliveries)
        tasks, places = [], []
        for index, delivery in enumerate(deliveries):
            try:
                tasks.append(decode(run_pb2.StepTask, delivery))
            except Poison as poison:
                outcomes[index] = poison
                continue
            places.append(index)
        performed = await handlers.perform_steps(tasks, unit_of_work(), channels)
        for index, outcome in zip(places, performed, strict=True):
            outcomes[index] = _counted(channel, outcome)
        return outcomes

    return handle


def _counted(channel: str, outcome: handlers.StepOutcome) -> Poison | RetryLater | None:
    """Count a step task's outcome (services.executor.metrics); what the consumer makes of it."""
    if isinstance(outcome, RetryLater):
        count_delivery(channel, "retry")
    elif outcome == StepStatus.SENT:
        count_delivery(channel, "sent")
    elif outcome == StepStatus.FAILED:
        count_delivery(channel, "failed")
    return outcome if isinstance(outcome, Exception) else None


def wait_handler(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> Handler:
    """Ends waits with the events they wait for. Which event names a project's runs wait for is
    known from a cache of at most AWAITED_SECONDS; a wait newer than that is covered by its
    look-back, which starts only once the wait is older (handlers.catch_up_waits)."""
    awaited = _awaited(unit_of_work)

    async def handle(delivery: Delivery) -> None:
        await _resume(delivery, awaited, unit_of_work)

    return handle


def wait_batch_handler(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> BatchHandler:
    """`wait_handler` for a whole fetch: most events end no wait and are passed over together."""
    awaited = _awaited(unit_of_work)

    async def handle(deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await _resume(delivery, awaited, unit_of_work)

    return handle


def _awaited(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> TtlCache[str, frozenset[str]]:
    """The event names a project's runs wait for, as of at most AWAITED_SECONDS ago."""
    return TtlCache(
        handlers.AWAITED_SECONDS, lambda team_id: handlers.awaited_events(team_id, unit_of_work())
    )


async def _resume(
    delivery: Delivery,
    awaited: TtlCache[str, frozenset[str]],
    unit_of_work: Callable[[], handlers.ExecutorUnitOfWork],
) -> None:
    # The subject names the project and the event (events.<project>.<name>): most events end no
    # wait, and are passed over without being decoded.
    project_id, _, name = delivery.subject.partition(".")[2].partition(".")
    if project_id and name and name not in await awaited.get(project_id):
        return
    event = decode(event_pb2.Event, delivery)
    if event.name not in await awaited.get(event.project_id):
        return
    resumed = await handlers.resume_waits(event, unit_of_work())
    if resumed:
        log.info("waits.resumed", event=event.name, event_id=event.event_id, runs=resumed)


class JetStreamEventLog:
    """The events a project sent, read back from the EVENTS stream."""

    def __init__(self, client: NatsClient):
        self._client = client

    async def since(self, team_id: str, event: str, since: datetime) -> AsyncGenerator[event_pb2.Event, None]:
        async with aclosing(
            read_since(self._client, "EVENTS", event_subject(team_id, event), since)
        ) as stored:
            async for data in stored:
                try:
                    yield event_pb2.Event.FromString(data)
                except DecodeError:
                    log.warning("waits.unreadable_event", event=event)
