"""The stats timeline on real PostgreSQL: a project's triggers, deliveries and latency by bucket,
the bus's sampled queue lag, and a timing of the first dashboard view over 100,000 triggers."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from kernel.lag import ConsumerLag
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.domain import StatsBucket, StatsTimeline
from services.tracker.handlers import QUEUE_LAG_KEPT, sample_queue_lag, stats_timeline
from tests.conftest import TeamCredentials
from tests.integration.test_repositories_tracker import TriggerStory, apply


def bucket_of(timeline: StatsTimeline, at: datetime) -> StatsBucket:
    [bucket] = [b for b in timeline.buckets if b.at <= at < b.at + timeline.step]
    return bucket


async def test_the_timeline_counts_each_bucket_and_leaves_the_others_empty(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now = utcnow().replace(microsecond=0)
    minute = (now - timedelta(minutes=30)).replace(second=10)  # both in the same minute's bucket
    done = TriggerStory(team.team_id, accepted_at=minute)
    failed = TriggerStory(team.team_id, accepted_at=minute + timedelta(seconds=1))
    waiting = TriggerStory(team.team_id, accepted_at=now - timedelta(minutes=10))
    old = TriggerStory(team.team_id, accepted_at=now - timedelta(hours=2))
    foreign = TriggerStory(f"other-{uuid.uuid4().hex[:8]}", accepted_at=now - timedelta(minutes=10))
    done_run, failed_run, foreign_run = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(
        sessions,
        done.accepted(),
        done.matched({"welcome": done_run}),
        done.run_started(done_run, "welcome"),
        done.delivery(done_run, "greet", sent=True, at_offset_seconds=3),
        done.run_finished(done_run),
        failed.accepted(),
        failed.matched({"welcome": failed_run}),
        failed.run_started(failed_run, "welcome"),
        failed.delivery(failed_run, "greet", sent=False, at_offset_seconds=5),
        failed.run_finished(failed_run, completed=False),
        waiting.accepted(),
        old.accepted(),
        foreign.accepted(),
        foreign.matched({"welcome": foreign_run}),
        foreign.run_started(foreign_run, "welcome"),
        foreign.delivery(foreign_run, "greet", sent=True),
    )

    timeline = await stats_timeline(team.team_id, "PT1H", "", TrackerSqlUnitOfWork(sessions))

    assert (timeline.window, timeline.step, len(timeline.buckets)) == ("PT1H", timedelta(minutes=1), 60)
    assert timeline.since == timeline.buckets[0].at and timeline.buckets[-1].at <= timeline.until
    busy = bucket_of(timeline, done.accepted_at)
    assert busy is bucket_of(timeline, failed.accepted_at)
    assert (busy.events, busy.triggers) == (2, {"completed": 1, "failed": 1})
    assert busy.deliveries == {("email", "sent"): 1, ("email", "failed"): 1}
    assert busy.dead_letters == 1
    assert (busy.p50_ms, busy.p99_ms) == (4000.0, 4980.0)
    later = bucket_of(timeline, waiting.accepted_at)
    assert (later.events, later.triggers, later.deliveries, later.p50_ms) == (1, {"queued": 1}, {}, None)
    assert sum(b.events for b in timeline.buckets) == 3
    assert timeline.triggers_by_status() == {
        "scheduled": 0,
        "queued": 1,
        "processing": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert timeline.deliveries_by_channel() == {("email", "failed"): 1, ("email", "sent"): 1}
    assert timeline.dead_letters == 1


async def test_the_queue_lag_is_sampled_and_each_bucket_shows_its_highest_sample(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    big = 10**9 + uuid.uuid4().int % 1000

    async def lag() -> list[ConsumerLag]:
        return [
            ConsumerLag("EVENTS", "matcher", big, 5, 0, 12.5),
            ConsumerLag("RUNS", "executor", 1, 2, 0, 99.25),
        ]

    sample = await sample_queue_lag(lag, TrackerSqlUnitOfWork(sessions))
    async with sessions() as session, session.begin():
        await session.execute(
            text("INSERT INTO tracker.queue_lag_samples VALUES (:at, 1, 1.0)"),
            {"at": utcnow() - QUEUE_LAG_KEPT - timedelta(minutes=1)},
        )
    await sample_queue_lag(lag, TrackerSqlUnitOfWork(sessions))  # forgets the day-old sample

    timeline = await stats_timeline(team.team_id, "PT1H", "PT10M", TrackerSqlUnitOfWork(sessions))

    assert (sample.pending, sample.oldest_age_seconds) == (big + 8, 99.25)
    last = bucket_of(timeline, sample.sampled_at)
    assert (last.queue_pending, last.queue_oldest_age_seconds) == (big + 8, 99.25)
    async with sessions() as session:
        oldest = await session.scalar(text("SELECT min(sampled_at) FROM tracker.queue_lag_samples"))
    assert oldest >= utcnow() - QUEUE_LAG_KEPT


async def test_the_first_view_over_100000_triggers_reads_them_through_the_indexes(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """Not a timed assertion: prints how long the timeline took, and its plan, for the record."""
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                """
                INSERT INTO tracker.triggers (id, team_id, event_id, event_name, contact_id, status,
                    created_at, matched_at, first_step_at)
                SELECT gen_random_uuid(), :team, gen_random_uuid(), 'user_signup', 'c' || n % 1000,
                       CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'completed' END,
                       now() - (n * interval '35 milliseconds'),
                       now() - (n * interval '35 milliseconds') + interval '20 milliseconds',
                       now() - (n * interval '35 milliseconds') + (n % 500) * interval '1 millisecond'
                  FROM generate_series(1, 100000) AS n
                """
            ),
            {"team": team.team_id},
        )
        await session.execute(
            text(
                """
                INSERT INTO tracker.trigger_deliveries (delivery_id, trigger_id, run_id, step_id, channel,
                    sent, attempts, detail, recorded_at)
                SELECT gen_random_uuid(), id, gen_random_uuid(), 'greet', 'email', status = 'completed', 1,
                       '', first_step_at
                  FROM tracker.triggers WHERE team_id = :team
                """
            ),
            {"team": team.team_id},
        )
        await session.execute(text("ANALYZE tracker.triggers"))
        await session.execute(text("ANALYZE tracker.trigger_deliveries"))

    started = time.perf_counter()
    timeline = await stats_timeline(team.team_id, "PT1H", "", TrackerSqlUnitOfWork(sessions))
    took = time.perf_counter() - started

    assert sum(b.events for b in timeline.buckets) == 100000
    assert timeline.triggers_by_status()["failed"] == 10000
    assert timeline.deliveries_by_channel() == {("email", "failed"): 10000, ("email", "sent"): 90000}
    async with sessions() as session:
        plans = []
        for query in ("TIMELINE_TRIGGERS", "TIMELINE_DELIVERIES"):
            from services.tracker import adapters

            params = {
                "team_id": team.team_id,
                "since": timeline.since,
                "until": timeline.since + timedelta(hours=1),
                "step": 60.0,
                "now": timeline.until,
            }
            explain = text("EXPLAIN (ANALYZE, BUFFERS) " + str(getattr(adapters, query)))
            plans.append((query, [row[0] for row in await session.execute(explain, params)]))
    started = time.perf_counter()
    quiet = await stats_timeline(f"quiet-{uuid.uuid4().hex[:8]}", "PT1H", "", TrackerSqlUnitOfWork(sessions))
    quiet_took = time.perf_counter() - started
    assert sum(b.events for b in quiet.buckets) == 0 and quiet.deliveries_by_channel() == {}
    print(f"\nstats timeline over 100,000 triggers and deliveries: {took * 1000:.0f} ms")
    print(f"stats timeline of a project with none, beside them: {quiet_took * 1000:.0f} ms")
    for query, plan in plans:
        print(query, *plan, sep="\n  ")
