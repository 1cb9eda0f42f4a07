"""The executor's channel worker counts each delivery attempt's outcome and leaves the message's
ids bound for the consumer's own log lines."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import structlog

from kernel.bus import Delivery, Poison, RetryLater
from kernel.metrics import REGISTRY
from services.executor.consumers import step_batch_handler, step_handler
from services.executor.domain import DeliveryError
from tests.unit.fakes import FakeExecutorUnitOfWork
from tests.unit.test_executor_flow import RUN_ID, TRIGGER_ID, Senders, started, step, task


def delivered(channel: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("herald_deliveries_total", {"channel": channel, "outcome": outcome}) or 0.0
    )


def delivery(step_id: str) -> Delivery:
    return Delivery("steps.webhook.team-1", task(step_id).SerializeToString(), {}, 1, 1)


async def handled(uow: FakeExecutorUnitOfWork, senders: Senders) -> dict[str, object]:
    """One message through the webhook worker, in a task of its own as the consumer runs it;
    the log context it left bound."""
    handle = step_handler(lambda: uow, senders.channels(), "webhook")

    async def one() -> dict[str, object]:
        try:
            await handle(delivery("hook"))
        finally:
            bound = structlog.contextvars.get_contextvars()
        return bound

    return await asyncio.create_task(one())


async def test_a_retry_then_a_send_are_counted_on_the_channel() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x", max_attempts=3))
    senders = Senders()
    senders.webhook.failures.append(DeliveryError("HTTP 503: busy"))
    retry, sent = delivered("webhook", "retry"), delivered("webhook", "sent")

    with pytest.raises(RetryLater):
        await handled(uow, senders)
    bound = await handled(uow, senders)

    assert delivered("webhook", "retry") - retry == 1
    assert delivered("webhook", "sent") - sent == 1
    assert bound["run_id"] == str(RUN_ID) and bound["trigger_id"] == str(TRIGGER_ID)
    assert bound["step_id"] == "hook"
    assert "run_id" not in structlog.contextvars.get_contextvars()  # only the message's task had them


async def test_a_permanent_failure_is_counted_as_failed() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x"))
    senders = Senders()
    senders.webhook.failures.append(DeliveryError("HTTP 400: no", permanent=True))
    failed, sent = delivered("webhook", "failed"), delivered("webhook", "sent")

    await handled(uow, senders)
    await handled(uow, senders)  # already done: not counted again

    assert delivered("webhook", "failed") - failed == 1
    assert delivered("webhook", "sent") == sent


async def test_a_fetch_answers_and_counts_each_tasks_outcome() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x", max_attempts=3))
    other = uuid.uuid4()
    await started(step("hook", "webhook", url="https://hooks.example.com/y"), run_id=other, uow=uow)
    senders = Senders()
    senders.webhook.failures.append(DeliveryError("HTTP 503: busy"))
    handle = step_batch_handler(lambda: uow, senders.channels(), "webhook")
    retry, sent = delivered("webhook", "retry"), delivered("webhook", "sent")
    unreadable = Delivery("steps.webhook.team-1", b"\xff not a task", {}, 1, 1)
    second = Delivery("steps.webhook.team-1", task("hook", other).SerializeToString(), {}, 1, 2)

    outcomes = await handle([delivery("hook"), unreadable, second, delivery("hook")])

    assert outcomes is not None
    first, poison, handled, repeated = outcomes
    assert isinstance(first, RetryLater)
    assert isinstance(poison, Poison)
    assert (handled, repeated) == (None, None)
    assert delivered("webhook", "retry") - retry == 1
    assert delivered("webhook", "sent") - sent == 1
