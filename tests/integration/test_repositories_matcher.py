"""The matcher's repositories on real PostgreSQL: versioned workflows and match decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from kernel.errors import Conflict
from kernel.steps import StepSpec
from services.matcher.adapters import (
    SqlCooldownRepository,
    SqlDecisionRepository,
    SqlSegmentRepository,
    SqlWorkflowRepository,
)
from services.matcher.domain import Decision, MatchedEvent, Workflow, WorkflowDefinition
from tests.conftest import TeamCredentials


def workflow(
    team_id: str, key: str, version: int, trigger_event: str, *, name: str = "", active: bool = True
) -> Workflow:
    definition = WorkflowDefinition(
        key=key,
        name=name or f"{key} v{version}",
        active=active,
        trigger_event=trigger_event,
        steps=(
            StepSpec(id="welcome", type="email", subject="Hi {{contact.name}}", body=f"Hello v{version}"),
        ),
    )
    return Workflow(team_id, definition, version, utcnow())


async def add_all(sessions: async_sessionmaker[AsyncSession], *workflows: Workflow) -> None:
    async with sessions() as session, session.begin():
        repository = SqlWorkflowRepository(session)
        for each in workflows:
            await repository.add(each)


def versions(workflows: list[Workflow]) -> list[tuple[str, int]]:
    return [(each.key, each.version) for each in workflows]


async def test_latest_version_wins(sessions: async_sessionmaker[AsyncSession], team: TeamCredentials) -> None:
    await add_all(
        sessions,
        workflow(team.team_id, "welcome", 1, "user_signup"),
        workflow(team.team_id, "welcome", 3, "user_signup", name="Welcome, third"),
        workflow(team.team_id, "welcome", 2, "user_signup"),
    )

    async with sessions() as session:
        latest = await SqlWorkflowRepository(session).latest(team.team_id, "welcome")
        missing = await SqlWorkflowRepository(session).latest(team.team_id, "no-such-workflow")

    assert latest is not None
    assert latest.version == 3
    assert latest.definition.name == "Welcome, third"
    assert latest.definition.steps == (
        StepSpec(id="welcome", type="email", subject="Hi {{contact.name}}", body="Hello v3"),
    )
    assert missing is None


async def test_listening_to_returns_only_latest_versions_triggered_by_the_event(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    await add_all(
        sessions,
        workflow(team.team_id, "welcome", 1, "user_signup"),
        workflow(team.team_id, "welcome", 2, "user_signup"),
        # moved away from user_signup in its latest version: no longer listening
        workflow(team.team_id, "onboarding", 1, "user_signup"),
        workflow(team.team_id, "onboarding", 2, "order.completed"),
        # moved onto user_signup in its latest version: listening now
        workflow(team.team_id, "upsell", 1, "order.completed"),
        workflow(team.team_id, "upsell", 2, "user_signup", active=False),
    )

    async with sessions() as session:
        repository = SqlWorkflowRepository(session)
        signup = await repository.listening_to(team.team_id, "user_signup")
        orders = await repository.listening_to(team.team_id, "order.completed")
        nothing = await repository.listening_to(team.team_id, "cart.abandoned")
        everything = await repository.all_latest(team.team_id)

    assert versions(signup) == [("upsell", 2), ("welcome", 2)]
    assert [each.definition.active for each in signup] == [False, True]
    assert versions(orders) == [("onboarding", 2)]
    assert nothing == []
    assert sorted(versions(everything)) == [("onboarding", 2), ("upsell", 2), ("welcome", 2)]


async def test_workflows_are_scoped_per_team(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    other_team = f"other-{uuid.uuid4().hex[:10]}"
    await add_all(
        sessions,
        workflow(team.team_id, "welcome", 1, "user_signup"),
        workflow(other_team, "welcome", 1, "user_signup"),
        workflow(other_team, "welcome", 2, "user_signup"),
        workflow(other_team, "other-only", 1, "user_signup"),
    )

    async with sessions() as session:
        repository = SqlWorkflowRepository(session)
        ours = await repository.listening_to(team.team_id, "user_signup")
        latest = await repository.latest(team.team_id, "welcome")
        all_ours = await repository.all_latest(team.team_id)
        theirs = await repository.listening_to(other_team, "user_signup")

    assert versions(ours) == [("welcome", 1)]
    assert {each.team_id for each in ours} == {team.team_id}
    assert latest is not None and latest.version == 1
    assert versions(all_ours) == [("welcome", 1)]
    assert versions(theirs) == [("other-only", 1), ("welcome", 2)]


async def test_a_version_number_is_stored_once_per_workflow(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """Two requests changing one workflow at once: the second is a Conflict, not a crash."""
    await add_all(sessions, workflow(team.team_id, "welcome", 1, "user_signup"))
    with pytest.raises(Conflict) as raised:
        await add_all(sessions, workflow(team.team_id, "welcome", 1, "user_signup"))
    assert raised.value.reason == "WORKFLOW_CHANGED_CONCURRENTLY"
    assert "'welcome' was changed by another request at the same time" in raised.value.message


def matched_event(team_id: str) -> MatchedEvent:
    return MatchedEvent(
        event_id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        team_id=team_id,
        name="user_signup",
        contact_id=str(uuid.uuid4()),
    )


async def test_an_event_is_claimed_once_with_its_decisions(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    event = matched_event(team.team_id)
    listening = workflow(team.team_id, "welcome", 1, "user_signup")
    inactive = workflow(team.team_id, "paused", 1, "user_signup", active=False)

    async with sessions() as session, session.begin():
        decisions = SqlDecisionRepository(session)
        assert await decisions.claim([event]) == {event.event_id}
        await decisions.add(
            [
                (
                    event,
                    [
                        Decision(listening, matched=True, run_id=uuid.uuid4(), contact_id=event.contact_id),
                        Decision(
                            inactive,
                            matched=False,
                            reason="workflow is inactive",
                            contact_id=event.contact_id,
                        ),
                    ],
                )
            ]
        )

    async with sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT workflow_key, matched, reason, run_id IS NOT NULL AS has_run "
                    "FROM matcher.match_decisions WHERE event_id = :id ORDER BY workflow_key"
                ),
                {"id": event.event_id},
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("paused", False, "workflow is inactive", False),
        ("welcome", True, "", True),
    ]
    async with sessions() as session, session.begin():
        assert await SqlDecisionRepository(session).claim([event]) == set()
        other = matched_event(team.team_id)
        assert await SqlDecisionRepository(session).claim([other]) == {other.event_id}


async def test_a_batch_claims_only_the_events_not_decided_before(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    decided, new, also_new = (matched_event(team.team_id) for _ in range(3))
    async with sessions() as session, session.begin():
        assert await SqlDecisionRepository(session).claim([decided]) == {decided.event_id}
    async with sessions() as session, session.begin():
        # The same event twice in one batch is claimed once.
        claimed = await SqlDecisionRepository(session).claim([new, decided, also_new, new])
    assert claimed == {new.event_id, also_new.event_id}


async def test_a_claim_rolled_back_leaves_the_event_undecided(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    event = matched_event(team.team_id)
    async with sessions() as session:
        assert await SqlDecisionRepository(session).claim([event]) == {event.event_id}
        await session.rollback()
    async with sessions() as session, session.begin():
        assert await SqlDecisionRepository(session).claim([event]) == {event.event_id}


async def test_a_deleted_workflow_is_neither_listed_nor_listening_but_its_versions_stay(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    first, second = (workflow(team.team_id, "welcome", n, "user_signup") for n in (1, 2))
    marker = dataclasses.replace(workflow(team.team_id, "welcome", 3, "user_signup"), deleted=True)
    await add_all(sessions, first, second, marker, workflow(team.team_id, "other", 1, "user_signup"))

    async with sessions() as session:
        repository = SqlWorkflowRepository(session)
        latest = await repository.latest(team.team_id, "welcome")
        listed = await repository.all_latest(team.team_id)
        listening = await repository.listening_to(team.team_id, "user_signup")
        stored = await repository.versions(team.team_id, "welcome")

    assert latest is not None and latest.deleted and latest.version == 3
    assert versions(listed) == versions(listening) == [("other", 1)]
    assert versions(stored) == [("welcome", 2), ("welcome", 1)]


async def test_a_cooldown_is_claimed_once_until_it_ends(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now = utcnow()

    async def claim(at: datetime, contact: str = "contact-1") -> datetime | None:
        async with sessions() as session, session.begin():
            return await SqlCooldownRepository(session).claim(
                team.team_id, "welcome", contact, at, at + timedelta(hours=1)
            )

    assert await claim(now) is None
    assert await claim(now + timedelta(minutes=30)) == now + timedelta(hours=1)
    assert await claim(now + timedelta(minutes=30), contact="contact-2") is None
    assert await claim(now + timedelta(hours=1)) is None  # the first cooldown has ended
    assert await claim(now + timedelta(hours=1, minutes=1)) == now + timedelta(hours=2)


async def test_two_transactions_claiming_one_cooldown_at_once_let_one_through(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    """As two matcher replicas deciding events of one contact at once: the second claim waits
    for the first transaction and then sees its cooldown."""
    now = utcnow()
    first_claimed = asyncio.Event()
    release_first = asyncio.Event()

    async def claimer(hold: bool) -> datetime | None:
        async with sessions() as session, session.begin():
            held = await SqlCooldownRepository(session).claim(
                team.team_id, "welcome", "contact-1", now, now + timedelta(hours=1)
            )
            if hold:
                first_claimed.set()
                await release_first.wait()
            return held

    first = asyncio.create_task(claimer(hold=True))
    await first_claimed.wait()
    second = asyncio.create_task(claimer(hold=False))
    await asyncio.sleep(0.3)
    assert not second.done()  # waiting on the first transaction's row
    release_first.set()

    assert await first is None
    assert await second == now + timedelta(hours=1)


async def test_memberships_of_a_batch_are_recorded_and_newly_entered_segments_answered(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    other = f"{team.team_id}-other"
    now = utcnow()

    async def record(*members: tuple[str, str, frozenset[str]]) -> list[tuple[str, str, str]]:
        async with sessions() as session, session.begin():
            return await SqlSegmentRepository(session).set_memberships(members, now)

    async def held() -> list[tuple[str, str, str]]:
        async with sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT team_id, contact_id, segment_key FROM matcher.segment_members "
                    "WHERE team_id IN (:a, :b) ORDER BY 1, 2, 3"
                ),
                {"a": team.team_id, "b": other},
            )
            return [tuple(row) for row in rows]

    first = await record(
        (team.team_id, "ada", frozenset({"pro", "beta"})),
        (team.team_id, "bob", frozenset({"pro"})),
        (other, "ada", frozenset({"pro"})),
    )
    mine = team.team_id
    assert first == [(mine, "ada", "beta"), (mine, "ada", "pro"), (mine, "bob", "pro"), (other, "ada", "pro")]

    # Ada leaves beta, Bob leaves everything; the other project's Ada is not named and keeps hers.
    assert await record((team.team_id, "ada", frozenset({"pro"})), (team.team_id, "bob", frozenset())) == []
    assert await held() == [(team.team_id, "ada", "pro"), (other, "ada", "pro")]

    assert await record((team.team_id, "ada", frozenset({"pro", "beta"}))) == [(team.team_id, "ada", "beta")]
