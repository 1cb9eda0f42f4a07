"""Retention and erasure of the matcher, executor and tracker repositories (SqlLifecycleRepository)
on a real PostgreSQL: what is old goes, what is not stays, rounds are bounded, and erasure keeps
the other contacts' rows and figures."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from kernel.retention import ContactNames
from services.executor import adapters as executor
from services.matcher import adapters as matcher
from services.tracker import adapters as tracker
from tests.conftest import TeamCredentials

DAY = timedelta(days=1)


async def add(sessions: async_sessionmaker[AsyncSession], table: Table, *rows: Mapping[str, Any]) -> None:
    async with sessions() as session, session.begin():
        for row in rows:  # one statement each: rows may name different columns
            await session.execute(insert(table).values(**row))


async def count(sessions: async_sessionmaker[AsyncSession], table: Table, *conditions: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table).where(*conditions)) or 0)


# --------------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------------


def decision(team_id: str, contact_id: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "workflow_key": "welcome",
        "team_id": team_id,
        "trigger_id": uuid.uuid4(),
        "workflow_version": 1,
        "contact_id": contact_id,
        "matched": True,
        "reason": "matched",
        "run_id": uuid.uuid4(),
        "decided_at": at,
    }


def cooldown(team_id: str, workflow_key: str, last_run_at: datetime, until: datetime) -> dict[str, Any]:
    return {
        "team_id": team_id,
        "workflow_key": workflow_key,
        "contact_id": str(uuid.uuid4()),
        "last_run_at": last_run_at,
        "until": until,
    }


async def test_matcher_purges_old_decisions_in_bounded_rounds_and_only_expired_old_cooldowns(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    old = [decision(team_id, "c-1", now - 40 * DAY) for _ in range(3)]
    recent = decision(team_id, "c-1", now - 20 * DAY)
    await add(sessions, matcher.MATCH_DECISIONS, *old, recent)
    await add(
        sessions,
        matcher.DECIDED_EVENTS,
        *(
            {
                "event_id": d["event_id"],
                "trigger_id": d["trigger_id"],
                "team_id": team_id,
                "decided_at": d["decided_at"],
            }
            for d in (*old, recent)
        ),
    )
    await add(
        sessions,
        matcher.COOLDOWNS,
        cooldown(team_id, "expired-old", now - 40 * DAY, now - 39 * DAY),
        cooldown(team_id, "running-old", now - 40 * DAY, now + 10 * DAY),  # a 50-day cooldown
        cooldown(team_id, "expired-new", now - 2 * DAY, now - DAY),
    )

    async with sessions() as session, session.begin():
        first = await matcher.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 2)
        second = await matcher.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 2)

    assert first == {"matcher.match_decisions": 2, "matcher.decided_events": 2, "matcher.cooldowns": 1}
    assert second == {"matcher.match_decisions": 1, "matcher.decided_events": 1, "matcher.cooldowns": 0}
    assert await count(sessions, matcher.MATCH_DECISIONS, matcher.MATCH_DECISIONS.c.team_id == team_id) == 1
    kept = await count(sessions, matcher.COOLDOWNS, matcher.COOLDOWNS.c.team_id == team_id)
    assert kept == 2


async def test_matcher_erases_a_contacts_decisions_cooldowns_and_memberships_only(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    await add(sessions, matcher.MATCH_DECISIONS, decision(team_id, gone, now), decision(team_id, kept, now))
    await add(
        sessions,
        matcher.SEGMENT_MEMBERS,
        *(
            {"team_id": team_id, "segment_key": "vip", "contact_id": c, "entered_at": now}
            for c in (gone, kept)
        ),
    )
    await add(sessions, matcher.COOLDOWNS, {**cooldown(team_id, "w", now, now + DAY), "contact_id": gone})

    async with sessions() as session, session.begin():
        erased = await matcher.SqlLifecycleRepository(session).erase_contact(team_id, ContactNames(gone))

    assert erased == {
        "matcher.match_decisions": 1,
        "matcher.cooldowns": 1,
        "matcher.segment_members": 1,
        "matcher.outbox": 0,
    }
    assert await count(sessions, matcher.MATCH_DECISIONS, matcher.MATCH_DECISIONS.c.contact_id == kept) == 1
    assert await count(sessions, matcher.SEGMENT_MEMBERS, matcher.SEGMENT_MEMBERS.c.contact_id == kept) == 1


# --------------------------------------------------------------------------------------------
# Executor
# --------------------------------------------------------------------------------------------


def run(team_id: str, contact_id: str, status: str, finished_at: datetime | None) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "team_id": team_id,
        "trigger_id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "workflow_key": "welcome",
        "workflow_version": 1,
        "contact_id": contact_id,
        "status": status,
        "context": {"contact": {"email": "ada@example.com"}},
        "created_at": (finished_at or utcnow()) - DAY,
        "finished_at": finished_at,
    }


def step(run_id: uuid.UUID, step_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step_id": step_id,
        "position": 0,
        "definition": {"id": step_id, "type": "delay"},
        "status": "done",
        "attempts": 0,
        "detail": "",
    }


def dead_letter(team_id: str, run_id: uuid.UUID, failed_at: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "team_id": team_id,
        "run_id": run_id,
        "trigger_id": uuid.uuid4(),
        "step_id": "mail",
        "channel": "email",
        "error": "550 no such mailbox: ada@example.com",
        "attempts": 3,
        "failed_at": failed_at,
        "status": "dead",
        "replays": 0,
    }


async def test_executor_purges_finished_runs_never_a_running_one_and_old_dead_letters(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    finished = run(team_id, "c-1", "completed", now - 40 * DAY)
    failed = run(team_id, "c-1", "failed", now - 35 * DAY)
    waiting = {**run(team_id, "c-1", "running", None), "created_at": now - 100 * DAY}
    recent = run(team_id, "c-1", "completed", now - 5 * DAY)
    await add(sessions, executor.RUNS, finished, failed, waiting, recent)
    await add(
        sessions,
        executor.RUN_STEPS,
        step(finished["id"], "a"),
        step(finished["id"], "b"),
        step(waiting["id"], "a"),
    )
    await add(
        sessions,
        executor.TIMERS,
        {"run_id": waiting["id"], "step_id": "a", "team_id": team_id, "kind": "delay", "due_at": now + DAY},
    )
    await add(
        sessions,
        executor.DEAD_LETTERS,
        dead_letter(team_id, failed["id"], now - 35 * DAY),
        dead_letter(team_id, recent["id"], now - 5 * DAY),
    )

    async with sessions() as session, session.begin():
        first = await executor.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 1)
        second = await executor.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 1)
        third = await executor.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 1)

    assert [p["executor.runs"] for p in (first, second, third)] == [1, 1, 0]
    assert sum(p["executor.run_steps"] for p in (first, second, third)) == 2
    assert sum(p["executor.dead_letters"] for p in (first, second, third)) == 1
    assert sum(p["executor.timers"] for p in (first, second, third)) == 0
    left = await count(sessions, executor.RUNS, executor.RUNS.c.team_id == team_id)
    assert left == 2  # the waiting run (however old) and the recent one
    assert await count(sessions, executor.TIMERS, executor.TIMERS.c.run_id == waiting["id"]) == 1


async def test_executor_erases_every_run_of_the_contact_with_its_dead_letters_and_feed(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    waiting, done, other = (
        run(team_id, gone, "running", None),
        run(team_id, gone, "failed", now),
        run(team_id, kept, "completed", now),
    )
    await add(sessions, executor.RUNS, waiting, done, other)
    await add(sessions, executor.RUN_STEPS, step(waiting["id"], "a"), step(other["id"], "a"))
    await add(
        sessions,
        executor.DEAD_LETTERS,
        dead_letter(team_id, done["id"], now),
        dead_letter(team_id, other["id"], now),
    )
    feed = {
        "team_id": team_id,
        "run_id": done["id"],
        "step_id": "note",
        "title": "t",
        "body": "b",
        "url": "",
        "created_at": now,
    }
    await add(
        sessions,
        executor.FEED_ITEMS,
        {**feed, "id": uuid.uuid4(), "contact_id": gone, "external_id": "ada"},
        {**feed, "id": uuid.uuid4(), "contact_id": kept, "external_id": "bob"},
    )
    texts = {"team_id": team_id, "channel": "sms", "title": "", "body": "hi", "url": "", "created_at": now}
    await add(
        sessions,
        executor.DEV_MESSAGES,
        {**texts, "id": str(uuid.uuid4()), "to": "+14155550100"},
        {**texts, "id": str(uuid.uuid4()), "to": "+14155550199"},
    )

    async with sessions() as session, session.begin():
        erased = await executor.SqlLifecycleRepository(session).erase_contact(
            team_id, ContactNames(gone, "ada", "ada@example.com", "+14155550100")
        )

    assert erased == {
        "executor.dead_letters": 1,
        "executor.runs": 2,
        "executor.run_steps": 1,
        "executor.timers": 0,
        "executor.feed_items": 1,
        "executor.dev_messages": 1,
        "executor.outbox": 0,
    }
    assert await count(sessions, executor.RUNS, executor.RUNS.c.team_id == team_id) == 1
    assert await count(sessions, executor.DEAD_LETTERS, executor.DEAD_LETTERS.c.team_id == team_id) == 1
    assert await count(sessions, executor.FEED_ITEMS, executor.FEED_ITEMS.c.team_id == team_id) == 1
    assert await count(sessions, executor.DEV_MESSAGES, executor.DEV_MESSAGES.c.team_id == team_id) == 1


# --------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------


def trigger(team_id: str, status: str, created_at: datetime, **fields: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "team_id": team_id, "status": status, "created_at": created_at, **fields}


def tracked_run(
    trigger_id: uuid.UUID, contact_id: str, status: str, finished: bool
) -> tuple[dict[str, Any], ...]:
    run_id = uuid.uuid4()
    decision_row = {
        "trigger_id": trigger_id,
        "workflow_key": "welcome",
        "contact_id": contact_id,
        "workflow_version": 1,
        "matched": True,
        "reason": "matched",
        "run_id": run_id,
    }
    run_row = {
        "run_id": run_id,
        "trigger_id": trigger_id,
        "workflow_key": "welcome",
        "contact_id": contact_id,
        "status": status,
        "detail": "",
        "finished_at": utcnow() if finished else None,
    }
    delivery = {
        "delivery_id": uuid.uuid4(),
        "trigger_id": trigger_id,
        "run_id": run_id,
        "step_id": "mail",
        "channel": "email",
        "sent": status == "completed",
        "attempts": 1,
        "detail": "250 ok",
        "recorded_at": utcnow(),
    }
    return decision_row, run_row, delivery


async def add_runs(
    sessions: async_sessionmaker[AsyncSession], runs: list[tuple[dict[str, Any], ...]]
) -> None:
    for table, index in ((tracker.DECISIONS, 0), (tracker.RUNS, 1), (tracker.DELIVERIES, 2)):
        await add(sessions, table, *(r[index] for r in runs))


async def test_tracker_purges_old_triggers_fact_by_fact_never_one_still_processing(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    big = trigger(team_id, "completed", now - 40 * DAY, contacts=3)
    busy = trigger(team_id, "processing", now - 40 * DAY)
    later = trigger(team_id, "scheduled", now - 40 * DAY, scheduled_for=now + DAY)
    recent = trigger(team_id, "completed", now - 5 * DAY)
    await add(sessions, tracker.TRIGGERS, big, busy, later, recent)
    await add_runs(
        sessions,
        [tracked_run(big["id"], f"c-{n}", "completed", True) for n in range(3)]
        + [
            tracked_run(busy["id"], "c-9", "running", False),
            tracked_run(recent["id"], "c-1", "completed", True),
        ],
    )

    rounds = []
    for _ in range(3):
        async with sessions() as session, session.begin():
            rounds.append(await tracker.SqlLifecycleRepository(session).purge(team_id, now - 30 * DAY, 2))

    # Two facts of each kind a round: the big trigger goes once its last facts are gone.
    assert [r["tracker.trigger_decisions"] for r in rounds] == [2, 1, 0]
    assert [r["tracker.trigger_deliveries"] for r in rounds] == [2, 1, 0]
    assert [r["tracker.triggers"] for r in rounds] == [0, 1, 0]
    ids = {row for row in [big["id"], busy["id"], later["id"], recent["id"]]}
    async with sessions() as session:
        left = set(
            (
                await session.execute(select(tracker.TRIGGERS.c.id).where(tracker.TRIGGERS.c.id.in_(ids)))
            ).scalars()
        )
    assert left == {busy["id"], later["id"], recent["id"]}


async def test_tracker_erasure_drops_the_contacts_triggers_and_its_share_of_a_shared_one(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now, team_id = utcnow(), team.team_id
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    own = trigger(team_id, "completed", now, contact_id=gone, runs_expected=1, runs_finished=1)
    shared = trigger(
        team_id,
        "processing",
        now,
        contact_id=gone,
        contacts=3,
        runs_expected=3,
        runs_finished=2,
        runs_failed=1,
    )
    theirs = trigger(team_id, "completed", now, contact_id=kept, runs_expected=1, runs_finished=1)
    await add(sessions, tracker.TRIGGERS, own, shared, theirs)
    await add_runs(
        sessions,
        [
            tracked_run(own["id"], gone, "completed", True),
            tracked_run(shared["id"], gone, "failed", True),
            tracked_run(shared["id"], kept, "completed", True),
            tracked_run(shared["id"], "c-3", "running", False),
            tracked_run(theirs["id"], kept, "completed", True),
        ],
    )

    async with sessions() as session, session.begin():
        erased = await tracker.SqlLifecycleRepository(session).erase_contact(team_id, ContactNames(gone))

    assert erased == {
        "tracker.triggers": 2,  # its own trigger deleted, the shared one's contact emptied
        "tracker.trigger_decisions": 2,
        "tracker.trigger_runs": 2,
        "tracker.trigger_deliveries": 2,
        "tracker.trigger_matches": 0,
    }
    async with sessions() as session:
        rows = {
            row.id: row
            for row in await session.execute(
                select(tracker.TRIGGERS).where(
                    tracker.TRIGGERS.c.id.in_([own["id"], shared["id"], theirs["id"]])
                )
            )
        }
    assert set(rows) == {shared["id"], theirs["id"]}
    left = rows[shared["id"]]
    # The erased contact's failed run is no longer counted; the others' are as they were.
    assert (left.contact_id, left.runs_expected, left.runs_finished, left.runs_failed) == (None, 2, 1, 0)
    assert await count(sessions, tracker.DECISIONS, tracker.DECISIONS.c.contact_id == kept) == 2
    assert await count(sessions, tracker.DECISIONS, tracker.DECISIONS.c.contact_id == gone) == 0
