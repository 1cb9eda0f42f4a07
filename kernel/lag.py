"""Queue lag: how far each durable consumer of the bus is behind its stream.

For every stream and each of its durable consumers: messages not yet delivered (`pending`),
delivered but not acknowledged (`ack_pending`), redelivered and not acknowledged yet
(`redelivered`), and how long the oldest message not acknowledged has waited. That message is
the first one after the consumer's ack floor (every message up to the floor is acknowledged) that
the consumer's filter takes; its age is read from the stream (STREAM.MSG.GET, next by subject).
Shared by the tracker's GET /api/v1/stats and the services' metrics.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from kernel.clock import utcnow
from kernel.errors import Unavailable

# Subjects every stream message matches, for a consumer with no filter.
ALL_SUBJECTS = ">"


@dataclass(frozen=True)
class ConsumerLag:
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int
    # 0.0 when nothing waits.
    oldest_pending_age_seconds: float


async def queue_lag(js: JetStreamContext) -> list[ConsumerLag]:
    """The lag of every durable consumer of every stream, by stream and consumer name; Unavailable
    when the bus does not answer."""
    try:
        return await _queue_lag(js)
    except (NatsError, TimeoutError) as error:
        raise Unavailable(f"The bus did not answer, so its queue lag is unknown: {error!r}"[:300]) from error


async def _queue_lag(js: JetStreamContext) -> list[ConsumerLag]:
    streams = await js.streams_info()
    names = [stream.config.name for stream in streams if stream.config.name]
    consumers = await asyncio.gather(*(js.consumers_info(name) for name in names))
    infos = [info for found in consumers for info in found]
    now = utcnow()
    ages = await asyncio.gather(*(_oldest_pending_age(js, info, now) for info in infos))
    lags = [
        ConsumerLag(
            stream=info.stream_name,
            consumer=info.name,
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
            oldest_pending_age_seconds=age,
        )
        for info, age in zip(infos, ages, strict=True)
    ]
    return sorted(lags, key=lambda lag: (lag.stream, lag.consumer))


async def _oldest_pending_age(js: JetStreamContext, info: api.ConsumerInfo, now: datetime) -> float:
    if not (info.num_pending or info.num_ack_pending):
        return 0.0
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    found = await asyncio.gather(
        *(_first_after(js, info.stream_name, floor, subject) for subject in _filters_of(info.config))
    )
    times = [moment for moment in found if moment is not None]
    return max((now - min(times)).total_seconds(), 0.0) if times else 0.0


async def _first_after(js: JetStreamContext, stream: str, floor: int, subject: str) -> datetime | None:
    """When the first message after `floor` on `subject` was stored; None when there is none."""
    try:
        message = await js.get_msg(stream, seq=floor + 1, subject=subject, next=True)
    except NotFoundError:  # none (any more): an empty stream, or aged out since
        return None
    return message.time


def _filters_of(config: api.ConsumerConfig) -> list[str]:
    """The subjects the consumer takes: its filter(s), or every subject of the stream."""
    if config.filter_subject:
        return [config.filter_subject]
    return [str(subject) for subject in config.filter_subjects or []] or [ALL_SUBJECTS]
