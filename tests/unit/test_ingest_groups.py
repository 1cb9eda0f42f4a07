"""Group commit: events that arrive together share one transaction, and every event still gets
exactly the answer it would have had alone (replays, contact changes, rate limits, failures)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from kernel.errors import HeraldError, NotFound, ResourceExhausted
from kernel.outbox import Receipts
from kernel.policy import ProjectPolicy
from kernel.unit_of_work import Publication
from services.ingest import handlers
from services.ingest.domain import EventQueued, EventType, SendEvent, UserInfo
from services.ingest.groups import MAX_PUBLISHING, GroupCommit, Writes
from services.ingest.handlers import Intake, send_event
from tests.unit.fakes import (
    FakeGroupUnitOfWork,
    FakeIngestUnitOfWork,
    FakePolicySource,
    FakeRateLimiter,
    UniqueViolation,
)

TEAM = "team-1"
NOW = datetime(2029, 12, 1, 9, 0, tzinfo=UTC)


class Groups:
    """A fake ingest whose events are accepted in groups; counts the groups it opened."""

    def __init__(self, *, max_group: int = 500) -> None:
        self.uow = FakeIngestUnitOfWork(clock=lambda: NOW)
        self.policies = FakePolicySource()
        self.rates = FakeRateLimiter()
        self.groups_opened = 0
        self.fail_write: Exception | None = None
        self.fail_commit: Exception | None = None
        self.hold_write: asyncio.Event | None = None
        # Set: a committed group's messages reach the bus only once it is set.
        self.hold_publish: asyncio.Event | None = None
        self.fail_publish: Exception | None = None
        alone = Intake(lambda: self.uow, self.policies, self.rates)
        self.commit = GroupCommit(
            self._group, lambda draft: handlers.store_alone(draft, alone), max_group=max_group
        )
        self.intake = dataclasses.replace(alone, groups=self.commit)

    def _group(self) -> FakeGroupUnitOfWork:
        self.groups_opened += 1
        outer = self

        class Group(FakeGroupUnitOfWork):
            async def write(self, writes: Writes) -> None:
                if outer.hold_write is not None:
                    await outer.hold_write.wait()
                if outer.fail_write is not None:
                    # What another replica committed meanwhile: a contact of this group.
                    failure, outer.fail_write = outer.fail_write, None
                    raise failure
                await super().write(writes)

            async def commit_unpublished(self) -> Publication:
                if outer.fail_commit is not None:
                    raise outer.fail_commit
                publication = await super().commit_unpublished()

                async def publish() -> Receipts:
                    if outer.hold_publish is not None:
                        await outer.hold_publish.wait()
                    if outer.fail_publish is not None:
                        raise outer.fail_publish
                    return await publication()

                return publish

        return Group(self.uow, self.rates, lambda: NOW)

    async def send_together(self, *events: dict[str, Any]) -> list[EventQueued | BaseException]:
        commands = [
            SendEvent(**{"team_id": TEAM, "event_name": "user_signup", **fields}) for fields in events
        ]
        return list(
            await asyncio.gather(*(send_event(c, self.intake) for c in commands), return_exceptions=True)
        )

    def subjects(self, prefix: str) -> list[str]:
        return [s for s in self.uow.subjects() if s.startswith(prefix)]


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "utcnow", lambda: NOW)


def accepted(outcomes: list[EventQueued | BaseException]) -> list[EventQueued]:
    assert all(isinstance(o, EventQueued) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, EventQueued)]


async def test_events_sent_together_share_one_transaction_and_keep_their_own_answers() -> None:
    groups = Groups()
    answers = accepted(
        await groups.send_together(*({"user_info": UserInfo(external_id=f"u{i}")} for i in range(50)))
    )
    assert groups.uow.commits == 1 and groups.groups_opened == 1
    assert len({a.trigger_id for a in answers}) == 50
    assert len(groups.uow.events.rows) == 50 + 50  # each event, and each new contact's herald.contact.created
    job_ids = [a.job_id for a in answers]
    assert all(job_ids) and len(set(job_ids)) == 50


async def test_a_group_holds_at_most_max_group_events() -> None:
    groups = Groups(max_group=3)
    accepted(await groups.send_together(*({} for _ in range(7))))
    assert groups.groups_opened == 3 and groups.uow.commits == 3
    assert len(groups.uow.events.rows) == 7


async def test_one_key_twice_in_a_group_stores_one_event_and_replays_it() -> None:
    groups = Groups()
    first, second = accepted(await groups.send_together({"idempotency_key": "k1"}, {"idempotency_key": "k1"}))
    assert first.trigger_id == second.trigger_id
    assert [first.replayed, second.replayed] == [False, True]
    assert len(groups.uow.events.rows) == 1


async def test_a_key_used_before_the_group_is_replayed() -> None:
    groups = Groups()
    [earlier] = accepted(await groups.send_together({"idempotency_key": "k1"}))
    again, other = accepted(await groups.send_together({"idempotency_key": "k1"}, {"idempotency_key": "k2"}))
    assert again.replayed and again.trigger_id == earlier.trigger_id
    assert not other.replayed
    assert len(groups.uow.events.rows) == 2


async def test_two_events_for_one_new_contact_create_it_once() -> None:
    groups = Groups()
    info = UserInfo(external_id="ada", email="ada@example.com")
    first, second = accepted(await groups.send_together({"user_info": info}, {"user_info": info}))
    [contact] = groups.uow.contacts.rows.values()
    assert first.contact_id == second.contact_id == contact.id
    assert len(groups.subjects(f"events.{TEAM}.herald.contact.created")) == 1


async def test_an_event_that_changes_its_contact_is_stored_alone_and_changes_it() -> None:
    groups = Groups()
    first, second = accepted(
        await groups.send_together(
            {"user_info": UserInfo(external_id="ada", name="Ada")},
            {"user_info": UserInfo(external_id="ada", name="Ada Lovelace")},
        )
    )
    [contact] = groups.uow.contacts.rows.values()
    assert contact.name == "Ada Lovelace"
    assert first.contact_id == second.contact_id == contact.id
    assert groups.uow.commits == 2  # the group, then the event stored alone


async def test_a_bad_event_does_not_sink_the_group() -> None:
    groups = Groups()
    groups.policies.policies[TEAM] = ProjectPolicy(unknown_events="reject")
    groups.uow.event_types.rows[(TEAM, "user_signup")] = EventType("user_signup", "", "registered", NOW)
    good, bad = await groups.send_together({}, {"event_name": "never.registered"})
    assert isinstance(good, EventQueued)
    assert isinstance(bad, NotFound) and bad.message == "Event type not found"
    assert len(groups.uow.events.rows) == 1


async def test_a_group_past_the_rate_limit_accepts_exactly_the_limit() -> None:
    groups = Groups()
    groups.policies.policies[TEAM] = ProjectPolicy(rate_limit_per_hour=3)
    groups.policies.policies["team-2"] = ProjectPolicy(rate_limit_per_hour=10)
    other = SendEvent(team_id="team-2", event_name="user_signup")
    outcomes = await asyncio.gather(
        *(send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake) for _ in range(5)),
        send_event(other, groups.intake),
        return_exceptions=True,
    )
    mine = outcomes[:5]
    assert sum(isinstance(o, EventQueued) for o in mine) == 3
    assert sum(isinstance(o, ResourceExhausted) for o in mine) == 2
    assert isinstance(outcomes[5], EventQueued)  # another project's event is not held back
    assert sum(1 for e in groups.uow.events.rows.values() if e.team_id == TEAM) == 3


async def test_within_the_limit_each_event_of_a_group_answers_its_own_remaining_count() -> None:
    groups = Groups()
    groups.policies.policies[TEAM] = ProjectPolicy(rate_limit_per_hour=10)
    answers = accepted(await groups.send_together({}, {}, {}))
    assert groups.uow.commits == 1
    assert [a.rate.remaining for a in answers if a.rate] == [9, 8, 7]


async def test_a_group_whose_write_fails_stores_each_event_alone_once() -> None:
    groups = Groups()
    groups.fail_write = UniqueViolation(
        'duplicate key value violates unique constraint "uq_contacts_team_external_id"'
    )
    answers = accepted(
        await groups.send_together(*({"user_info": UserInfo(external_id=f"u{i}")} for i in range(5)))
    )
    assert len({a.trigger_id for a in answers}) == 5
    assert len([e for e in groups.uow.events.rows.values() if e.name == "user_signup"]) == 5
    assert len(groups.uow.contacts.rows) == 5


async def test_a_failed_commit_is_every_event_s_answer_and_nothing_is_stored_again() -> None:
    groups = Groups()
    groups.fail_commit = ConnectionError("server closed the connection during COMMIT")
    outcomes = await groups.send_together({}, {})
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert groups.uow.events.rows == {}
    assert groups.groups_opened == 1


async def test_a_caller_that_goes_away_does_not_stop_the_group() -> None:
    groups = Groups()
    leaving = asyncio.create_task(
        send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake)
    )
    staying = asyncio.create_task(
        send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake)
    )
    await asyncio.sleep(0)
    leaving.cancel()
    answer = await staying
    assert isinstance(answer, EventQueued)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert len(groups.uow.events.rows) == 2  # the event of the caller that left is stored all the same


async def test_errors_are_herald_errors_with_their_own_status() -> None:
    groups = Groups()
    [bad] = await groups.send_together({"event_name": "Not-A-Name"})
    assert isinstance(bad, HeraldError) and bad.reason
    assert groups.groups_opened == 0  # rejected before it reached a group


async def test_callers_are_not_left_waiting_when_the_writer_stops() -> None:
    groups = Groups()
    groups.hold_write = asyncio.Event()
    first = asyncio.create_task(send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake))
    await asyncio.sleep(0.01)  # the first group is being written
    later = asyncio.create_task(send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake))
    await asyncio.sleep(0.01)
    writer = groups.commit._writer
    assert writer is not None
    writer.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(first, later, return_exceptions=True), timeout=2)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes), outcomes
    assert groups.uow.events.rows == {}


def signup(groups: Groups) -> asyncio.Task[EventQueued]:
    return asyncio.create_task(send_event(SendEvent(team_id=TEAM, event_name="user_signup"), groups.intake))


def stored(groups: Groups) -> int:
    return len([e for e in groups.uow.events.rows.values() if e.name == "user_signup"])


async def test_the_next_group_is_written_while_the_last_one_waits_for_the_bus() -> None:
    groups = Groups()
    groups.hold_publish = asyncio.Event()
    first = signup(groups)
    await asyncio.sleep(0.01)
    assert (stored(groups), first.done()) == (1, False)  # committed; answered once the bus acknowledges
    second = signup(groups)
    await asyncio.sleep(0.01)
    assert (groups.groups_opened, stored(groups), second.done()) == (2, 2, False)
    groups.hold_publish.set()
    answers = await asyncio.wait_for(asyncio.gather(first, second), timeout=2)
    assert all(answer.job_id for answer in answers)
    assert len(groups.subjects("events.")) == 2


async def test_at_most_max_publishing_groups_wait_for_the_bus_before_the_writer_waits_too() -> None:
    groups = Groups()
    groups.hold_publish = asyncio.Event()
    sends = []
    for _ in range(MAX_PUBLISHING + 2):
        sends.append(signup(groups))
        await asyncio.sleep(0.01)
    assert (groups.groups_opened, stored(groups)) == (MAX_PUBLISHING, MAX_PUBLISHING)
    groups.hold_publish.set()
    answers = await asyncio.wait_for(asyncio.gather(*sends), timeout=2)
    assert len({answer.trigger_id for answer in answers}) == MAX_PUBLISHING + 2
    assert stored(groups) == MAX_PUBLISHING + 2


async def test_a_committed_group_the_bus_refuses_is_answered_as_stored_without_a_job_id() -> None:
    groups = Groups()
    groups.fail_publish = RuntimeError("the publisher broke")
    answers = accepted(await groups.send_together({}, {}))
    assert [answer.job_id for answer in answers] == ["", ""]
    assert stored(groups) == 2  # durable: the outbox relay publishes them


async def test_a_deferred_event_is_stored_after_its_group_is_published() -> None:
    groups = Groups()
    groups.hold_publish = asyncio.Event()
    sends = [
        asyncio.create_task(
            send_event(
                SendEvent(
                    team_id=TEAM, event_name="user_signup", user_info=UserInfo(external_id="u1", name=name)
                ),
                groups.intake,
            )
        )
        for name in ("Ada", "Grace")  # the second changes the contact the first creates: deferred
    ]
    await asyncio.sleep(0.01)
    assert stored(groups) == 1 and groups.subjects("events.") == []
    groups.hold_publish.set()
    answers = await asyncio.wait_for(asyncio.gather(*sends), timeout=2)
    assert stored(groups) == 2 and all(answer.job_id for answer in answers)
    # What the group announced (the new contact, the first event) is published before the change.
    assert groups.subjects("events.")[-1].endswith(".user_signup")
    assert [s.rsplit(".", 1)[-1] for s in groups.subjects("events.")].count("user_signup") == 2
    assert groups.subjects("events.").index(f"events.{TEAM}.herald.contact.created") < 2
