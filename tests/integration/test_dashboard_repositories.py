"""The dashboard's list queries on real PostgreSQL: the contact search (prefixes of external id and
email, LIKE wildcards taken literally, pages newest first) and the dead letters (filters, pages,
the DLQ's size)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from services.executor.adapters import SqlDeadLetterRepository
from services.executor.domain import DeadLetter, DeadLetterQuery
from services.ingest.adapters import SqlContactRepository
from services.ingest.domain import Contact
from tests.conftest import TeamCredentials


async def test_contacts_are_found_by_a_prefix_of_external_id_or_email_newest_first(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    people = [
        ("ada_1", "ada@example.com"),
        ("adax1", "x@example.com"),
        ("bob", "bob%@example.com"),
        ("cy", None),
    ]
    async with sessions() as session, session.begin():
        for external_id, email in people:
            await SqlContactRepository(session).add(
                Contact(uuid.uuid4(), team.team_id, external_id, email, None, None)
            )
        # One at a time, a second apart, so that newest first is well defined.
        await session.execute(
            text(
                "UPDATE ingest.contacts SET created_at = now() - (ascii(external_id) * interval '1 second')"
                " - (length(external_id) * interval '1 minute') WHERE team_id = :team"
            ),
            {"team": team.team_id},
        )

    async def search(
        prefix: str, limit: int = 10, after: tuple[object, uuid.UUID] | None = None
    ) -> list[str]:
        async with sessions() as session:
            found = await SqlContactRepository(session).search(team.team_id, prefix, limit, after)  # type: ignore[arg-type]
        return [contact.external_id or "" for contact in found]

    every = await search("")
    assert sorted(every) == ["ada_1", "adax1", "bob", "cy"]
    assert await search("ada_") == ["ada_1"]  # "_" is a character, not a wildcard
    assert await search("ADA@") == ["ada_1"]
    assert await search("bob%") == ["bob"]
    assert await search("b%b") == []
    assert await search("x@") == ["adax1"]
    async with sessions() as session:
        [first, second] = await SqlContactRepository(session).search(team.team_id, "", 2, None)
        rest = await SqlContactRepository(session).search(
            team.team_id,
            "",
            10,
            (second.created_at, second.id),  # type: ignore[arg-type]
        )
    assert [first.external_id, second.external_id] + [c.external_id for c in rest] == every
    assert first.created_at is not None and second.created_at is not None
    assert first.created_at >= second.created_at


async def test_dead_letters_are_filtered_paged_and_counted(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    now = utcnow()

    def letter(minutes: int, status: str = "dead", channel: str = "webhook") -> DeadLetter:
        return DeadLetter(
            uuid.uuid4(),
            team.team_id,
            uuid.uuid4(),
            uuid.uuid4(),
            f"s{minutes}",
            channel,
            "HTTP 500",
            3,
            now - timedelta(minutes=minutes),
            status,
        )

    letters = [letter(1), letter(2, "replayed"), letter(3, channel="sms"), letter(4)]
    async with sessions() as session, session.begin():
        for one in letters:
            await SqlDeadLetterRepository(session).add(one)
        await SqlDeadLetterRepository(session).add(
            DeadLetter(uuid.uuid4(), "other-team", uuid.uuid4(), uuid.uuid4(), "x", "sms", "e", 1, now)
        )

    async with sessions() as session:
        repository = SqlDeadLetterRepository(session)
        every = await repository.newest(team.team_id, DeadLetterQuery(10))
        dead = await repository.newest(team.team_id, DeadLetterQuery(10, status="dead"))
        sms = await repository.newest(team.team_id, DeadLetterQuery(10, channel="sms"))
        page = await repository.newest(team.team_id, DeadLetterQuery(2))
        rest = await repository.newest(
            team.team_id, DeadLetterQuery(10, after=(page[-1].failed_at, page[-1].id))
        )
        total = await repository.count_dead(team.team_id)

    assert [one.step_id for one in every] == ["s1", "s2", "s3", "s4"]
    assert [one.step_id for one in dead] == ["s1", "s3", "s4"]
    assert [one.step_id for one in sms] == ["s3"]
    assert [one.step_id for one in page + rest] == ["s1", "s2", "s3", "s4"]
    assert total == 3
