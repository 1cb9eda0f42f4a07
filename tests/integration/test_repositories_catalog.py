"""The event catalog on real PostgreSQL: each event counts once however often it is delivered,
drift is when a path or type first appeared, reviews stick, examples are redacted, kept to the
latest few, erased per contact and purged by age."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.clock import utcnow
from kernel.errors import InvalidArgument, NotFound
from services.tracker import catalog_handlers
from services.tracker.catalog import EXAMPLES_PER_EVENT, MAX_PATHS_PER_EVENT, CatalogDetail
from services.tracker.catalog_adapters import CatalogSqlUnitOfWork
from services.tracker.catalog_handlers import ObservedEvent
from tests.conftest import TeamCredentials

START = utcnow().replace(microsecond=0) - timedelta(hours=1)


def an_event(
    team: TeamCredentials,
    name: str,
    data: dict[str, Any],
    *,
    at: float = 0,
    source: str = "api",
    contact_id: str | None = None,
    user_info: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> ObservedEvent:
    return ObservedEvent(
        team_id=team.team_id,
        event_id=event_id or str(uuid.uuid4()),
        name=name,
        source=source,
        accepted_at=START + timedelta(seconds=at),
        contact_id=contact_id,
        sections={"data": data, "variables": {}, "user_info": user_info or {}},
    )


@pytest.fixture
def uow(sessions: async_sessionmaker[AsyncSession]) -> CatalogSqlUnitOfWork:
    return CatalogSqlUnitOfWork(sessions)


async def detail(team: TeamCredentials, name: str, uow: CatalogSqlUnitOfWork) -> CatalogDetail:
    return await catalog_handlers.get_catalog_event(team.team_id, name, uow)


def schema(found: CatalogDetail) -> dict[str, tuple[int, bool, dict[str, tuple[int, bool]]]]:
    return {
        hint.path: (hint.count, hint.drift, {t.type: (t.count, t.drift) for t in hint.types})
        for hint in found.paths
    }


async def test_a_redelivered_event_counts_once(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    first = an_event(team, "order.completed", {"total": 10}, source="web")
    second = an_event(team, "order.completed", {"total": 12}, at=5)
    # Twice in one fetch, then again in a later fetch with another event.
    await catalog_handlers.record_events([first, first, second], uow)
    await catalog_handlers.record_events([second, first, an_event(team, "order.completed", {}, at=9)], uow)
    found = await detail(team, "order.completed", uow)
    assert found.entry.count == 3
    assert {(s.type, s.count) for s in found.entry.sources} == {("api", 2), ("web", 1)}
    assert schema(found) == {"data.total": (2, False, {"number": (2, False)})}
    assert (found.entry.first_seen, found.entry.last_seen) == (START, START + timedelta(seconds=9))
    assert len(found.examples) == 3


async def test_drift_is_a_path_or_type_first_seen_after_the_name(
    team: TeamCredentials, uow: CatalogSqlUnitOfWork
) -> None:
    await catalog_handlers.record_events([an_event(team, "user_signup", {"plan": "pro"})], uow)
    # Later: a new path, and a new type at a known path; out of order within the batch.
    await catalog_handlers.record_events(
        [
            an_event(team, "user_signup", {"plan": 3, "referrer": "ad"}, at=20),
            an_event(team, "user_signup", {"plan": "team"}, at=10),
        ],
        uow,
    )
    found = await detail(team, "user_signup", uow)
    assert schema(found) == {
        "data.plan": (3, False, {"string": (2, False), "number": (1, True)}),
        "data.referrer": (1, True, {"string": (1, True)}),
    }
    assert found.entry.drift
    plan = next(hint for hint in found.paths if hint.path == "data.plan")
    assert [t.first_seen for t in plan.types] == [START, START + timedelta(seconds=20)]
    # An event that arrives late but happened first moves first_seen back: no drift for it.
    await catalog_handlers.record_events([an_event(team, "user_signup", {"referrer": "x"}, at=-5)], uow)
    assert schema(await detail(team, "user_signup", uow))["data.referrer"][1] is False


async def test_paths_per_event_are_capped(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    await catalog_handlers.record_events(
        [an_event(team, "wide", {f"a{i}": i for i in range(MAX_PATHS_PER_EVENT - 2)})], uow
    )
    await catalog_handlers.record_events([an_event(team, "wide", {f"b{i}": i for i in range(10)}, at=1)], uow)
    found = await detail(team, "wide", uow)
    assert len(found.paths) == MAX_PATHS_PER_EVENT
    assert found.truncated


async def test_pii_flags_reviews_and_redaction(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    name = "billing.payment_failed"
    data = {"email": "jane@example.com", "product": {"name": "Blue mug"}, "plan": "pro"}
    await catalog_handlers.record_events([an_event(team, name, data)], uow)
    found = await detail(team, name, uow)
    assert {(f.path, f.kinds, f.status) for f in found.pii} == {
        ("data.email", ("email",), "detected"),
        ("data.product.name", ("name",), "detected"),
    }
    assert found.entry.pii_paths == 2
    assert found.examples[0].payload["data"]["product"] == {"name": "[REDACTED:name]"}

    at = utcnow()
    await catalog_handlers.review_pii(team.team_id, name, "data.product.name", "dismiss", at, uow)
    reviewed = await catalog_handlers.review_pii(team.team_id, name, "data.plan", "confirm", at, uow)
    # The example stored before is redacted at the confirmed path too.
    assert reviewed.examples[0].payload["data"]["plan"] == "[REDACTED:pii]"
    assert reviewed.examples[0].payload["data"]["email"] == "j***@example.com"
    flags = {f.path: (f.kinds, f.status) for f in reviewed.pii}
    assert flags["data.product.name"] == (("name",), "dismissed")
    assert flags["data.plan"] == ((), "confirmed")
    assert reviewed.pii[0].reviewed_at is not None or reviewed.pii[1].reviewed_at is not None

    # Seen again: the dismissal stands, the confirmed path is redacted though it looks harmless.
    await catalog_handlers.record_events([an_event(team, name, data, at=5)], uow)
    again = await detail(team, name, uow)
    assert {f.path: f.status for f in again.pii}["data.product.name"] == "dismissed"
    newest = again.examples[0].payload["data"]
    assert newest == {"email": "j***@example.com", "product": {"name": "Blue mug"}, "plan": "[REDACTED:pii]"}
    assert again.entry.pii_paths == 2  # email (detected) and plan (confirmed)


async def test_reviews_refuse_bad_input(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    await catalog_handlers.record_events([an_event(team, "reviewed", {"email": "a@example.com"})], uow)
    with pytest.raises(InvalidArgument, match="action must be 'confirm' or 'dismiss', got 'maybe'"):
        await catalog_handlers.review_pii(team.team_id, "reviewed", "data.email", "maybe", utcnow(), uow)
    with pytest.raises(InvalidArgument, match="path is required"):
        await catalog_handlers.review_pii(team.team_id, "reviewed", "", "confirm", utcnow(), uow)
    with pytest.raises(NotFound, match=r"Event 'reviewed' has no path 'data\.nope'"):
        await catalog_handlers.review_pii(team.team_id, "reviewed", "data.nope", "confirm", utcnow(), uow)
    with pytest.raises(NotFound, match="Event 'unknown' is not in the catalog"):
        await catalog_handlers.review_pii(team.team_id, "unknown", "data.email", "confirm", utcnow(), uow)


async def test_listing_filters_and_pages(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    await catalog_handlers.record_events(
        [
            an_event(team, "order.completed", {"total": 1}, source="web"),
            an_event(team, "order.refunded", {"email": "x@example.com"}),
            an_event(team, "billing.payment_failed", {"card": "4111111111111111"}, source="cron"),
            an_event(team, "user_signup", {}),
        ],
        uow,
    )

    async def names(**filters: Any) -> list[str]:
        entries, _ = await catalog_handlers.list_catalog(team.team_id, uow, **filters)
        return [entry.name for entry in entries]

    assert await names() == ["billing.payment_failed", "order.completed", "order.refunded", "user_signup"]
    assert await names(name="order.") == ["order.completed", "order.refunded"]
    assert await names(name="*pay*") == ["billing.payment_failed"]
    assert await names(name="user_") == ["user_signup"]
    assert await names(name="*_") == []  # `_` is a character, not a wildcard
    assert await names(source="web") == ["order.completed"]
    assert await names(pii=True) == ["billing.payment_failed", "order.refunded"]
    assert await names(pii=False) == ["order.completed", "user_signup"]
    first, cursor = await catalog_handlers.list_catalog(team.team_id, uow, limit=3)
    rest, end = await catalog_handlers.list_catalog(team.team_id, uow, limit=3, cursor=cursor)
    assert [e.name for e in first + rest] == await names()
    assert end == ""
    await catalog_handlers.review_pii(team.team_id, "order.refunded", "data.email", "dismiss", utcnow(), uow)
    assert await names(pii=True) == ["billing.payment_failed"]


async def test_examples_keep_the_latest_few_and_are_erased_and_purged(
    team: TeamCredentials, uow: CatalogSqlUnitOfWork, sessions: async_sessionmaker[AsyncSession]
) -> None:
    jane, bob = str(uuid.uuid4()), str(uuid.uuid4())
    events = [
        an_event(team, "page.viewed", {"n": i}, at=i, contact_id=jane if i % 2 else bob) for i in range(8)
    ]
    await catalog_handlers.record_events(events[:3], uow)
    await catalog_handlers.record_events(events[3:], uow)
    found = await detail(team, "page.viewed", uow)
    assert [e.payload["data"]["n"] for e in found.examples] == [7, 6, 5, 4, 3][:EXAMPLES_PER_EVENT]

    assert await catalog_handlers.erase_contact_examples(team.team_id, jane, uow) == 3  # 7, 5, 3
    assert [e.payload["data"]["n"] for e in (await detail(team, "page.viewed", uow)).examples] == [6, 4]
    assert await catalog_handlers.erase_contact_examples(team.team_id, jane, uow) == 0

    other = await an_other_team_example(sessions, uow)
    before = START + timedelta(seconds=5)
    assert await catalog_handlers.purge_examples(team.team_id, before, 10, uow) == 1  # 4
    assert [e.payload["data"]["n"] for e in (await detail(team, "page.viewed", uow)).examples] == [6]
    assert await catalog_handlers.purge_examples(team.team_id, before, 10, uow) == 0
    assert await catalog_handlers.purge_examples(team.team_id, utcnow(), 10, uow) == 1
    assert await examples_of(sessions, other) == 1  # another team's examples are left alone


async def an_other_team_example(sessions: async_sessionmaker[AsyncSession], uow: CatalogSqlUnitOfWork) -> str:
    other = TeamCredentials(f"team-{uuid.uuid4().hex[:12]}", "")
    await catalog_handlers.record_events([an_event(other, "page.viewed", {"n": 0}, at=-100)], uow)
    return other.team_id


async def examples_of(sessions: async_sessionmaker[AsyncSession], team_id: str) -> int:
    async with sessions() as session:
        found = await session.scalar(
            text("SELECT count(*) FROM tracker.catalog_examples WHERE team_id = :team"), {"team": team_id}
        )
    return int(found or 0)


async def test_purge_is_bounded(team: TeamCredentials, uow: CatalogSqlUnitOfWork) -> None:
    await catalog_handlers.record_events([an_event(team, f"bulk.e{i}", {}, at=i) for i in range(6)], uow)
    assert await catalog_handlers.purge_examples(team.team_id, utcnow(), 4, uow) == 4
    assert await catalog_handlers.purge_examples(team.team_id, utcnow(), 4, uow) == 2


async def test_counted_event_ids_are_forgotten_by_age(
    team: TeamCredentials, uow: CatalogSqlUnitOfWork
) -> None:
    old = an_event(team, "aged", {}, at=-30 * 24 * 3600)
    await catalog_handlers.record_events([old, an_event(team, "aged", {})], uow)
    before = START - timedelta(days=29)
    assert await catalog_handlers.forget_counted_events(before, 1000, uow) >= 1
    assert await catalog_handlers.forget_counted_events(before, 1000, uow) == 0
    # Forgotten, the old event would count again: hence `before` beyond the stream's max age.
    await catalog_handlers.record_events([old], uow)
    assert (await detail(team, "aged", uow)).entry.count == 3
