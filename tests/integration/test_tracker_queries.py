"""The tracker's queries on real PostgreSQL and NATS: listing triggers (filters, pagination), a
contact's timeline, latency per event name, and the bus's queue lag."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import api
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import tracking_pb2
from kernel import bus
from kernel.clock import to_timestamp, utcnow
from kernel.errors import Unavailable
from kernel.lag import queue_lag
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.domain import (
    Page,
    Position,
    TimelineEntry,
    TriggerListing,
    TriggerQuery,
    TriggerStatus,
)
from services.tracker.handlers import record_facts
from tests.conftest import Infrastructure, TeamCredentials
from tests.integration.test_repositories_tracker import TriggerStory, apply


def story_at(team: TeamCredentials, seconds_ago: float, **fields: object) -> TriggerStory:
    at = utcnow().replace(microsecond=0) - timedelta(seconds=seconds_ago)
    return TriggerStory(team.team_id, accepted_at=at, **fields)  # type: ignore[arg-type]


def completed(
    story: TriggerStory, matched_after: float = 1, first_step_after: float = 3
) -> list[tracking_pb2.TrackingRecord]:
    run_id = uuid.uuid4()
    return [
        story.accepted(),
        story.matched({"welcome": run_id}, at_offset_seconds=matched_after),
        story.run_started(run_id, "welcome"),
        story.delivery(run_id, "greet", sent=True, at_offset_seconds=first_step_after),
        story.run_finished(run_id),
    ]


async def listed(
    sessions: async_sessionmaker[AsyncSession], team_id: str, query: TriggerQuery
) -> Page[TriggerListing]:
    async with TrackerSqlUnitOfWork(sessions) as uow:
        return await uow.triggers.list_triggers(team_id, query, utcnow())


async def all_pages(
    sessions: async_sessionmaker[AsyncSession], team_id: str, query: TriggerQuery
) -> list[list[uuid.UUID]]:
    pages, after = [], query.after
    while True:
        page = await listed(sessions, team_id, TriggerQuery(**{**query.__dict__, "after": after}))
        pages.append([item.view.id for item in page.items])
        if page.next is None:
            return pages
        after = page.next


async def test_the_first_step_is_the_earliest_delivery_whatever_order_facts_come_in(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = story_at(team, 60)
    run_id = uuid.uuid4()
    later = story.delivery(run_id, "second", sent=True, at_offset_seconds=5)
    earlier = story.delivery(run_id, "first", sent=False, at_offset_seconds=2)

    await record_facts([later, story.accepted(), later], TrackerSqlUnitOfWork(sessions))
    await record_facts([earlier, story.matched({"welcome": run_id}), later], TrackerSqlUnitOfWork(sessions))
    await apply(sessions, later)

    async with sessions() as session:
        first_step_at = await session.scalar(
            text("SELECT first_step_at FROM tracker.triggers WHERE id = :id"), {"id": story.trigger_id}
        )
    assert first_step_at == story.accepted_at + timedelta(seconds=2)


async def test_triggers_are_listed_newest_first_in_pages_that_new_triggers_do_not_shift(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    stories = [story_at(team, 100 - i) for i in range(7)]
    twin = TriggerStory(team.team_id, accepted_at=stories[3].accepted_at)  # the same moment as another
    for story in [*stories, twin]:
        await apply(sessions, story.accepted())
    newest_first = sorted(
        [*stories, twin], key=lambda story: (story.accepted_at, story.trigger_id), reverse=True
    )

    first = await listed(sessions, team.team_id, TriggerQuery(limit=3))
    assert [item.view.id for item in first.items] == [s.trigger_id for s in newest_first[:3]]
    assert first.next is not None
    # A newer trigger arriving meanwhile shifts no later page.
    await apply(sessions, story_at(team, 1).accepted())
    rest = await all_pages(sessions, team.team_id, TriggerQuery(limit=3, after=first.next))

    assert rest == [
        [s.trigger_id for s in newest_first[3:6]],
        [s.trigger_id for s in newest_first[6:]],
    ]
    item = first.items[0]
    assert (item.view.event_name, item.contact_id, item.view.status) == (
        "user_signup",
        newest_first[0].contact_id,
        TriggerStatus.QUEUED,
    )


async def test_each_filter_narrows_the_list(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    done = story_at(team, 50, event_name="order.completed")
    queued = story_at(team, 40, event_name="order.completed")
    other = story_at(team, 30, event_name="user_signup")
    future = utcnow() + timedelta(days=1)
    scheduled, due = story_at(team, 20), story_at(team, 10)
    await apply(sessions, *completed(done), queued.accepted(), other.accepted())
    soon = utcnow() + timedelta(seconds=1)
    for story, moment in ((scheduled, future), (due, soon)):
        fact = story.accepted()
        fact.trigger_accepted.scheduled_for.CopyFrom(to_timestamp(moment))
        await apply(sessions, fact)
    # `due` is stored scheduled; once its time has come it is queued, before any fact says so.
    await asyncio.sleep(max((soon - utcnow()).total_seconds(), 0) + 0.05)

    async def ids(**query: object) -> set[uuid.UUID]:
        page = await listed(sessions, team.team_id, TriggerQuery(**query))  # type: ignore[arg-type]
        return {item.view.id for item in page.items}

    assert await ids() == {s.trigger_id for s in (done, queued, other, scheduled, due)}
    assert await ids(statuses=("completed",)) == {done.trigger_id}
    assert await ids(statuses=("queued",)) == {queued.trigger_id, other.trigger_id, due.trigger_id}
    assert await ids(statuses=("scheduled",)) == {scheduled.trigger_id}
    assert await ids(statuses=("completed", "scheduled")) == {done.trigger_id, scheduled.trigger_id}
    assert await ids(event_name="order.completed") == {done.trigger_id, queued.trigger_id}
    assert await ids(contact_id=other.contact_id) == {other.trigger_id}
    assert await ids(created_after=queued.accepted_at, created_before=scheduled.accepted_at) == {
        queued.trigger_id,
        other.trigger_id,
    }
    assert await ids(event_name="order.completed", statuses=("queued",)) == {queued.trigger_id}
    page = await listed(sessions, team.team_id, TriggerQuery(statuses=("completed",)))
    assert page.items[0].view.summary.sent == 1 and page.items[0].view.started_at is not None
    assert await listed(sessions, f"other-{uuid.uuid4().hex[:6]}", TriggerQuery()) == Page([], None)


async def test_a_contacts_timeline_tells_its_story_newest_first(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    older = story_at(team, 60)
    newer = story_at(team, 30, contact_id=older.contact_id, event_name="order.completed")
    stranger = story_at(team, 20)
    await apply(sessions, *completed(older), *completed(newer), *completed(stranger))

    entries: list[TimelineEntry] = []
    after: Position | None = None
    while True:
        async with TrackerSqlUnitOfWork(sessions) as uow:
            page = await uow.triggers.timeline(team.team_id, older.contact_id, 3, after, utcnow())
        entries += page.items
        if page.next is None:
            break
        after = page.next

    assert [(e.kind, e.trigger_id, e.at - e_story.accepted_at) for e, e_story in zip(
        entries, [newer] * 4 + [older] * 4, strict=True
    )] == [
        (kind, story.trigger_id, timedelta(seconds=offset))
        for story in (newer, older)
        for kind, offset in (("run_finished", 4), ("delivery", 3), ("run_started", 2), ("event", 0))
    ]  # fmt: skip
    finished, delivery, started, event = entries[:4]
    assert (event.event_name, event.outcome, event.run_id) == ("order.completed", "completed", None)
    assert (started.workflow_key, started.outcome, started.event_name) == (
        "welcome",
        "started",
        "order.completed",
    )
    assert (delivery.step_id, delivery.channel, delivery.outcome, delivery.detail) == (
        "greet",
        "email",
        "sent",
        "250 OK",
    )
    assert (finished.outcome, finished.run_id) == ("completed", delivery.run_id)
    async with TrackerSqlUnitOfWork(sessions) as uow:
        theirs = await uow.triggers.timeline(
            f"other-{uuid.uuid4().hex[:6]}", older.contact_id, 50, None, utcnow()
        )
    assert theirs.items == []


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def test_latency_per_event_name_over_the_window(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    matched_after = [0.05 * (i + 1) for i in range(20)]  # 50 ms … 1 s
    first_step_after = [m + 0.5 + 0.01 * i for i, m in enumerate(matched_after)]
    facts = []
    for m, f in zip(matched_after, first_step_after, strict=True):
        facts += completed(story_at(team, 120, event_name="lat.fast"), m, f)
    waiting = story_at(team, 100, event_name="lat.fast")  # accepted, not matched yet
    outside = story_at(team, 7200, event_name="lat.fast")  # before the window
    facts += [waiting.accepted(), *completed(outside)]
    facts += completed(story_at(team, 90, event_name="lat.slow"), 2, 4)
    await record_facts(facts, TrackerSqlUnitOfWork(sessions))

    until = utcnow()
    async with TrackerSqlUnitOfWork(sessions) as uow:
        figures = await uow.triggers.latency(team.team_id, until - timedelta(hours=1), until)

    fast, slow = figures
    assert (fast.event_name, fast.count, fast.matched, fast.first_step_done) == ("lat.fast", 21, 20, 20)
    assert fast.accepted_to_matched is not None and fast.accepted_to_first_step is not None
    for latency, samples in (
        (fast.accepted_to_matched, matched_after),
        (fast.accepted_to_first_step, first_step_after),
    ):
        expected = [
            sum(samples) / len(samples),
            *(percentile_cont(samples, p) for p in (0.5, 0.95, 0.99)),
            max(samples),
        ]
        got = [latency.avg_ms, latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms]
        assert got == pytest.approx([value * 1000 for value in expected], abs=0.01)
    assert (slow.event_name, slow.count) == ("lat.slow", 1)
    assert slow.accepted_to_matched is not None and slow.accepted_to_matched.p99_ms == pytest.approx(2000)
    assert slow.accepted_to_first_step is not None and slow.accepted_to_first_step.avg_ms == pytest.approx(
        4000
    )


async def test_a_scheduled_triggers_latency_counts_from_its_due_time(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = story_at(team, 600, event_name="lat.scheduled")
    accepted = story.accepted()
    accepted.trigger_accepted.scheduled_for.CopyFrom(to_timestamp(story.accepted_at + timedelta(seconds=300)))
    facts = completed(story, 300.25, 301)
    await apply(sessions, accepted, *facts[1:])

    until = utcnow()
    async with TrackerSqlUnitOfWork(sessions) as uow:
        [figures] = await uow.triggers.latency(team.team_id, until - timedelta(hours=1), until)
    assert figures.accepted_to_matched is not None and figures.accepted_to_first_step is not None
    assert figures.accepted_to_matched.avg_ms == pytest.approx(250)
    assert figures.accepted_to_first_step.avg_ms == pytest.approx(1000)


async def test_queue_lag_counts_what_each_consumer_has_not_acknowledged(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    name = f"LAG{uuid.uuid4().hex[:8].upper()}"
    prefix = name.lower()
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    try:
        await js.publish(f"{prefix}.other", b"not for the filtered consumer")
        for i in range(3):
            await js.publish(f"{prefix}.work", str(i).encode())
        for durable, filter_subject in (("busy", f"{prefix}.work"), ("idle", f"{prefix}.none"), ("all", "")):
            await js.add_consumer(
                name,
                api.ConsumerConfig(
                    durable_name=durable,
                    filter_subject=filter_subject or None,
                    ack_policy=api.AckPolicy.EXPLICIT,
                ),
            )
        subscription = await js.pull_subscribe_bind(durable="busy", stream=name)
        [first] = await subscription.fetch(1, timeout=2)
        await first.ack_sync()
        [second] = await subscription.fetch(1, timeout=2)  # delivered, not acknowledged

        lags = {lag.consumer: lag for lag in await queue_lag(js) if lag.stream == name}

        busy, idle, every = lags["busy"], lags["idle"], lags["all"]
        assert (busy.pending, busy.ack_pending, busy.redelivered) == (1, 1, 0)
        assert 0 < busy.oldest_pending_age_seconds < 60
        assert (idle.pending, idle.ack_pending, idle.oldest_pending_age_seconds) == (0, 0, 0.0)
        assert (every.pending, every.ack_pending) == (4, 0)
        assert every.oldest_pending_age_seconds >= busy.oldest_pending_age_seconds
        await second.ack_sync()
        [third] = await subscription.fetch(1, timeout=2)
        await third.ack_sync()
        lags = {lag.consumer: lag for lag in await queue_lag(js) if lag.stream == name}
        assert (lags["busy"].pending, lags["busy"].ack_pending, lags["busy"].oldest_pending_age_seconds) == (
            0,
            0,
            0.0,
        )
    finally:
        await js.delete_stream(name)


async def test_queue_lag_of_an_empty_stream_is_zero(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    name = f"LAG{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    try:
        await js.add_consumer(
            name, api.ConsumerConfig(durable_name="reader", ack_policy=api.AckPolicy.EXPLICIT)
        )
        lags = [lag for lag in await queue_lag(js) if lag.stream == name]
        assert [
            (lag.consumer, lag.pending, lag.ack_pending, lag.oldest_pending_age_seconds) for lag in lags
        ] == [("reader", 0, 0, 0.0)]
    finally:
        await js.delete_stream(name)


async def test_queue_lag_without_the_bus_is_unavailable(infrastructure: Infrastructure) -> None:
    client = await bus.connect(infrastructure.nats_url, name="herald-lag-test")
    await client.close()

    with pytest.raises(Unavailable, match="The bus did not answer, so its queue lag is unknown"):
        await queue_lag(client.jetstream())
