"""The executor's run repository on real PostgreSQL: idempotent adds, row locks, step states."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from kernel.steps import StepSpec
from services.executor.adapters import (
    SqlChannelRepository,
    SqlDeadLetterRepository,
    SqlDevMessageRepository,
    SqlFeedRepository,
    SqlRunRepository,
    SqlTimerRepository,
)
from services.executor.domain import (
    DeadLetter,
    DeadLetterQuery,
    FeedItem,
    OutgoingText,
    ProviderSettings,
    Run,
    RunStatus,
    StepState,
    StepStatus,
    Timer,
    TimerKind,
)
from tests.conftest import TeamCredentials
from tests.integration.waiting import backend_pid, until_waiting_on_lock


def new_run(team_id: str) -> Run:
    return Run(
        id=uuid.uuid4(),
        team_id=team_id,
        trigger_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        workflow_key="welcome",
        workflow_version=2,
        contact_id=str(uuid.uuid4()),
        context={"contact": {"email": "ada@example.com", "name": "Ada"}, "event": {"plan": "pro"}},
        steps=[
            StepState(StepSpec("greet", "email", subject="Hi {{contact.name}}", body="Hello"), position=0),
            StepState(
                StepSpec("follow-up", "email", subject="Still there?", body="Ping", html="<p>Ping</p>"), 1
            ),
        ],
        created_at=utcnow(),
    )


async def add(sessions: async_sessionmaker[AsyncSession], run: Run) -> bool:
    """Store a new run as the executor starts one: the run, then its steps with `save`."""
    async with sessions() as session, session.begin():
        runs = SqlRunRepository(session)
        if run.id not in await runs.add([run]):
            return False
        await runs.save(run)
        return True


async def test_add_stores_a_run_once(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)

    assert await add(sessions, run) is True
    assert await add(sessions, run) is False

    async with sessions() as session:
        runs = SqlRunRepository(session)
        stored = await runs.get(team.team_id, run.id)
        from_other_team = await runs.get(f"other-{uuid.uuid4().hex[:8]}", run.id)
    assert stored is not None
    assert (stored.id, stored.team_id, stored.workflow_key, stored.workflow_version) == (
        run.id,
        team.team_id,
        "welcome",
        2,
    )
    assert stored.context == run.context
    assert stored.status == RunStatus.RUNNING
    assert [(s.spec, s.position, s.status, s.attempts) for s in stored.steps] == [
        (run.steps[0].spec, 0, StepStatus.PENDING, 0),
        (run.steps[1].spec, 1, StepStatus.PENDING, 0),
    ]
    assert from_other_team is None


async def test_a_duplicate_add_does_not_touch_the_stored_steps(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    await add(sessions, run)
    changed = new_run(team.team_id)
    changed.id = run.id
    changed.steps = [StepState(StepSpec("other", "email", subject="x", body="y"), 0)]

    assert await add(sessions, changed) is False
    async with sessions() as session:
        stored = await SqlRunRepository(session).get(team.team_id, run.id)
    assert stored is not None
    assert [step.spec.id for step in stored.steps] == ["greet", "follow-up"]


async def test_a_batch_of_runs_is_stored_with_the_steps_as_their_first_moves_left_them(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    existing, first, second = (new_run(team.team_id) for _ in range(3))
    await add(sessions, existing)
    async with sessions() as session, session.begin():
        runs = SqlRunRepository(session)
        added = await runs.add([first, existing, second, first])
        assert added == {first.id, second.id}
        first.steps[0].status = StepStatus.QUEUED
        second.steps[0].status, second.steps[0].detail = StepStatus.DONE, "branch: then"
        second.finish(RunStatus.COMPLETED, utcnow())
        await runs.save(first, second)
        # A second save in the same transaction writes only what changed since the first.
        first.steps[0].attempts = 1
        await runs.save(first)

    async with sessions() as session:
        runs = SqlRunRepository(session)
        stored_first = await runs.get(team.team_id, first.id)
        stored_second = await runs.get(team.team_id, second.id)
    assert stored_first is not None and stored_second is not None
    assert [(s.status, s.attempts) for s in stored_first.steps] == [
        (StepStatus.QUEUED, 1),
        (StepStatus.PENDING, 0),
    ]
    assert stored_second.status == RunStatus.COMPLETED
    assert (stored_second.steps[0].status, stored_second.steps[0].detail) == (StepStatus.DONE, "branch: then")


async def test_save_persists_step_states_and_the_run_outcome(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    await add(sessions, run)
    finished_at = utcnow()

    async with sessions() as session, session.begin():
        runs = SqlRunRepository(session)
        locked = await runs.lock(run.id)
        assert locked is not None
        greet, follow_up = locked.steps
        greet.status, greet.attempts, greet.detail, greet.finished_at = (
            StepStatus.SENT,
            1,
            "250 OK",
            finished_at,
        )
        follow_up.status, follow_up.attempts, follow_up.detail = StepStatus.FAILED, 3, "550 no such user"
        follow_up.finished_at = finished_at
        locked.finish(RunStatus.FAILED, finished_at)
        await runs.save(locked)

    async with sessions() as session:
        stored = await SqlRunRepository(session).get(team.team_id, run.id)
    assert stored is not None
    assert stored.status == RunStatus.FAILED
    assert stored.finished_at == finished_at
    assert [(s.spec.id, s.status, s.attempts, s.detail, s.finished_at) for s in stored.steps] == [
        ("greet", StepStatus.SENT, 1, "250 OK", finished_at),
        ("follow-up", StepStatus.FAILED, 3, "550 no such user", finished_at),
    ]


async def test_lock_makes_a_second_transaction_wait_for_the_first(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    await add(sessions, run)

    async with sessions() as first, sessions() as second:
        first_runs = SqlRunRepository(first)
        held = await first_runs.lock(run.id)
        assert held is not None

        second_pid = await backend_pid(second)
        second_lock = asyncio.create_task(SqlRunRepository(second).lock(run.id))
        await until_waiting_on_lock(sessions, second_pid)
        assert not second_lock.done(), "the second lock returned while the first transaction held the row"

        held.steps[0].status, held.steps[0].attempts = StepStatus.QUEUED, 1
        await first_runs.save(held)
        await first.commit()

        seen_by_second = await asyncio.wait_for(second_lock, timeout=5)
        await second.rollback()

    assert seen_by_second is not None
    assert (seen_by_second.steps[0].status, seen_by_second.steps[0].attempts) == (StepStatus.QUEUED, 1)


async def test_a_run_without_a_creation_time_gets_the_database_time(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    run.created_at = None

    assert await add(sessions, run) is True
    async with sessions() as session:
        stored = await SqlRunRepository(session).get(team.team_id, run.id)
    assert stored is not None and stored.created_at is not None


async def test_lock_of_an_unknown_run_is_none(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        assert await SqlRunRepository(session).lock(uuid.uuid4()) is None


async def test_due_timers_are_claimed_by_one_worker_and_waits_are_found_by_event_and_contact(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    await add(sessions, run)
    now = utcnow()
    delay = Timer(run.id, "greet", team.team_id, TimerKind.DELAY, now - timedelta(seconds=1))
    wait = Timer(
        run.id, "follow-up", team.team_id, TimerKind.WAIT, now + timedelta(hours=1),
        contact_id=run.contact_id, event="user.activated", since=now - timedelta(minutes=1),
    )  # fmt: skip
    async with sessions() as session, session.begin():
        timers = SqlTimerRepository(session)
        await timers.add(delay)
        await timers.add(wait)

    async with sessions() as first, first.begin():
        claimed = await SqlTimerRepository(first).due(utcnow(), 10)
        async with sessions() as second, second.begin():
            assert await SqlTimerRepository(second).due(utcnow(), 10) == []  # SKIP LOCKED
        assert [(timer.step_id, timer.kind) for timer in claimed] == [("greet", TimerKind.DELAY)]
        await SqlTimerRepository(first).delete(claimed[0])

    async with sessions() as session, session.begin():
        timers = SqlTimerRepository(session)
        assert await timers.waits_for(team.team_id, "user.activated", run.contact_id) == [wait]
        assert await timers.waits_for(team.team_id, "user.activated", "someone-else") == []
        assert await timers.awaited_events(team.team_id) == frozenset({"user.activated"})
        assert [
            t for t in await timers.not_caught_up(10, utcnow() - timedelta(minutes=1)) if t.run_id == run.id
        ] == []
        assert [
            timer.step_id
            for timer in await timers.not_caught_up(10, utcnow() + timedelta(seconds=1))
            if timer.run_id == run.id
        ] == ["follow-up"]
        await timers.caught_up(wait)
        assert [
            timer
            for timer in await timers.not_caught_up(100, utcnow() + timedelta(seconds=1))
            if timer.run_id == run.id
        ] == []
        assert await timers.due(utcnow(), 10) == []


async def test_feed_dead_letters_channels_and_dev_messages_round_trip(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    run = new_run(team.team_id)
    now = utcnow()
    item = FeedItem(uuid.uuid4(), team.team_id, run.contact_id, "ada", run.id, "note", "T", "B", "/u", now)
    letter = DeadLetter(
        uuid.uuid4(), team.team_id, run.id, run.trigger_id, "hook", "webhook", "HTTP 500", 3, now
    )
    async with sessions() as session, session.begin():
        await SqlFeedRepository(session).add(item)
        await SqlFeedRepository(session).add(item)
        await SqlDeadLetterRepository(session).add(letter)
        channels = SqlChannelRepository(session)
        secret = await channels.webhook_secret(team.team_id)
        assert await channels.webhook_secret(team.team_id) == secret
        stored = await channels.put_provider(
            ProviderSettings(team.team_id, "sms", "https://sms.example", {"A": "b"})
        )
        await SqlDevMessageRepository(session).add(
            OutgoingText("sms", team.team_id, "+14155550100", "Hi", "key-" + uuid.uuid4().hex), now
        )

    async with sessions() as session, session.begin():
        feed = SqlFeedRepository(session)
        assert await feed.newest(team.team_id, "ada", 10, False) == [item]
        assert await feed.mark_read(team.team_id, "ada", [], now) == 1
        assert await feed.newest(team.team_id, "ada", 10, True) == []
        letters = SqlDeadLetterRepository(session)
        locked = await letters.lock(team.team_id, letter.id)
        assert locked == letter
        locked.status, locked.replays = "replayed", 1
        await letters.save(locked)
        await letters.add(letter)  # failed again after the replay: dead again, replays kept
        [again] = [
            found
            for found in await letters.newest(team.team_id, DeadLetterQuery(50))
            if found.id == letter.id
        ]
        assert (again.status, again.replays) == ("dead", 1)
        assert await letters.lock(f"other-{uuid.uuid4().hex[:6]}", letter.id) is None
        assert stored.updated_at is not None
        assert (await SqlChannelRepository(session).provider(team.team_id, "sms")) == stored
        assert await SqlChannelRepository(session).provider(team.team_id, "push") is None
        [(message, _)] = await SqlDevMessageRepository(session).newest(team.team_id, "sms", 5)
        assert (message.to, message.body) == ("+14155550100", "Hi")
