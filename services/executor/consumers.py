"""The executor's bus consumers: run starts (RUNS) and the email channel worker (STEPS)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from herald.bus.v1 import run_pb2
from kernel.bus import Delivery, Handler, decode
from services.executor import handlers

RUNS_DURABLE, RUNS_FILTER = "executor-runs", "runs.>"
EMAIL_DURABLE, EMAIL_FILTER = "executor-email", "steps.email.>"


def run_start_handler(unit_of_work: Callable[[], handlers.ExecutorUnitOfWork]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        start = decode(run_pb2.RunStart, delivery)
        with structlog.contextvars.bound_contextvars(run_id=start.run_id, trigger_id=start.trigger_id):
            await handlers.start_run(start, unit_of_work())

    return handle


def step_handler(
    unit_of_work: Callable[[], handlers.ExecutorUnitOfWork], channels: handlers.Channels
) -> Handler:
    async def handle(delivery: Delivery) -> None:
        task = decode(run_pb2.StepTask, delivery)
        with structlog.contextvars.bound_contextvars(
            run_id=task.run_id, trigger_id=task.trigger_id, step_id=task.step_id
        ):
            await handlers.perform_step(task, unit_of_work(), channels)

    return handle
