"""The tracker's TRACKING consumer on real JetStream and PostgreSQL: batches of facts and the single
records published before batches are applied alike, each fact once; an invalid record of a batch
is dead-lettered on its own."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import tracking_pb2
from kernel.bus import MSG_ID, BatchHandler, Consumer, Delivery, OutgoingMessage, publish_to
from kernel.tracking import in_batches, record_subject, tracking_message
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.consumers import tracking_batch_handler, tracking_handler
from services.tracker.domain import Summary, TriggerStatus
from tests.conftest import TeamCredentials
from tests.integration.test_consumer import dead_letter, running
from tests.integration.test_repositories_tracker import TriggerStory, look
from tests.integration.waiting import eventually

STREAM = "TRACKING"


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@dataclass
class Tracker:
    """The tracker's consumer of one team's tracking subjects, under a durable of its own."""

    client: NatsClient
    sessions: async_sessionmaker[AsyncSession]
    team_id: str
    durable: str = ""

    def __post_init__(self) -> None:
        self.durable = f"test-tracker-{uuid.uuid4().hex[:10]}"

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream()

    def unit_of_work(self) -> TrackerSqlUnitOfWork:
        return TrackerSqlUnitOfWork(self.sessions)

    def consumer(self, batch_handler: BatchHandler | None = None) -> Consumer:
        return Consumer(
            client=self.client,
            stream=STREAM,
            durable=self.durable,
            filter_subject=f"tracking.{self.team_id}.>",
            handler=tracking_handler(self.unit_of_work),
            batch_handler=batch_handler or tracking_batch_handler(self.unit_of_work),
            batch_size=32,
            linger_seconds=0.05,
        )

    async def settled(self, sequence: int) -> bool:
        info = await self.js.consumer_info(STREAM, self.durable)
        return (
            info.num_ack_pending == 0
            and info.ack_floor is not None
            and (info.ack_floor.stream_seq or 0) >= sequence
        )


def fact(record: tracking_pb2.TrackingRecord) -> OutgoingMessage:
    """A record as a handler announces it (its fact id made up: unique per record)."""
    return tracking_message(record, fact_id=str(uuid.uuid4()))


def batch(*records: tracking_pb2.TrackingRecord) -> OutgoingMessage:
    [folded] = in_batches([fact(record) for record in records])
    return folded


async def publish(js: JetStreamContext, *messages: OutgoingMessage) -> int:
    """Publish each message (a copy under a new id, if it was published already); the last sequence."""
    sequence = 0
    for message in messages:
        sequence = await publish_to(js, message)
    return sequence


def again(message: OutgoingMessage) -> OutgoingMessage:
    """The same payload under another message id: JetStream keeps both."""
    return OutgoingMessage(message.subject, message.payload, f"{message.msg_id}-again", message.project_id)


async def test_batches_and_single_records_from_before_batches_are_applied_alike(
    js: JetStreamContext,
    nats_client: NatsClient,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    story, welcome = TriggerStory(team.team_id), uuid.uuid4()
    tracker = Tracker(nats_client, sessions, team.team_id)
    sequence = await publish(
        js,
        fact(story.run_started(welcome, "welcome")),  # a record alone, as published before batches
        batch(story.delivery(welcome, "greet", sent=True), story.run_finished(welcome)),
        batch(story.accepted(), story.matched({"welcome": welcome})),  # facts out of order
    )

    async with running(tracker.consumer()):
        await eventually(lambda: tracker.settled(sequence), what="every message acknowledged")

    view, progress = await look(sessions, story)
    assert view is not None
    assert view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=0)
    assert (progress.expected_runs, progress.finished_runs) == (1, 1)


async def test_a_redelivered_or_republished_batch_counts_once(
    js: JetStreamContext,
    nats_client: NatsClient,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    story, welcome, reminder = TriggerStory(team.team_id), uuid.uuid4(), uuid.uuid4()
    tracker = Tracker(nats_client, sessions, team.team_id)
    facts = batch(
        story.accepted(),
        story.matched({"welcome": welcome, "reminder": reminder}, filtered=["paused"]),
        story.run_started(welcome, "welcome"),
        story.delivery(welcome, "greet", sent=True),
        story.run_finished(welcome),
    )
    applied: list[int] = []
    real = tracking_batch_handler(tracker.unit_of_work)

    async def applied_then_lost(deliveries: Sequence[Delivery]) -> None:
        # The facts are committed, then the batch's acknowledgement is lost: every message is
        # handled again (here at once, a message at a time; after a crash, once redelivered).
        await real(deliveries)
        applied.append(len(deliveries))
        if len(applied) == 1:
            raise ConnectionError("acknowledgement lost")

    sequence = await publish(js, facts, again(facts), again(again(facts)))
    async with running(tracker.consumer(applied_then_lost)):
        await eventually(lambda: tracker.settled(sequence), what="every message acknowledged")

    assert applied[0] == 3  # the three copies in one fetch, then each again on its own
    view, progress = await look(sessions, story)
    assert view is not None
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=1)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (2, 1, 0)
    assert view.status == TriggerStatus.PROCESSING  # the reminder's run has not finished


async def test_an_invalid_record_of_a_batch_is_dead_lettered_alone_and_the_others_are_applied(
    js: JetStreamContext,
    nats_client: NatsClient,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    story, other = TriggerStory(team.team_id), TriggerStory(team.team_id)
    tracker = Tracker(nats_client, sessions, team.team_id)
    invalid = tracking_pb2.TrackingRecord(
        trigger_id="not-a-uuid", project_id=team.team_id, run_started=tracking_pb2.RunStarted(run_id="r")
    )
    good = batch(other.accepted(), other.matched({}))
    poisoned = batch(story.accepted(), invalid, story.matched({}))
    first = await publish(js, good)
    second = await publish(js, poisoned)

    async with running(tracker.consumer()):  # one fetch: the batch fails, then each message alone
        await eventually(lambda: tracker.settled(second), what="every message acknowledged")
        info = await js.consumer_info(STREAM, tracker.durable)

    assert info.num_redelivered == 0  # acknowledged, not retried
    for each in (story, other):
        view, _progress = await look(sessions, each)
        assert view is not None
        assert view.status == TriggerStatus.COMPLETED
    letter = await dead_letter(js, f"dlq.{tracker.durable}.{team.team_id}")
    assert letter is not None
    assert tracking_pb2.TrackingRecord.FromString(letter.data or b"") == invalid
    assert letter.headers is not None
    assert letter.headers[MSG_ID] == f"{tracker.durable}:{STREAM}:{second}:1"
    assert letter.headers["Herald-Dlq-Subject"] == record_subject(team.team_id, "run_started")
    assert letter.headers["Herald-Dlq-Reason"].startswith(
        "poison: record 1 of the batch: a tracking record's trigger id"
    )
    dlq = await js.stream_info("DLQ", subjects_filter=f"dlq.{tracker.durable}.>")
    assert sum((dlq.state.subjects or {}).values()) == 1
    assert first < second


async def test_an_unreadable_batch_is_dead_lettered_whole(
    js: JetStreamContext,
    nats_client: NatsClient,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    tracker = Tracker(nats_client, sessions, team.team_id)
    unreadable = OutgoingMessage(
        f"tracking.{team.team_id}.batch", b"\xff\xff\xff not protobuf", str(uuid.uuid4()), team.team_id
    )
    sequence = await publish(js, unreadable)

    async with running(tracker.consumer()):
        await eventually(lambda: tracker.settled(sequence), what="the batch terminated")

    letter = await dead_letter(js, f"dlq.{tracker.durable}.{team.team_id}")
    assert letter is not None
    assert letter.data == unreadable.payload
    assert letter.headers is not None
    assert letter.headers["Herald-Dlq-Reason"].startswith("poison: not a herald.bus.v1.TrackingBatch")
