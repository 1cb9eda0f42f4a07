"""The tracker writes each trigger's row once per batch, on real PostgreSQL: a batch is folded into
each trigger's final state in Python, and a redelivered batch writes nothing."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import tracking_pb2
from kernel.clock import to_timestamp
from services.tracker.adapters import SqlTriggerRepository, TrackerSqlUnitOfWork
from services.tracker.domain import Summary, TriggerState, TriggerStatus
from services.tracker.handlers import record_facts
from tests.conftest import TeamCredentials
from tests.integration.test_repositories_tracker import TriggerStory, a_direct_trigger_event, look
from tests.integration.waiting import backend_pid, eventually


@dataclass
class Writes:
    """What each batch wrote of the triggers: those it created, and those it saved afterwards."""

    created: list[set[uuid.UUID]] = field(default_factory=list)
    saved: list[list[uuid.UUID]] = field(default_factory=list)


class RecordingTriggers(SqlTriggerRepository):
    """The real repository, noting the trigger rows each batch writes."""

    def __init__(self, session: AsyncSession, writes: Writes):
        super().__init__(session)
        self.writes = writes

    async def lock(self, trigger_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TriggerState]:
        self.writes.created.append(set())
        self.writes.saved.append([])
        return await super().lock(trigger_ids)

    async def create(self, triggers: Sequence[TriggerState]) -> set[uuid.UUID]:
        created = await super().create(triggers)
        self.writes.created[-1] |= created
        return created

    async def save(self, states: Sequence[TriggerState]) -> None:
        self.writes.saved[-1] += [state.id for state in states]
        await super().save(states)


class RecordingUnitOfWork(TrackerSqlUnitOfWork):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], writes: Writes):
        super().__init__(sessions)
        self._writes = writes

    def open_repositories(self, session: AsyncSession) -> None:
        super().open_repositories(session)
        self.triggers = RecordingTriggers(session, self._writes)


async def apply_batch(
    sessions: async_sessionmaker[AsyncSession], writes: Writes, *records: tracking_pb2.TrackingRecord
) -> None:
    await record_facts(list(records), RecordingUnitOfWork(sessions, writes))


def every_fact(story: TriggerStory, run_id: uuid.UUID) -> list[tracking_pb2.TrackingRecord]:
    """A trigger's whole story: accepted, matched (one run, one workflow filtered), its run
    started, its email delivered, its run finished."""
    return [
        story.accepted(),
        story.matched({"welcome": run_id}, filtered=["paused"]),
        story.run_started(run_id, "welcome"),
        story.delivery(run_id, "greet", sent=True),
        story.run_finished(run_id),
    ]


async def stored_rows(sessions: async_sessionmaker[AsyncSession], trigger_id: uuid.UUID) -> dict[str, Any]:
    """Every row of the trigger and its facts, each with its row version (xmin, ctid)."""
    queries = {
        "triggers": "SELECT xmin::text, ctid::text, * FROM tracker.triggers WHERE id = :id",
        "trigger_decisions": "SELECT xmin::text, ctid::text, * FROM tracker.trigger_decisions "
        "WHERE trigger_id = :id ORDER BY workflow_key",
        "trigger_runs": "SELECT xmin::text, ctid::text, * FROM tracker.trigger_runs WHERE trigger_id = :id",
        "trigger_deliveries": "SELECT xmin::text, ctid::text, * FROM tracker.trigger_deliveries "
        "WHERE trigger_id = :id",
    }
    async with sessions() as session:
        return {
            table: [tuple(row) for row in await session.execute(text(query), {"id": trigger_id})]
            for table, query in queries.items()
        }


async def test_a_batch_holding_every_fact_of_a_trigger_completes_it_with_one_row_write(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()
    facts = every_fact(story, run_id)
    writes = Writes()

    await apply_batch(sessions, writes, *reversed(facts))  # newest first: order does not matter

    assert writes.created == [{story.trigger_id}]
    assert writes.saved == [[]], "created as it ends up: no second write"
    view, progress = await look(sessions, story)
    assert view is not None and view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=1)
    assert (view.started_at, view.completed_at) == (progress.matched_at, progress.last_finished_at)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 0)


async def test_facts_out_of_order_across_batches_write_the_row_once_per_batch(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()
    accepted, matched, started, delivered, finished = every_fact(story, run_id)
    writes = Writes()

    async def status() -> tuple[str, int, int, int]:
        async with TrackerSqlUnitOfWork(sessions) as uow:
            progress = await uow.triggers.progress(story.trigger_id)
            status = await uow.session.scalar(
                text("SELECT status FROM tracker.triggers WHERE id = :id"), {"id": story.trigger_id}
            )
        return status, progress.expected_runs, progress.finished_runs, progress.undecided_events

    # The run's end and its delivery first: nothing to count them against yet.
    await apply_batch(sessions, writes, finished, delivered, finished)
    assert await status() == (TriggerStatus.QUEUED, 0, 0, 0)
    # Its decision: the run that ended before it counts now, and the trigger completes.
    await apply_batch(sessions, writes, started, matched, delivered)
    assert await status() == (TriggerStatus.COMPLETED, 1, 1, 0)
    # The accepted fact last: the event's fields, nothing else moves.
    await apply_batch(sessions, writes, accepted, finished)

    assert writes.created == [{story.trigger_id}, set(), set()]
    assert writes.saved == [[], [story.trigger_id], [story.trigger_id]], "one write per batch"
    view, progress = await look(sessions, story)
    assert view is not None and view.status == TriggerStatus.COMPLETED
    assert view.created_at == story.accepted_at
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=1)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 0)


async def test_a_redelivered_batch_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story, direct = TriggerStory(team.team_id), TriggerStory(team.team_id)
    run_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    contacts = [str(uuid.uuid4()) for _ in range(2)]
    batch = [
        *every_fact(story, run_id),
        # A direct trigger of two contacts, one of them run, the other's event not decided yet.
        direct.direct_accepted(2),
        a_direct_trigger_event(direct, contacts[0], first, 2),
        direct.run_started(first, "welcome"),
        direct.run_finished(first, completed=False),
        direct.run_finished(second),  # a run whose decision has not come yet
    ]
    await record_facts(batch, TrackerSqlUnitOfWork(sessions))
    triggers = (story.trigger_id, direct.trigger_id)
    stored = {trigger: await stored_rows(sessions, trigger) for trigger in triggers}

    writes = Writes()
    await apply_batch(sessions, writes, *batch)
    await apply_batch(sessions, writes, *reversed(batch))

    assert writes.created == [set(), set()] and writes.saved == [[], []]
    for trigger, rows in stored.items():
        assert await stored_rows(sessions, trigger) == rows, "no row written again, not even the same"
    view, progress = await look(sessions, direct)
    assert view is not None and view.status == TriggerStatus.PROCESSING
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 1)
    assert progress.undecided_events == 1


def shuffled_with_repeats(
    facts: list[tracking_pb2.TrackingRecord], seed: int
) -> list[tracking_pb2.TrackingRecord]:
    """The facts in a random order, half of them twice."""
    mixed = facts + random.Random(seed).sample(facts, k=len(facts) // 2)
    random.Random(seed).shuffle(mixed)
    return mixed


def direct_story_facts(
    story: TriggerStory, contacts: list[str], runs: dict[str, uuid.UUID]
) -> list[tracking_pb2.TrackingRecord]:
    """A direct trigger's facts: accepted, each contact's event decided (run, or filtered), each
    run started, delivered (or failed) and finished."""
    facts = [story.direct_accepted(len(contacts))]
    for index, contact in enumerate(contacts):
        run_id = runs.get(contact)
        facts.append(a_direct_trigger_event(story, contact, run_id, len(contacts)))
        if run_id is not None:
            facts += [
                story.run_started(run_id, "welcome"),
                story.delivery(run_id, "greet", sent=index % 2 == 0, at_offset_seconds=3 + index),
                story.run_finished(run_id, completed=index % 2 == 0),
            ]
    return facts


FOLDED = (
    "status", "created_at", "scheduled_for", "started_at", "completed_at", "first_step_at", "event_name",
    "expected_events", "contacts", "matched_at", "events_matched", "runs_expected", "runs_finished",
    "runs_failed", "last_finished_at",
)  # fmt: skip


async def folded_row(sessions: async_sessionmaker[AsyncSession], trigger_id: uuid.UUID) -> tuple[Any, ...]:
    async with sessions() as session:
        row = (
            await session.execute(
                text(f"SELECT {', '.join(FOLDED)} FROM tracker.triggers WHERE id = :id"), {"id": trigger_id}
            )
        ).one()
    return tuple(row)


async def test_a_batch_folds_a_new_trigger_as_it_folds_a_known_one(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """A trigger no fact named before is folded in Python alone and created whole; one already
    known is folded from its row and the database's answers. Both must end the same."""
    for seed in range(4):
        twins = [TriggerStory(team.team_id), TriggerStory(team.team_id)]
        twins[1].accepted_at = twins[0].accepted_at
        contacts = [str(uuid.uuid4()) for _ in range(5)]
        stories = []
        for story in twins:
            runs = {contact: uuid.uuid4() for contact in contacts[:4]}
            one = TriggerStory(team.team_id, accepted_at=twins[0].accepted_at, contact_id=contacts[0])
            one.trigger_id = uuid.uuid5(story.trigger_id, "one")
            stories.append(
                (
                    shuffled_with_repeats(direct_story_facts(story, contacts, runs), seed),
                    shuffled_with_repeats(every_fact(one, uuid.uuid4()), seed),
                    (story.trigger_id, one.trigger_id),
                )
            )
        (new_direct, new_one, new_ids), (known_direct, known_one, known_ids) = stories
        # The second twin's triggers are known before their facts come (a scheduled trigger fired).
        fired = [
            tracking_pb2.TrackingRecord(
                trigger_id=str(trigger_id),
                project_id=team.team_id,
                recorded_at=to_timestamp(twins[0].accepted_at),
                trigger_fired=tracking_pb2.TriggerFired(fired_at=to_timestamp(twins[0].accepted_at)),
            )
            for trigger_id in known_ids
        ]
        await record_facts(fired, TrackerSqlUnitOfWork(sessions))
        writes = Writes()

        await apply_batch(sessions, writes, *new_direct, *new_one, *known_direct, *known_one)

        assert writes.created == [set(new_ids)]
        assert sorted(writes.saved[0]) == sorted(known_ids)
        for new, known in zip(new_ids, known_ids, strict=True):
            assert await folded_row(sessions, new) == await folded_row(sessions, known), f"seed {seed}"
        direct_row = dict(zip(FOLDED, await folded_row(sessions, new_ids[0]), strict=True))
        assert direct_row["status"] == TriggerStatus.COMPLETED
        assert (direct_row["events_matched"], direct_row["runs_expected"]) == (5, 4)
        assert (direct_row["runs_finished"], direct_row["runs_failed"]) == (4, 2)


async def test_a_trigger_another_transaction_creates_meanwhile_is_applied_again_from_its_row(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()
    later = every_fact(story, run_id)[1:]  # the accepted fact is the other replica's
    writes = Writes()

    async with TrackerSqlUnitOfWork(sessions) as other:  # another replica, with the accepted fact
        other_pid = await backend_pid(other.session)
        created_whole = TriggerState(
            story.trigger_id, team.team_id, created_at=story.accepted_at, event_name=story.event_name
        )
        assert await other.triggers.create([created_whole]) == {story.trigger_id}
        applying = asyncio.create_task(apply_batch(sessions, writes, *later))

        async def blocked() -> bool:
            async with sessions() as observer:
                waiting = await observer.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                    {"pid": other_pid},
                )
            return bool(waiting)

        await eventually(blocked, what="the batch waiting for the other creation")
        await other.commit()
    await applying

    # Found missing, lost the creation (rolled back), then applied to the row the other created.
    assert writes.created == [set(), set()]
    assert writes.saved == [[], [story.trigger_id]]
    view, progress = await look(sessions, story)
    assert view is not None and view.status == TriggerStatus.COMPLETED
    assert view.created_at == story.accepted_at
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=1)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 0)
