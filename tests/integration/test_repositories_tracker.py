"""The tracker on real PostgreSQL: every fact counts once, in whatever order it arrives."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import tracking_pb2
from kernel.clock import to_timestamp, utcnow
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.domain import Progress, Summary, TriggerStatus, TriggerView
from services.tracker.handlers import record_fact, record_facts
from tests.conftest import TeamCredentials


@dataclass
class TriggerStory:
    """The facts the services report about one trigger, with stable ids."""

    team_id: str
    trigger_id: uuid.UUID = field(default_factory=uuid.uuid4)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    contact_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    accepted_at: datetime = field(default_factory=lambda: utcnow().replace(microsecond=0))
    event_name: str = "user_signup"

    def record(self, at_offset_seconds: float, **kind: object) -> tracking_pb2.TrackingRecord:
        return tracking_pb2.TrackingRecord(
            trigger_id=str(self.trigger_id),
            project_id=self.team_id,
            recorded_at=to_timestamp(self.accepted_at + timedelta(seconds=at_offset_seconds)),
            **kind,  # type: ignore[arg-type]
        )

    def accepted(self) -> tracking_pb2.TrackingRecord:
        return self.record(
            0,
            trigger_accepted=tracking_pb2.TriggerAccepted(
                event_id=str(self.event_id),
                event_name=self.event_name,
                contact_id=self.contact_id,
                created_at=to_timestamp(self.accepted_at),
            ),
        )

    def direct_accepted(self, contacts: int) -> tracking_pb2.TrackingRecord:
        """The accepted fact of a direct trigger of a workflow for `contacts` contacts (one event each)."""
        return self.record(
            0,
            trigger_accepted=tracking_pb2.TriggerAccepted(
                event_id=str(self.event_id),
                event_name="herald.workflow.triggered",
                created_at=to_timestamp(self.accepted_at),
                events=contacts,
                contacts=contacts,
            ),
        )

    def matched(
        self, runs: dict[str, uuid.UUID], filtered: Iterable[str] = (), at_offset_seconds: float = 1
    ) -> tracking_pb2.TrackingRecord:
        decisions = [
            tracking_pb2.MatchDecision(
                workflow_key=key,
                workflow_version=1,
                outcome=tracking_pb2.MATCH_OUTCOME_MATCHED,
                run_id=str(run_id),
                contact_id=self.contact_id,
            )
            for key, run_id in runs.items()
        ] + [
            tracking_pb2.MatchDecision(
                workflow_key=key,
                workflow_version=1,
                outcome=tracking_pb2.MATCH_OUTCOME_FILTERED,
                reason="workflow is inactive",
                contact_id=self.contact_id,
            )
            for key in filtered
        ]
        return self.record(
            at_offset_seconds,
            event_matched=tracking_pb2.EventMatched(
                event_id=str(self.event_id), event_name=self.event_name, decisions=decisions
            ),
        )

    def run_started(self, run_id: uuid.UUID, key: str) -> tracking_pb2.TrackingRecord:
        return self.record(
            2,
            run_started=tracking_pb2.RunStarted(
                run_id=str(run_id), workflow_key=key, workflow_version=1, contact_id=self.contact_id
            ),
        )

    def delivery(
        self, run_id: uuid.UUID, step_id: str, *, sent: bool, at_offset_seconds: float = 3
    ) -> tracking_pb2.TrackingRecord:
        return self.record(
            at_offset_seconds,
            delivery_recorded=tracking_pb2.DeliveryRecorded(
                delivery_id=str(uuid.uuid5(run_id, step_id)),
                run_id=str(run_id),
                step_id=step_id,
                channel="email",
                outcome=tracking_pb2.DELIVERY_OUTCOME_SENT if sent else tracking_pb2.DELIVERY_OUTCOME_FAILED,
                attempts=1,
                detail="250 OK" if sent else "550 mailbox unavailable",
            ),
        )

    def run_finished(self, run_id: uuid.UUID, *, completed: bool = True) -> tracking_pb2.TrackingRecord:
        return self.record(
            4,
            run_finished=tracking_pb2.RunFinished(
                run_id=str(run_id),
                outcome=tracking_pb2.RUN_OUTCOME_COMPLETED if completed else tracking_pb2.RUN_OUTCOME_FAILED,
            ),
        )


async def apply(sessions: async_sessionmaker[AsyncSession], *records: tracking_pb2.TrackingRecord) -> None:
    for record in records:
        await record_fact(record, TrackerSqlUnitOfWork(sessions))


async def look(
    sessions: async_sessionmaker[AsyncSession], story: TriggerStory
) -> tuple[TriggerView | None, Progress]:
    async with TrackerSqlUnitOfWork(sessions) as uow:
        return (
            await uow.triggers.view(story.team_id, story.trigger_id),
            await uow.triggers.progress(story.trigger_id),
        )


async def test_every_fact_applied_twice_counts_once(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    welcome, reminder = uuid.uuid4(), uuid.uuid4()
    facts = [
        story.accepted(),
        story.matched({"welcome": welcome, "reminder": reminder}, filtered=["paused"]),
        story.run_started(welcome, "welcome"),
        story.run_started(reminder, "reminder"),
        story.delivery(welcome, "greet", sent=True),
        story.delivery(reminder, "nudge", sent=False),
        story.run_finished(welcome),
        story.run_finished(reminder, completed=False),
    ]

    for fact in facts:
        await apply(sessions, fact, fact)
    await apply(sessions, *facts)

    view, progress = await look(sessions, story)
    assert (progress.matched, progress.expected_runs, progress.finished_runs, progress.failed_runs) == (
        True,
        2,
        2,
        1,
    )
    assert progress.matched_at is not None
    assert view is not None
    assert view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary(total_contacts=1, sent=1, failed=1, filtered=1)
    assert view.created_at == story.accepted_at
    assert view.started_at == story.accepted_at + timedelta(seconds=1)
    assert view.completed_at == story.accepted_at + timedelta(seconds=4)


async def test_status_follows_the_runs(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    first, second = uuid.uuid4(), uuid.uuid4()

    async def status() -> str:
        view, _ = await look(sessions, story)
        assert view is not None
        return view.status

    await apply(sessions, story.accepted())
    assert await status() == TriggerStatus.QUEUED
    await apply(sessions, story.matched({"a": first, "b": second}))
    assert await status() == TriggerStatus.PROCESSING
    await apply(sessions, story.run_finished(first, completed=False))
    assert await status() == TriggerStatus.PROCESSING
    await apply(sessions, story.run_finished(second, completed=False))
    assert await status() == TriggerStatus.FAILED


async def test_facts_arriving_out_of_order_give_the_right_final_status(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()

    await apply(sessions, story.run_finished(run_id))
    view, progress = await look(sessions, story)
    assert view is None, "a trigger is not shown before ingest's fact about it arrived"
    assert progress.matched is False

    await apply(sessions, story.matched({"welcome": run_id}))
    await apply(sessions, story.delivery(run_id, "greet", sent=True))
    await apply(sessions, story.accepted())
    await apply(sessions, story.run_started(run_id, "welcome"))  # the latest news is the oldest fact

    view, progress = await look(sessions, story)
    assert (progress.matched, progress.expected_runs, progress.finished_runs, progress.failed_runs) == (
        True,
        1,
        1,
        0,
    )
    assert progress.matched_at is not None
    assert view is not None
    assert view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=0)
    assert view.created_at == story.accepted_at


async def test_an_event_no_workflow_listens_to_completes_its_trigger(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    await apply(sessions, story.accepted(), story.matched({}))

    view, progress = await look(sessions, story)
    assert (progress.matched, progress.expected_runs, progress.finished_runs, progress.failed_runs) == (
        True,
        0,
        0,
        0,
    )
    assert progress.matched_at is not None
    assert view is not None and view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary()


async def test_the_same_fact_delivered_concurrently_counts_once(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()
    await apply(sessions, story.accepted(), story.matched({"welcome": run_id}))

    sent = story.delivery(run_id, "greet", sent=True)
    await asyncio.gather(*(apply(sessions, sent) for _ in range(4)))
    finished = story.run_finished(run_id)
    await asyncio.gather(*(apply(sessions, finished) for _ in range(4)))

    view, progress = await look(sessions, story)
    assert progress.finished_runs == 1
    assert view is not None
    assert view.status == TriggerStatus.COMPLETED
    assert view.summary.sent == 1


async def test_a_trigger_is_visible_only_to_its_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    await apply(sessions, story.accepted())

    async with TrackerSqlUnitOfWork(sessions) as uow:
        ours = await uow.triggers.view(team.team_id, story.trigger_id)
        theirs = await uow.triggers.view(f"other-{uuid.uuid4().hex[:8]}", story.trigger_id)

    assert ours is not None and ours.id == story.trigger_id
    assert theirs is None


def a_direct_trigger_event(
    story: TriggerStory, contact_id: str, run_id: uuid.UUID | None, events: int
) -> tracking_pb2.TrackingRecord:
    """The EventMatched of one event of a direct trigger (one event per contact)."""
    decision = tracking_pb2.MatchDecision(
        workflow_key="welcome",
        workflow_version=1,
        outcome=tracking_pb2.MATCH_OUTCOME_MATCHED if run_id else tracking_pb2.MATCH_OUTCOME_FILTERED,
        reason="" if run_id else "contact has none of the tags beta (tags_any)",
        run_id=str(run_id) if run_id else "",
        contact_id=contact_id,
    )
    return story.record(
        1,
        event_matched=tracking_pb2.EventMatched(
            event_id=str(uuid.uuid5(story.trigger_id, contact_id)),
            event_name="herald.workflow.triggered",
            decisions=[decision],
            trigger_events=events,
        ),
    )


async def test_a_direct_trigger_completes_only_once_every_contacts_event_is_decided_and_run(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    contacts = [str(uuid.uuid4()) for _ in range(3)]
    runs = [uuid.uuid4(), uuid.uuid4()]
    first, second, filtered = (
        a_direct_trigger_event(story, contacts[0], runs[0], 3),
        a_direct_trigger_event(story, contacts[1], runs[1], 3),
        a_direct_trigger_event(story, contacts[2], None, 3),
    )

    async def view() -> TriggerView:
        found, _ = await look(sessions, story)
        assert found is not None
        return found

    # Out of order: a match before the trigger's own fact; each fact twice.
    await apply(sessions, first, first)
    await apply(
        sessions,
        story.direct_accepted(3),
    )
    await apply(sessions, story.run_finished(runs[0]), story.run_finished(runs[0]))
    assert (await view()).status == TriggerStatus.PROCESSING, "two events are still undecided"
    await apply(sessions, filtered, filtered, second)
    assert (await view()).status == TriggerStatus.PROCESSING, "a run is still going"
    await apply(sessions, story.delivery(runs[1], "greet", sent=True), story.run_finished(runs[1]))

    done = await view()
    assert done.status == TriggerStatus.COMPLETED
    assert done.summary == Summary(total_contacts=3, sent=1, failed=0, filtered=1)


async def test_a_run_that_finishes_again_the_other_way_moves_the_counts_once(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    first, second = uuid.uuid4(), uuid.uuid4()
    await apply(sessions, story.accepted(), story.run_finished(first, completed=False))
    await apply(sessions, story.matched({"a": first, "b": second}))
    _, progress = await look(sessions, story)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (2, 1, 1)

    # A dead letter replayed: the failed run completes after all; each fact delivered twice.
    replayed = story.run_finished(first, completed=True)
    await apply(sessions, replayed, replayed, story.run_finished(second), story.run_finished(second))

    view, progress = await look(sessions, story)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (2, 2, 0)
    assert view is not None and view.status == TriggerStatus.COMPLETED


async def test_a_trigger_no_fact_named_yet_has_no_progress(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with TrackerSqlUnitOfWork(sessions) as uow:
        progress = await uow.triggers.progress(uuid.uuid4())
    assert progress == Progress(matched=False, expected_runs=0, finished_runs=0, failed_runs=0)


async def test_facts_of_several_triggers_in_one_batch_count_as_one_by_one(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    stories = [TriggerStory(team.team_id) for _ in range(3)]
    runs = [uuid.uuid4() for _ in stories]
    facts = []
    for story, run_id in zip(stories, runs, strict=True):
        facts += [
            story.run_finished(run_id),
            story.accepted(),
            story.delivery(run_id, "greet", sent=True),
            story.matched({"welcome": run_id}),
            story.run_started(run_id, "welcome"),
        ]
    batch = facts[::2] + facts[1::2] + facts[:4]  # interleaved, some twice

    await record_facts(batch, TrackerSqlUnitOfWork(sessions))

    for story in stories:
        view, progress = await look(sessions, story)
        assert (progress.expected_runs, progress.finished_runs) == (1, 1)
        assert view is not None and view.status == TriggerStatus.COMPLETED
        assert view.summary == Summary(total_contacts=1, sent=1, failed=0, filtered=0)


async def test_a_direct_triggers_facts_in_one_batch_count_as_one_by_one(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    contacts = [str(uuid.uuid4()) for _ in range(40)]
    runs = {contact: uuid.uuid4() for contact in contacts[:30]}  # the other 10 are filtered
    matched = [a_direct_trigger_event(story, contact, runs.get(contact), 40) for contact in contacts]
    accepted = story.direct_accepted(40)
    started = [story.run_started(run_id, "welcome") for run_id in runs.values()]
    deliveries = [
        story.delivery(run_id, "greet", sent=index % 3 != 0) for index, run_id in enumerate(runs.values())
    ]
    finished = [
        story.run_finished(run_id, completed=index % 3 != 0) for index, run_id in enumerate(runs.values())
    ]

    # Ends before decisions, the first half of everything in one batch, each fact twice here or there.
    await record_facts(
        finished[:15] + matched[:20] + matched[:5] + started[:15], TrackerSqlUnitOfWork(sessions)
    )
    _, progress = await look(sessions, story)
    assert (progress.expected_runs, progress.finished_runs, progress.undecided_events) == (20, 15, 20)
    await record_facts(
        [accepted, *deliveries, *finished, *matched[15:], *started, *finished[:3]],
        TrackerSqlUnitOfWork(sessions),
    )

    view, progress = await look(sessions, story)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (30, 30, 10)
    assert progress.undecided_events == 0
    assert view is not None and view.status == TriggerStatus.COMPLETED
    assert view.summary == Summary(total_contacts=40, sent=20, failed=10, filtered=10)


async def test_a_runs_two_ends_in_one_batch_count_as_its_last(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    story = TriggerStory(team.team_id)
    run_id = uuid.uuid4()
    await apply(sessions, story.accepted(), story.matched({"welcome": run_id}))

    # Failed, then (a dead letter replayed) completed, both in one fetch.
    await record_facts(
        [story.run_finished(run_id, completed=False), story.run_finished(run_id, completed=True)],
        TrackerSqlUnitOfWork(sessions),
    )

    view, progress = await look(sessions, story)
    assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 0)
    assert view is not None and view.status == TriggerStatus.COMPLETED


async def test_replicas_applying_known_and_new_triggers_at_once_neither_deadlock_nor_count_twice(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    stories = [TriggerStory(team.team_id) for _ in range(20)]
    runs = [uuid.uuid4() for _ in stories]
    facts = []
    for story, run_id in zip(stories, runs, strict=True):
        facts += [
            story.accepted(),
            story.matched({"welcome": run_id}),
            story.run_started(run_id, "welcome"),
            story.run_finished(run_id),
        ]

    def shuffled(seed: int) -> list[tracking_pb2.TrackingRecord]:
        mixed = list(facts)
        random.Random(seed).shuffle(mixed)
        return mixed

    async def applier(seed: int) -> None:
        """A tracker replica: its own fetches of the facts, a few at a time, in its own order."""
        mixed = shuffled(seed)
        for start in range(0, len(mixed), 6):
            await record_facts(mixed[start : start + 6], TrackerSqlUnitOfWork(sessions))

    # Every other trigger known already: batches name known and new triggers, mixed.
    await record_facts([story.accepted() for story in stories[::2]], TrackerSqlUnitOfWork(sessions))
    await asyncio.gather(*(applier(seed) for seed in range(6)))

    for story in stories:
        view, progress = await look(sessions, story)
        assert (progress.expected_runs, progress.finished_runs, progress.failed_runs) == (1, 1, 0)
        assert view is not None and view.status == TriggerStatus.COMPLETED
