"""The transactional outbox against real PostgreSQL and JetStream: publish what committed, once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import tracking_pb2
from kernel.bus import MSG_ID, PROJECT_HEADER, BusPublisher, OutgoingMessage, PublishRejected
from kernel.errors import Unavailable
from kernel.outbox import DELETE_BATCH, Outbox, delete_naming
from kernel.tracking import batch_subject, in_batches, tracking_message
from kernel.unit_of_work import SqlUnitOfWork
from services.ingest.adapters import OUTBOX
from tests.conftest import TeamCredentials

RELAY_NOW = timedelta(0)


class CountingPublisher(BusPublisher):
    """The real publisher, remembering every message id it was asked to publish."""

    def __init__(self, client: NatsClient, pause: float = 0.0):
        super().__init__(client)
        self.published: list[str] = []
        self._pause = pause

    async def publish(self, message: OutgoingMessage, headers: Mapping[str, str] | None = None) -> int:
        self.published.append(message.msg_id)
        if self._pause:
            await asyncio.sleep(self._pause)  # hold the relay's row locks a little longer
        return await super().publish(message, headers)


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
def outbox(sessions: async_sessionmaker[AsyncSession], nats_client: NatsClient) -> Outbox:
    return Outbox(OUTBOX, sessions, BusPublisher(nats_client))


@pytest.fixture
async def msg_ids_to_clean(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[list[str]]:
    """Outbox rows a test leaves on purpose are deleted afterwards, so no other relay sees them."""
    msg_ids: list[str] = []
    yield msg_ids
    async with sessions() as session, session.begin():
        await session.execute(delete(OUTBOX).where(OUTBOX.c.msg_id.in_(msg_ids)))


def unique_subject(team: TeamCredentials, label: str) -> str:
    return f"events.{team.team_id}.{label}_{uuid.uuid4().hex[:10]}"


def message_on(subject: str, team: TeamCredentials, payload: bytes = b"payload") -> OutgoingMessage:
    return OutgoingMessage(
        subject=subject, payload=payload, msg_id=str(uuid.uuid4()), project_id=team.team_id
    )


async def stream_count(js: JetStreamContext, subject: str, stream: str = "EVENTS") -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def outbox_rows(sessions: async_sessionmaker[AsyncSession], msg_ids: Sequence[str]) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.msg_id.in_(list(msg_ids)))
        )
    return int(count or 0)


async def stage_and_commit_without_publishing(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, messages: Sequence[OutgoingMessage]
) -> None:
    """What a crash between the commit and the publish leaves behind."""
    async with sessions() as session, session.begin():
        await outbox.stage(session, messages)


async def test_committed_unit_of_work_publishes_with_headers_and_deletes_its_rows(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    first = message_on(unique_subject(team, "first"), team, b"one")
    second = message_on(unique_subject(team, "second"), team, b"two")

    async with SqlUnitOfWork(sessions, outbox) as uow:
        uow.publish(first)
        uow.publish(second)
        receipts = await uow.commit()

    assert set(receipts) == {first.msg_id, second.msg_id}
    for message in (first, second):
        stored = await js.get_last_msg("EVENTS", message.subject)
        assert stored.seq == receipts[message.msg_id]
        assert stored.data == message.payload
        assert stored.headers is not None
        assert stored.headers[MSG_ID] == message.msg_id
        assert stored.headers[PROJECT_HEADER] == team.team_id
    # The rows of acknowledged messages go in the background.
    await outbox.settled()
    assert await outbox_rows(sessions, [first.msg_id, second.msg_id]) == 0


async def test_uncommitted_unit_of_work_stores_and_publishes_nothing(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    announced = message_on(unique_subject(team, "announced"), team)
    staged = message_on(unique_subject(team, "staged"), team)

    async with SqlUnitOfWork(sessions, outbox) as uow:
        uow.publish(announced)
        await outbox.stage(uow.session, [staged])  # written, but the transaction never commits

    assert await outbox_rows(sessions, [announced.msg_id, staged.msg_id]) == 0
    await outbox.relay_once(older_than=RELAY_NOW)
    assert await stream_count(js, announced.subject) == 0
    assert await stream_count(js, staged.subject) == 0


async def test_unit_of_work_rollback_forgets_announced_messages(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    forgotten = message_on(unique_subject(team, "forgotten"), team)
    kept = message_on(unique_subject(team, "kept"), team)

    async with SqlUnitOfWork(sessions, outbox) as uow:
        uow.publish(forgotten)
        await uow.rollback()
        uow.publish(kept)
        receipts = await uow.commit()

    assert set(receipts) == {kept.msg_id}
    assert await stream_count(js, kept.subject) == 1
    assert await stream_count(js, forgotten.subject) == 0


def fact_about(team_id: str, contact_id: str = "") -> OutgoingMessage:
    """A tracking record as a handler announces it."""
    trigger_id = str(uuid.uuid4())
    record = tracking_pb2.TrackingRecord(
        trigger_id=trigger_id,
        project_id=team_id,
        trigger_accepted=tracking_pb2.TriggerAccepted(event_id=str(uuid.uuid4()), contact_id=contact_id),
    )
    return tracking_message(record, fact_id=trigger_id)


def records_of(payload: bytes | None) -> list[tracking_pb2.TrackingRecord]:
    return list(tracking_pb2.TrackingBatch.FromString(payload or b"").records)


async def test_a_unit_of_work_publishes_its_facts_as_a_batch_per_project_after_its_other_messages(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    elsewhere = f"{team.team_id}-b"
    event = message_on(unique_subject(team, "tracked"), team)
    facts = [fact_about(team.team_id), fact_about(elsewhere), fact_about(team.team_id)]

    async with SqlUnitOfWork(sessions, outbox) as uow:
        uow.publish(facts[0])
        uow.publish(event)
        uow.publish(facts[1])
        uow.publish(facts[2])
        receipts = await uow.commit()

    ours = await js.get_last_msg("TRACKING", batch_subject(team.team_id))
    theirs = await js.get_last_msg("TRACKING", batch_subject(elsewhere))
    assert records_of(ours.data) == [tracking_pb2.TrackingRecord.FromString(facts[n].payload) for n in (0, 2)]
    assert records_of(theirs.data) == [tracking_pb2.TrackingRecord.FromString(facts[1].payload)]
    assert ours.headers is not None
    assert ours.headers[PROJECT_HEADER] == team.team_id
    assert set(receipts) == {event.msg_id, ours.headers[MSG_ID], (theirs.headers or {})[MSG_ID]}
    assert await stream_count(js, f"tracking.{team.team_id}.trigger_accepted", "TRACKING") == 0
    await outbox.settled()
    assert await outbox_rows(sessions, list(receipts)) == 0


async def test_a_batch_the_relay_published_again_is_deduplicated_by_jetstream(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    async with SqlUnitOfWork(sessions, outbox) as uow:
        uow.publish(fact_about(team.team_id))
        uow.publish(fact_about(team.team_id))
        publication = await uow.commit_unpublished()

    # The relay publishes the committed batch (as after a crash), then the commit's own publish runs.
    assert await outbox.relay_once(older_than=RELAY_NOW) >= 1
    receipts = await publication()

    [sequence] = receipts.values()
    assert (await js.get_last_msg("TRACKING", batch_subject(team.team_id))).seq == sequence
    assert await stream_count(js, batch_subject(team.team_id), "TRACKING") == 1


async def test_erasing_a_contact_takes_its_facts_out_of_unpublished_batches_and_keeps_the_others(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    team: TeamCredentials,
    msg_ids_to_clean: list[str],
) -> None:
    erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
    shared = in_batches([fact_about(team.team_id, erased), fact_about(team.team_id, kept)])
    own = in_batches([fact_about(team.team_id, erased)])
    event = message_on(unique_subject(team, "erased"), team, f"about {erased}".encode())
    left = [*shared, *own, event]
    msg_ids_to_clean += [m.msg_id for m in left]
    await stage_and_commit_without_publishing(sessions, outbox, left)

    async with sessions() as session, session.begin():
        changed = await delete_naming(session, OUTBOX, team.team_id, [erased])

    assert changed == 3
    async with sessions() as session:
        rows = (
            await session.execute(
                select(OUTBOX.c.msg_id, OUTBOX.c.payload).where(OUTBOX.c.msg_id.in_([m.msg_id for m in left]))
            )
        ).all()
    [(msg_id, payload)] = rows
    assert msg_id == shared[0].msg_id
    assert [r.trigger_accepted.contact_id for r in records_of(payload)] == [kept]


async def test_relay_publishes_rows_a_crash_left_behind_and_deletes_them(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    left_behind = [
        message_on(unique_subject(team, f"crash{index}"), team, b"%d" % index) for index in range(3)
    ]
    await stage_and_commit_without_publishing(sessions, outbox, left_behind)
    assert await outbox_rows(sessions, [m.msg_id for m in left_behind]) == 3

    relayed = await outbox.relay_once(older_than=RELAY_NOW)

    assert relayed >= 3
    assert await outbox_rows(sessions, [m.msg_id for m in left_behind]) == 0
    for message in left_behind:
        stored = await js.get_last_msg("EVENTS", message.subject)
        assert stored.data == message.payload
        assert stored.headers is not None
        assert stored.headers[MSG_ID] == message.msg_id
        assert stored.headers[PROJECT_HEADER] == team.team_id


async def test_relay_leaves_rows_younger_than_its_threshold(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    js: JetStreamContext,
    team: TeamCredentials,
    msg_ids_to_clean: list[str],
) -> None:
    fresh = message_on(unique_subject(team, "fresh"), team)
    msg_ids_to_clean.append(fresh.msg_id)
    await stage_and_commit_without_publishing(sessions, outbox, [fresh])

    await outbox.relay_once(older_than=timedelta(minutes=5))

    assert await outbox_rows(sessions, [fresh.msg_id]) == 1
    assert await stream_count(js, fresh.subject) == 0


async def test_republishing_a_message_id_is_deduplicated_by_jetstream(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    js: JetStreamContext,
    nats_client: NatsClient,
    team: TeamCredentials,
) -> None:
    message = message_on(unique_subject(team, "dedupe"), team)
    publisher = BusPublisher(nats_client)
    first_sequence = await publisher.publish(message)

    # The process published, then crashed before deleting its row: the relay publishes it again.
    await stage_and_commit_without_publishing(sessions, outbox, [message])
    await outbox.relay_once(older_than=RELAY_NOW)
    second_sequence = await publisher.publish(message)

    assert second_sequence == first_sequence
    assert await stream_count(js, message.subject) == 1
    assert await outbox_rows(sessions, [message.msg_id]) == 0


async def test_concurrent_relays_publish_each_row_once(
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    nats_client: NatsClient,
    team: TeamCredentials,
) -> None:
    subject = unique_subject(team, "relays")
    left_behind = [message_on(subject, team, b"%d" % index) for index in range(24)]
    first_publisher, second_publisher = (
        CountingPublisher(nats_client, pause=0.01),
        CountingPublisher(nats_client, pause=0.01),
    )
    first = Outbox(OUTBOX, sessions, first_publisher)
    second = Outbox(OUTBOX, sessions, second_publisher)
    await stage_and_commit_without_publishing(sessions, first, left_behind)

    async def drain(outbox: Outbox) -> int:
        total = 0
        while relayed := await outbox.relay_once(older_than=RELAY_NOW, batch=4):
            total += relayed
        return total

    await asyncio.gather(drain(first), drain(second))

    ours = {message.msg_id for message in left_behind}
    calls = Counter(m for m in [*first_publisher.published, *second_publisher.published] if m in ours)
    assert set(calls) == ours
    assert max(calls.values()) == 1, "a row was published by both relays"
    assert any(m in ours for m in first_publisher.published)
    assert any(m in ours for m in second_publisher.published), "the relays did not share the rows"
    assert await stream_count(js, subject) == len(left_behind)
    assert await outbox_rows(sessions, list(ours)) == 0


async def test_one_unpublishable_row_does_not_block_the_rows_behind_it(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    js: JetStreamContext,
    team: TeamCredentials,
    msg_ids_to_clean: list[str],
) -> None:
    unpublishable = message_on(f"events.{team.team_id}.bad subject", team)
    publishable = message_on(unique_subject(team, "behind"), team)
    msg_ids_to_clean.extend([unpublishable.msg_id, publishable.msg_id])
    await stage_and_commit_without_publishing(sessions, outbox, [unpublishable, publishable])

    await outbox.relay_once(older_than=RELAY_NOW)

    assert await stream_count(js, publishable.subject) == 1


async def test_get_last_msg_finds_nothing_on_an_unused_subject(
    js: JetStreamContext, team: TeamCredentials
) -> None:
    """The read-back used above really fails when nothing was published."""
    with pytest.raises(NotFoundError):
        await js.get_last_msg("EVENTS", unique_subject(team, "unused"))


async def test_rows_a_failed_delete_leaves_behind_are_relayed_once_more_and_deduplicated(
    sessions: async_sessionmaker[AsyncSession],
    outbox: Outbox,
    js: JetStreamContext,
    nats_client: NatsClient,
    team: TeamCredentials,
) -> None:
    def unreachable() -> AsyncSession:
        raise ConnectionError("the database went away after the commit")

    # Published and acknowledged, but the rows cannot be deleted: the database is gone.
    cut_off = Outbox(OUTBOX, unreachable, BusPublisher(nats_client))  # type: ignore[arg-type]
    message = message_on(unique_subject(team, "undeleted"), team)
    async with SqlUnitOfWork(sessions, cut_off) as uow:
        uow.publish(message)
        receipts = await uow.commit()
    await cut_off.settled()
    assert await outbox_rows(sessions, [message.msg_id]) == 1

    await outbox.relay_once(older_than=RELAY_NOW)

    assert await outbox_rows(sessions, [message.msg_id]) == 0
    assert await stream_count(js, message.subject) == 1
    assert (await js.get_last_msg("EVENTS", message.subject)).seq == receipts[message.msg_id]


async def test_many_acknowledged_rows_are_deleted_in_batches(
    sessions: async_sessionmaker[AsyncSession], outbox: Outbox, js: JetStreamContext, team: TeamCredentials
) -> None:
    subject = unique_subject(team, "many")
    messages = [message_on(subject, team, b"%d" % index) for index in range(DELETE_BATCH + 10)]
    async with SqlUnitOfWork(sessions, outbox) as uow:
        for message in messages:
            uow.publish(message)
        receipts = await uow.commit()
    await outbox.settled()
    assert len(receipts) == len(messages)
    assert await outbox_rows(sessions, [m.msg_id for m in messages]) == 0
    assert await stream_count(js, subject) == len(messages)


async def test_publish_many_answers_each_message_on_its_own(
    js: JetStreamContext, nats_client: NatsClient, team: TeamCredentials
) -> None:
    stored = [message_on(unique_subject(team, f"many{index}"), team) for index in range(3)]
    nowhere = message_on(f"nostream.{uuid.uuid4().hex}", team)  # no stream listens: nobody acknowledges
    refused = message_on("events.bad subject", team)  # NATS refuses a subject with a space
    publisher = BusPublisher(nats_client, timeout=2.0)

    outcomes = await publisher.publish_many([stored[0], nowhere, stored[1], refused, stored[2]])

    sequences = [outcomes[0], outcomes[2], outcomes[4]]
    for message, sequence in zip(stored, sequences, strict=True):
        assert isinstance(sequence, int) and sequence > 0
        assert (await js.get_last_msg("EVENTS", message.subject)).seq == sequence
    assert isinstance(outcomes[1], Unavailable)
    assert isinstance(outcomes[3], PublishRejected)
    assert await publisher.publish_many([]) == []
