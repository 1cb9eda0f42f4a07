"""Durable pull consumers against real JetStream: one outcome per message, and a DLQ record."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from unittest.mock import patch

import pytest
import sqlalchemy.exc
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from herald.bus.v1 import tracking_pb2
from kernel.bus import (
    MSG_ID,
    PROJECT_HEADER,
    Consumer,
    Delivery,
    OutgoingMessage,
    PartlyPoison,
    Poison,
    PoisonPart,
    RetryLater,
    decode,
    publish_to,
)
from tests.integration.waiting import eventually

STREAM = "EVENTS"


@dataclass
class Lane:
    """A project and a durable consumer name that no other test uses."""

    project: str = field(default_factory=lambda: f"consumer-{uuid.uuid4().hex[:10]}")
    durable: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}")

    @property
    def filter_subject(self) -> str:
        return f"events.{self.project}.>"

    @property
    def dlq_subject(self) -> str:
        return f"dlq.{self.durable}.{self.project}"

    def subject(self, name: str = "x") -> str:
        return f"events.{self.project}.{name}"


@dataclass
class RecordingHandler:
    """Remembers every delivery, then behaves as `outcome` says for that delivery."""

    outcome: Callable[[Delivery], Awaitable[None]]
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        await self.outcome(delivery)


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def created() -> bool:
        if task.done():
            task.result()  # the consumer failed to start: say why
        try:
            await consumer.js.consumer_info(consumer.stream, consumer.durable)
        except NotFoundError:
            return False
        return True

    try:
        await eventually(created, what=f"consumer {consumer.durable} created")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        with contextlib.suppress(NotFoundError):  # never created: keep the test's own error
            await consumer.js.delete_consumer(consumer.stream, consumer.durable)


def consumer_for(
    client: NatsClient, lane: Lane, handler: RecordingHandler, max_attempts: int = 5
) -> Consumer:
    return Consumer(
        client=client,
        stream=STREAM,
        durable=lane.durable,
        filter_subject=lane.filter_subject,
        handler=handler,
        max_attempts=max_attempts,
        concurrency=4,
    )


async def publish(js: JetStreamContext, lane: Lane, payload: bytes = b"hello", name: str = "x") -> int:
    message = OutgoingMessage(lane.subject(name), payload, msg_id=str(uuid.uuid4()), project_id=lane.project)
    return await publish_to(js, message)


async def settled(js: JetStreamContext, lane: Lane, sequence: int) -> bool:
    """Whether the consumer finished with every message up to `sequence` (acked or terminated)."""
    info = await js.consumer_info(STREAM, lane.durable)
    return (
        info.num_ack_pending == 0
        and info.ack_floor is not None
        and (info.ack_floor.stream_seq or 0) >= sequence
    )


async def dead_letter(js: JetStreamContext, subject: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg("DLQ", subject)
    except NotFoundError:
        return None


async def handled(delivery: Delivery) -> None:
    return None


async def test_handled_message_is_acked_and_not_redelivered(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    handler = RecordingHandler(handled)
    sequence = await publish(js, lane, b"welcome")

    async with running(consumer_for(nats_client, lane, handler)):
        await eventually(lambda: settled(js, lane, sequence), what="ack")
        info = await js.consumer_info(STREAM, lane.durable)

    assert info.num_redelivered == 0
    assert [d.attempt for d in handler.deliveries] == [1]
    delivery = handler.deliveries[0]
    assert delivery.data == b"welcome"
    assert delivery.subject == lane.subject()
    assert delivery.stream_sequence == sequence
    assert delivery.project_id == lane.project
    assert delivery.headers[MSG_ID]
    assert await dead_letter(js, lane.dlq_subject) is None


async def test_retry_later_redelivers_with_a_growing_attempt_until_handled(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def twice_not_ready(delivery: Delivery) -> None:
        if delivery.attempt < 3:
            raise RetryLater("the contact is still being created", delay=0.05)

    handler = RecordingHandler(twice_not_ready)
    sequence = await publish(js, lane)

    async with running(consumer_for(nats_client, lane, handler)):
        await eventually(lambda: settled(js, lane, sequence), what="ack after retries")

    assert [d.attempt for d in handler.deliveries] == [1, 2, 3]
    assert {d.stream_sequence for d in handler.deliveries} == {sequence}
    assert await dead_letter(js, lane.dlq_subject) is None


async def test_poison_goes_to_the_dlq_with_its_reason_and_is_terminated(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def poisoned(delivery: Delivery) -> None:
        raise Poison("workflow definition is unreadable")

    handler = RecordingHandler(poisoned)
    sequence = await publish(js, lane, b"original payload", name="order.completed")

    async with running(consumer_for(nats_client, lane, handler)):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="DLQ record")
        await eventually(lambda: settled(js, lane, sequence), what="term")
        info = await js.consumer_info(STREAM, lane.durable)

    assert record.data == b"original payload"
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Reason"] == "poison: workflow definition is unreadable"
    assert record.headers["Herald-Dlq-Subject"] == lane.subject("order.completed")
    assert record.headers["Herald-Dlq-Attempts"] == "1"
    assert record.headers[PROJECT_HEADER] == lane.project
    assert len(handler.deliveries) == 1
    assert info.num_redelivered == 0


async def test_handler_failing_every_time_is_dead_lettered_after_max_attempts(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def broken(delivery: Delivery) -> None:
        raise RuntimeError("template engine crashed")

    handler = RecordingHandler(broken)
    sequence = await publish(js, lane, b"doomed")

    async with running(consumer_for(nats_client, lane, handler, max_attempts=2)):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="DLQ record")
        await eventually(lambda: settled(js, lane, sequence), what="term")

    assert [d.attempt for d in handler.deliveries] == [1, 2]
    assert record.data == b"doomed"
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Attempts"] == "2"
    assert record.headers["Herald-Dlq-Reason"].startswith("attempts exhausted:")
    assert "template engine crashed" in record.headers["Herald-Dlq-Reason"]


async def test_an_unavailable_database_does_not_use_up_attempts(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def database_away_three_times(delivery: Delivery) -> None:
        if delivery.attempt <= 3:
            raise sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, ConnectionRefusedError("connection refused")
            )

    handler = RecordingHandler(database_away_three_times)
    sequence = await publish(js, lane, b"kept")

    with patch("kernel.bus.backoff_delay", return_value=0.05):
        async with running(consumer_for(nats_client, lane, handler, max_attempts=2)):
            await eventually(lambda: settled(js, lane, sequence), what="ack")

    assert [d.attempt for d in handler.deliveries] == [1, 2, 3, 4]
    assert await dead_letter(js, lane.dlq_subject) is None


async def test_retry_later_past_max_attempts_is_dead_lettered(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def never_ready(delivery: Delivery) -> None:
        raise RetryLater("provider is down", delay=0.05)

    handler = RecordingHandler(never_ready)
    sequence = await publish(js, lane)

    async with running(consumer_for(nats_client, lane, handler, max_attempts=2)):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="DLQ record")
        await eventually(lambda: settled(js, lane, sequence), what="term")

    assert [d.attempt for d in handler.deliveries] == [1, 2]
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Reason"] == "attempts exhausted: provider is down"
    assert record.headers["Herald-Dlq-Attempts"] == "2"


async def test_undecodable_bytes_are_poison(js: JetStreamContext, nats_client: NatsClient) -> None:
    lane = Lane()

    async def decoding(delivery: Delivery) -> None:
        decode(tracking_pb2.TrackingRecord, delivery)

    handler = RecordingHandler(decoding)
    sequence = await publish(js, lane, b"\xff\xff\xff not protobuf")

    async with running(consumer_for(nats_client, lane, handler)):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="DLQ record")
        await eventually(lambda: settled(js, lane, sequence), what="term")

    assert len(handler.deliveries) == 1
    assert record.data == b"\xff\xff\xff not protobuf"
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Reason"].startswith("poison: not a herald.bus.v1.TrackingRecord")


async def test_decode_returns_the_message_a_delivery_carries(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    decoded: list[tracking_pb2.TrackingRecord] = []

    async def decoding(delivery: Delivery) -> None:
        decoded.append(decode(tracking_pb2.TrackingRecord, delivery))

    record = tracking_pb2.TrackingRecord(trigger_id=str(uuid.uuid4()), project_id=lane.project)
    sequence = await publish(js, lane, record.SerializeToString())

    async with running(consumer_for(nats_client, lane, RecordingHandler(decoding))):
        await eventually(lambda: settled(js, lane, sequence), what="ack")

    assert decoded == [record]


async def test_two_consumers_of_one_message_each_write_their_dlq_record(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    first, second = Lane(), Lane()
    second.project = first.project  # both consume the same subject, under their own durable

    async def poisoned(delivery: Delivery) -> None:
        raise Poison("cannot handle")

    sequence = await publish(js, first)
    async with (
        running(consumer_for(nats_client, first, RecordingHandler(poisoned))),
        running(consumer_for(nats_client, second, RecordingHandler(poisoned))),
    ):
        await eventually(lambda: settled(js, first, sequence), what="first term")
        await eventually(lambda: settled(js, second, sequence), what="second term")

    assert await dead_letter(js, first.dlq_subject) is not None
    assert await dead_letter(js, second.dlq_subject) is not None


async def test_the_poison_parts_of_a_message_are_dead_lettered_each_alone_and_it_is_acked(
    js: JetStreamContext,
    nats_client: NatsClient,
) -> None:
    lane = Lane()
    parts = [
        PoisonPart(1, lane.subject("one"), b"first part", "unreadable"),
        PoisonPart(3, lane.subject("three"), b"third part", "unknown kind"),
    ]

    async def partly_poisoned(delivery: Delivery) -> None:
        raise PartlyPoison(parts)

    handler = RecordingHandler(partly_poisoned)
    sequence = await publish(js, lane, b"four parts")

    async with running(consumer_for(nats_client, lane, handler)):
        await eventually(lambda: settled(js, lane, sequence), what="ack")
        info = await js.consumer_info(STREAM, lane.durable)

    assert (len(handler.deliveries), info.num_redelivered) == (1, 0)
    dlq = await js.stream_info("DLQ", subjects_filter=lane.dlq_subject)
    assert (dlq.state.subjects or {}).get(lane.dlq_subject) == 2
    first = await js.get_msg("DLQ", seq=1, subject=lane.dlq_subject, next=True)
    last = await dead_letter(js, lane.dlq_subject)
    assert last is not None
    letters = [first, last]
    assert [letter.data for letter in letters] == [b"first part", b"third part"]
    assert [(letter.headers or {})[MSG_ID] for letter in letters] == [
        f"{lane.durable}:{STREAM}:{sequence}:1",
        f"{lane.durable}:{STREAM}:{sequence}:3",
    ]
    assert [(letter.headers or {})["Herald-Dlq-Subject"] for letter in letters] == [
        lane.subject("one"),
        lane.subject("three"),
    ]
    assert (last.headers or {})["Herald-Dlq-Reason"] == "poison: unknown kind"


def batch_handling(
    lane: Lane, nats_client: NatsClient
) -> tuple[Consumer, RecordingHandler, list[list[bytes]]]:
    """A consumer whose batch handler fails any batch holding b"bad"; one by one, b"bad" is poison."""
    batches: list[list[bytes]] = []

    async def batch(deliveries: Sequence[Delivery]) -> None:
        batches.append([d.data for d in deliveries])
        if any(d.data == b"bad" for d in deliveries):
            raise RuntimeError("one message of the batch cannot be handled")

    async def one(delivery: Delivery) -> None:
        if delivery.data == b"bad":
            raise Poison("never readable")

    handler = RecordingHandler(one)
    return (
        dataclasses.replace(consumer_for(nats_client, lane, handler), batch_handler=batch),
        handler,
        batches,
    )


async def test_a_batch_handler_takes_a_whole_fetch_at_once(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    consumer, handler, batches = batch_handling(lane, nats_client)
    last = [await publish(js, lane, f"good-{n}".encode()) for n in range(3)][-1]

    async with running(consumer):
        await eventually(lambda: settled(js, lane, last), what="a batch acked")

    assert batches == [[b"good-0", b"good-1", b"good-2"]]
    assert handler.deliveries == []


async def test_a_failed_batch_is_handled_again_one_by_one(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    consumer, handler, batches = batch_handling(lane, nats_client)
    last = [await publish(js, lane, payload) for payload in (b"good-3", b"bad", b"good-4")][-1]

    async with running(consumer):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="the bad one dead-lettered")
        await eventually(lambda: settled(js, lane, last), what="the others acked")

    assert batches == [[b"good-3", b"bad", b"good-4"]]
    assert record.data == b"bad"
    assert sorted(d.data for d in handler.deliveries) == [b"bad", b"good-3", b"good-4"]


async def test_a_lingering_batch_takes_what_arrives_while_it_waits(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    consumer, handler, batches = batch_handling(lane, nats_client)
    consumer = dataclasses.replace(consumer, batch_size=10, linger_seconds=1.5)
    await publish(js, lane, b"first")

    async def fetched() -> bool:
        return bool((await js.consumer_info(STREAM, lane.durable)).num_ack_pending == 1)

    async with running(consumer):
        await eventually(fetched, what="the first message fetched")
        last = [await publish(js, lane, payload) for payload in (b"second", b"third")][-1]
        await eventually(lambda: settled(js, lane, last), what="all acked", within=10)

    assert batches == [[b"first", b"second", b"third"]]
    assert handler.deliveries == []


async def test_a_failed_big_batch_is_handled_again_a_few_at_a_time(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()
    consumer, handler, _ = batch_handling(lane, nats_client)
    consumer = dataclasses.replace(consumer, batch_size=12)  # concurrency 4
    payloads = [f"good-{n}".encode() for n in range(11)] + [b"bad"]
    last = [await publish(js, lane, payload) for payload in payloads][-1]

    async with running(consumer):
        await eventually(lambda: settled(js, lane, last), what="all handled", within=10)

    assert sorted(d.data for d in handler.deliveries) == sorted(payloads)


def answering(
    lane: Lane, nats_client: NatsClient, answer: Callable[[Delivery], Exception | None], max_attempts: int = 5
) -> tuple[Consumer, RecordingHandler, list[list[bytes]]]:
    """A consumer whose batch handler answers each message's outcome with `answer`; one by one,
    every message is handled."""
    batches: list[list[bytes]] = []

    async def batch(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        batches.append([d.data for d in deliveries])
        return [answer(d) for d in deliveries]

    handler = RecordingHandler(handled)
    consumer = dataclasses.replace(
        consumer_for(nats_client, lane, handler, max_attempts), batch_handler=batch
    )
    return consumer, handler, batches


async def test_a_batch_handler_settles_each_message_as_its_outcome_says(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    def answer(delivery: Delivery) -> Exception | None:
        if delivery.data == b"later":
            return RetryLater("the provider asked to wait", delay=0.05)
        return Poison("never readable") if delivery.data == b"bad" else None

    consumer, handler, batches = answering(lane, nats_client, answer)
    last = [await publish(js, lane, payload) for payload in (b"good-0", b"later", b"bad", b"good-1")][-1]

    async with running(consumer):
        record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="the bad one dead-lettered")
        await eventually(lambda: settled(js, lane, last), what="all settled")

    assert batches == [[b"good-0", b"later", b"bad", b"good-1"]]
    # Only the one that asked to wait came back (alone, so to the one-message handler).
    assert [(d.data, d.attempt) for d in handler.deliveries] == [(b"later", 2)]
    assert record.data == b"bad"
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Reason"] == "poison: never readable"


async def test_batch_outcomes_follow_the_attempt_rules_of_single_messages(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    """At its last attempt a retry is dead-lettered; an unavailable database uses no attempt."""
    lane = Lane()

    def answer(delivery: Delivery) -> Exception | None:
        if delivery.data == b"away":
            return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
        return RetryLater("provider is down", delay=0.05) if delivery.data == b"down" else None

    consumer, handler, _ = answering(lane, nats_client, answer, max_attempts=1)
    last = [await publish(js, lane, payload) for payload in (b"down", b"away", b"fine")][-1]

    with patch("kernel.bus.backoff_delay", return_value=0.05):
        async with running(consumer):
            record = await eventually(lambda: dead_letter(js, lane.dlq_subject), what="DLQ record")
            await eventually(lambda: settled(js, lane, last), what="all settled")

    assert [(d.data, d.attempt) for d in handler.deliveries] == [(b"away", 2)]
    assert record.data == b"down"
    assert record.headers is not None
    assert record.headers["Herald-Dlq-Reason"] == "attempts exhausted: provider is down"
    assert record.headers["Herald-Dlq-Attempts"] == "1"


async def test_a_batch_answering_the_wrong_number_of_outcomes_is_handled_again_one_by_one(
    js: JetStreamContext,
    nats_client: NatsClient,
) -> None:
    lane = Lane()
    batches: list[int] = []

    async def short(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        batches.append(len(deliveries))
        return [None]

    handler = RecordingHandler(handled)
    consumer = dataclasses.replace(consumer_for(nats_client, lane, handler), batch_handler=short)
    last = [await publish(js, lane, payload) for payload in (b"one", b"two")][-1]

    async with running(consumer):
        await eventually(lambda: settled(js, lane, last), what="both acked")

    assert batches == [2]
    assert sorted(d.data for d in handler.deliveries) == [b"one", b"two"]


async def test_a_slow_handler_keeps_its_message_from_another_worker(
    js: JetStreamContext, nats_client: NatsClient
) -> None:
    lane = Lane()

    async def slow_for_the_first(delivery: Delivery) -> None:
        if delivery.data == b"slow":
            await asyncio.sleep(3.5)  # over three ack waits

    handler = RecordingHandler(slow_for_the_first)
    first = dataclasses.replace(consumer_for(nats_client, lane, handler), ack_wait_seconds=1.0)
    await publish(js, lane, b"slow")

    async with running(first):
        await eventually(lambda: _async(bool(handler.deliveries)), what="the slow one taken")
        # A second worker of the same durable consumer, pulling all along.
        async with running(dataclasses.replace(first)):
            last = await publish(js, lane, b"quick")
            await eventually(lambda: settled(js, lane, last), what="both acked", within=15)
            await asyncio.sleep(1.5)  # a redelivery would have come by now

    assert sorted(d.data for d in handler.deliveries) == [b"quick", b"slow"]


async def _async(value: bool) -> bool:
    return value
