"""The executor's own figures on /metrics (kernel.metrics): deliveries by channel and outcome,
and the dead letters waiting for an operator."""

from __future__ import annotations

from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.metrics import REGISTRY, Sampler
from kernel.steps import CHANNEL_OF_STEP_TYPE
from services.executor.adapters import DEAD_LETTERS
from services.executor.domain import DeadLetterStatus

CHANNELS = tuple(sorted(set(CHANNEL_OF_STEP_TYPE.values())))
# sent: the provider took it; failed: for good (a dead letter); retry: attempted, tried again later.
DELIVERY_OUTCOMES = ("sent", "failed", "retry")

DELIVERIES = Counter(
    "herald_deliveries",
    "Delivery attempts by channel and outcome: sent, failed (for good: a dead letter) or retry",
    ["channel", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS_STORED = Gauge(
    "herald_dead_letters",
    "Deliveries that failed for good and were not replayed (GET /api/v1/dead-letters), by channel; sampled",
    ["channel"],
    registry=REGISTRY,
)
BUS_DEAD_LETTERS = Gauge(
    "herald_bus_dead_letters",
    "Messages on the DLQ stream (poison messages, or ones that exhausted their attempts); sampled",
    registry=REGISTRY,
)

# Taken once: counting a delivery is one dictionary lookup and one inc().
_DELIVERIES = {
    (channel, outcome): DELIVERIES.labels(channel, outcome)
    for channel in CHANNELS
    for outcome in DELIVERY_OUTCOMES
}


def count_delivery(channel: str, outcome: str) -> None:
    child = _DELIVERIES.get((channel, outcome))
    (child or DELIVERIES.labels(channel, outcome)).inc()


def dead_letter_sampler(sessions: async_sessionmaker[AsyncSession], js: JetStreamContext) -> Sampler:
    """Sets the dead-letter gauges: the executor's stored dead letters by channel, and the DLQ
    stream's size."""
    count = (
        select(DEAD_LETTERS.c.channel, func.count())
        .where(DEAD_LETTERS.c.status == DeadLetterStatus.DEAD)
        .group_by(DEAD_LETTERS.c.channel)
    )

    async def sample() -> None:
        async with sessions() as session:
            stored = {str(channel): int(n) for channel, n in (await session.execute(count)).all()}
        for channel in {*CHANNELS, *stored}:
            DEAD_LETTERS_STORED.labels(channel).set(stored.get(channel, 0))
        info = await js.stream_info("DLQ")
        BUS_DEAD_LETTERS.set(info.state.messages)

    return sample
