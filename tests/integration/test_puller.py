"""The bus's pull requests against real JetStream: a fetch takes what is there at once, waits for
the first message otherwise, and keeps what comes after it gave up for the next fetch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from kernel import bus
from kernel.bus import FetchFailed, OutgoingMessage, Puller, publish_to
from tests.integration.waiting import eventually

STREAM = "EVENTS"


@pytest.fixture
async def lane(nats_client: NatsClient) -> AsyncIterator[tuple[JetStreamContext, str, str]]:
    """A durable consumer of a project of its own: (JetStream, its durable, the project's subject prefix)."""
    js = nats_client.jetstream()
    project, durable = f"puller-{uuid.uuid4().hex[:10]}", f"test-puller-{uuid.uuid4().hex[:10]}"
    config = api.ConsumerConfig(
        durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, filter_subject=f"events.{project}.>"
    )
    await js.add_consumer(STREAM, config)
    yield js, durable, f"events.{project}"
    await js.delete_consumer(STREAM, durable)


async def publish(js: JetStreamContext, prefix: str, *names: str) -> None:
    for name in names:
        await publish_to(js, OutgoingMessage(f"{prefix}.{name}", name.encode(), str(uuid.uuid4()), "p"))


async def delivered(js: JetStreamContext, durable: str) -> bool:
    return bool((await js.consumer_info(STREAM, durable)).num_ack_pending == 1)


@pytest.fixture
async def puller(nats_client: NatsClient, lane: tuple[JetStreamContext, str, str]) -> AsyncIterator[Puller]:
    started = Puller(nats_client, STREAM, lane[1])
    await started.start()
    yield started
    await started.stop()


async def test_a_fetch_takes_what_is_there_up_to_its_batch_in_order(
    lane: tuple[JetStreamContext, str, str], puller: Puller
) -> None:
    js, _, prefix = lane
    await publish(js, prefix, "one", "two", "three", "four", "five")

    first = await puller.fetch(3, wait_seconds=5.0)
    rest = await puller.fetch(16, wait_seconds=5.0)

    assert [m.data for m in first] == [b"one", b"two", b"three"]
    assert [m.data for m in rest] == [b"four", b"five"]
    assert [m.subject for m in rest] == [f"{prefix}.four", f"{prefix}.five"]
    for message in first + rest:
        await message.ack()


async def test_a_fetch_with_nothing_there_waits_for_the_first_message(
    lane: tuple[JetStreamContext, str, str], puller: Puller
) -> None:
    js, _, prefix = lane
    waiting = asyncio.create_task(puller.fetch(16, wait_seconds=10.0))
    await asyncio.sleep(0.3)
    assert not waiting.done()

    await publish(js, prefix, "late")

    [message] = await asyncio.wait_for(waiting, 5.0)
    assert message.data == b"late"
    await message.ack()


async def test_a_fetch_that_nothing_comes_to_returns_none_when_its_request_expires(puller: Puller) -> None:
    assert await puller.fetch(4, wait_seconds=0.3) == []


async def test_a_message_that_comes_after_its_fetch_gave_up_comes_with_the_next_fetch(
    lane: tuple[JetStreamContext, str, str], puller: Puller, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, durable, prefix = lane
    # The fetch gives up 0.6 s before its request expires on the server.
    monkeypatch.setattr(bus, "FETCH_GRACE_SECONDS", -0.6)
    assert await puller.fetch(16, wait_seconds=1.0) == []
    await publish(js, prefix, "after")  # the abandoned request, still open, takes it
    await eventually(lambda: delivered(js, durable), what="the message delivered")
    await asyncio.sleep(0.2)  # and received, with no fetch waiting

    [kept] = await puller.fetch(16, wait_seconds=5.0)

    assert kept.data == b"after"
    await kept.ack()


async def test_the_end_of_an_abandoned_request_does_not_end_the_next_fetch(
    lane: tuple[JetStreamContext, str, str], puller: Puller, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, _, prefix = lane
    monkeypatch.setattr(bus, "FETCH_GRACE_SECONDS", -0.6)
    assert await puller.fetch(16, wait_seconds=1.0) == []  # gives up; the server expires it 0.6 s later
    monkeypatch.setattr(bus, "FETCH_GRACE_SECONDS", 0.5)
    waiting = asyncio.create_task(puller.fetch(16, wait_seconds=10.0))
    await asyncio.sleep(1.2)  # the abandoned request's 408 has come and gone
    assert not waiting.done()

    await publish(js, prefix, "next")

    [message] = await asyncio.wait_for(waiting, 5.0)
    assert message.data == b"next"
    await message.ack()


async def test_a_request_the_server_refuses_raises_with_its_status(nats_client: NatsClient) -> None:
    missing = Puller(nats_client, STREAM, f"no-such-consumer-{uuid.uuid4().hex[:8]}")
    await missing.start()
    try:
        with pytest.raises(FetchFailed, match="503"):
            await missing.fetch(4, wait_seconds=2.0)
    finally:
        await missing.stop()
