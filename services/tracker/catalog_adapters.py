"""The event catalog's tables in the tracker's schema, and its repository.

Every write of a batch is one statement per table (rows travel as one JSON document, see
kernel.database.insert_many); reads for the API are plain SQLAlchemy Core."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    String,
    Text,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from kernel.database import driver, insert_many, insert_many_returning, pipelined, table_of, update_many
from kernel.unit_of_work import SqlUnitOfWork
from services.tracker.adapters import TrackerBase
from services.tracker.catalog import (
    CatalogDetail,
    CatalogEntry,
    Example,
    PathHint,
    PiiFlag,
    PiiStatus,
    SourceCount,
    TypeHint,
    pii_status,
)
from services.tracker.catalog_handlers import (
    CatalogFilter,
    EventKey,
    EventTally,
    KnownPath,
    ObservedEvent,
    StoredExample,
    Tally,
)


class CatalogEventRow(TrackerBase):
    __tablename__ = "catalog_events"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(BigInteger)
    # Whether a payload had more paths, deeper paths or longer paths than the catalog keeps.
    truncated: Mapped[bool] = mapped_column(Boolean, server_default="false")


class CatalogSourceRow(TrackerBase):
    __tablename__ = "catalog_sources"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    source_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogPathRow(TrackerBase):
    __tablename__ = "catalog_paths"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Every kind of personal data detected at the path so far, and the owner's review of the
    # flag: "" (none), "confirmed" or "dismissed".
    pii_kinds: Mapped[list[str]] = mapped_column(ARRAY(String(16)), server_default="{}")
    pii_review: Mapped[str] = mapped_column(String(16), server_default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CatalogTypeRow(TrackerBase):
    __tablename__ = "catalog_path_types"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    json_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogExampleRow(TrackerBase):
    """A redacted example of an event; the contact's id lets an erasure find it."""

    __tablename__ = "catalog_examples"
    __table_args__ = (
        Index("ix_catalog_examples_team_name_accepted", "team_id", "name", "accepted_at"),
        Index("ix_catalog_examples_team_contact", "team_id", "contact_id"),
        Index("ix_catalog_examples_team_accepted", "team_id", "accepted_at"),
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    contact_id: Mapped[str | None] = mapped_column(String(64))
    source_type: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)


class CatalogAppliedRow(TrackerBase):
    """An event the catalog has counted: a redelivery of it counts nothing."""

    __tablename__ = "catalog_applied_events"
    __table_args__ = (Index("ix_catalog_applied_events_accepted", "accepted_at"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


EVENTS = table_of(CatalogEventRow)
SOURCES = table_of(CatalogSourceRow)
PATHS = table_of(CatalogPathRow)
TYPES = table_of(CatalogTypeRow)
EXAMPLES = table_of(CatalogExampleRow)
APPLIED = table_of(CatalogAppliedRow)

_COUNTED = (
    "count = {t}.count + EXCLUDED.count, first_seen = least({t}.first_seen, EXCLUDED.first_seen), "
    "last_seen = greatest({t}.last_seen, EXCLUDED.last_seen)"
)

TRIM_EXAMPLES = (
    "DELETE FROM tracker.catalog_examples e USING ("
    " SELECT x.event_id FROM (SELECT c.event_id, row_number() OVER ("
    "  PARTITION BY c.team_id, c.name ORDER BY c.accepted_at DESC, c.event_id DESC) AS rank"
    "  FROM tracker.catalog_examples c"
    "  JOIN jsonb_to_recordset(%(keys)s::jsonb) AS k(team_id text, name text)"
    "  ON c.team_id = k.team_id AND c.name = k.name) x WHERE x.rank > %(keep)s"
    ") old WHERE e.event_id = old.event_id"
)
MARK_TRUNCATED = (
    "UPDATE tracker.catalog_events e SET truncated = true "
    "FROM jsonb_to_recordset(%(keys)s::jsonb) AS k(team_id text, name text) "
    "WHERE e.team_id = k.team_id AND e.name = k.name AND NOT e.truncated"
)
KNOWN_PATHS = (
    "SELECT p.team_id, p.name, p.path, p.pii_kinds, p.pii_review FROM tracker.catalog_paths p "
    "JOIN jsonb_to_recordset(%(keys)s::jsonb) AS k(team_id text, name text) "
    "ON p.team_id = k.team_id AND p.name = k.name"
)


class _Times(dict[datetime, str]):
    """The ISO forms of a batch's timestamps, as rows' JSON carries them: the rows of a batch
    share a few (their events' accepted_at), each is formatted once."""

    def __missing__(self, at: datetime) -> str:
        text = self[at] = at.isoformat()
        return text


def _keys(keys: Sequence[EventKey]) -> str:
    return json.dumps([{"team_id": team_id, "name": name} for team_id, name in keys])


def _flagged() -> Any:
    """A path whose PII flag stands: detected and not dismissed, or confirmed."""
    return or_(
        PATHS.c.pii_review == PiiStatus.CONFIRMED,
        and_(func.cardinality(PATHS.c.pii_kinds) > 0, PATHS.c.pii_review != PiiStatus.DISMISSED),
    )


class SqlCatalogRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    def together(self) -> AbstractAsyncContextManager[None]:
        """One round trip for the statements inside (kernel.database.pipelined)."""
        return pipelined(self._session)

    async def claim(self, events: Sequence[ObservedEvent]) -> set[str]:
        times = _Times()
        rows = {
            e.event_id: {"event_id": e.event_id, "team_id": e.team_id, "accepted_at": times[e.accepted_at]}
            for e in events
        }
        claimed = await insert_many_returning(
            await driver(self._session),
            APPLIED,
            [rows[event_id] for event_id in sorted(rows)],
            "event_id",
            on_conflict="ON CONFLICT (event_id) DO NOTHING",
        )
        return {row[0] for row in claimed}

    async def tally_events(self, tallies: Sequence[EventTally]) -> None:
        times = _Times()
        await insert_many(
            await driver(self._session),
            EVENTS,
            [
                {
                    "team_id": t.team_id,
                    "name": t.name,
                    "count": t.count,
                    "first_seen": times[t.first_seen],
                    "last_seen": times[t.last_seen],
                    "truncated": t.truncated,
                }
                for t in tallies
            ],
            on_conflict="ON CONFLICT (team_id, name) DO UPDATE SET "
            + _COUNTED.format(t="catalog_events")
            + ", truncated = catalog_events.truncated OR EXCLUDED.truncated",
        )

    async def tally_sources(self, tallies: Mapping[tuple[str, str, str], Tally]) -> None:
        times = _Times()
        await insert_many(
            await driver(self._session),
            SOURCES,
            [
                {
                    "team_id": key[0],
                    "name": key[1],
                    "source_type": key[2],
                    "count": t.count,
                    "first_seen": times[t.first_seen],
                    "last_seen": times[t.last_seen],
                }
                for key, t in sorted(tallies.items())
            ],
            on_conflict="ON CONFLICT (team_id, name, source_type) DO UPDATE SET "
            + _COUNTED.format(t="catalog_sources"),
        )

    async def mark_truncated(self, keys: Sequence[EventKey]) -> None:
        connection = await driver(self._session)
        await connection.execute(MARK_TRUNCATED, {"keys": _keys(keys)})

    async def known_paths(self, keys: Sequence[EventKey]) -> dict[EventKey, dict[str, KnownPath]]:
        connection = await driver(self._session)
        cursor = await connection.execute(KNOWN_PATHS, {"keys": _keys(keys)})
        known: dict[EventKey, dict[str, KnownPath]] = {}
        for team_id, name, path, kinds, review in await cursor.fetchall():
            known.setdefault((team_id, name), {})[path] = KnownPath(tuple(kinds or ()), review)
        return known

    async def tally_paths(self, tallies: Mapping[tuple[str, str, str], Tally]) -> None:
        times = _Times()
        await insert_many(
            await driver(self._session),
            PATHS,
            [
                {
                    "team_id": key[0],
                    "name": key[1],
                    "path": key[2],
                    "count": t.count,
                    "first_seen": times[t.first_seen],
                    "last_seen": times[t.last_seen],
                    "pii_kinds": sorted(t.kinds),
                }
                for key, t in sorted(tallies.items())
            ],
            on_conflict="ON CONFLICT (team_id, name, path) DO UPDATE SET "
            + _COUNTED.format(t="catalog_paths")
            + ", pii_kinds = EXCLUDED.pii_kinds",
        )

    async def tally_types(self, tallies: Mapping[tuple[str, str, str, str], Tally]) -> None:
        times = _Times()
        await insert_many(
            await driver(self._session),
            TYPES,
            [
                {
                    "team_id": key[0],
                    "name": key[1],
                    "path": key[2],
                    "json_type": key[3],
                    "count": t.count,
                    "first_seen": times[t.first_seen],
                    "last_seen": times[t.last_seen],
                }
                for key, t in sorted(tallies.items())
            ],
            on_conflict="ON CONFLICT (team_id, name, path, json_type) DO UPDATE SET "
            + _COUNTED.format(t="catalog_path_types"),
        )

    async def add_examples(self, examples: Sequence[StoredExample], keep: int) -> None:
        if not examples:
            return
        connection = await driver(self._session)
        times = _Times()
        await insert_many(
            connection,
            EXAMPLES,
            [
                {
                    "event_id": e.event_id,
                    "team_id": e.team_id,
                    "name": e.name,
                    "contact_id": e.contact_id,
                    "source_type": e.source,
                    "accepted_at": times[e.accepted_at],
                    "payload": e.payload,
                }
                for e in examples
            ],
            on_conflict="ON CONFLICT (event_id) DO NOTHING",
        )
        keys = sorted({(e.team_id, e.name) for e in examples})
        await connection.execute(TRIM_EXAMPLES, {"keys": _keys(keys), "keep": keep})

    async def entries(self, team_id: str, where: CatalogFilter, after: str, limit: int) -> list[CatalogEntry]:
        key = and_(PATHS.c.team_id == EVENTS.c.team_id, PATHS.c.name == EVENTS.c.name)
        pii_paths = select(func.count()).where(key, _flagged()).scalar_subquery()
        drift = exists().where(
            TYPES.c.team_id == EVENTS.c.team_id,
            TYPES.c.name == EVENTS.c.name,
            TYPES.c.first_seen > EVENTS.c.first_seen,
        )
        query = select(EVENTS, pii_paths.label("pii_paths"), drift.label("drift")).where(
            EVENTS.c.team_id == team_id
        )
        if where.name_pattern:
            query = query.where(EVENTS.c.name.like(where.name_pattern, escape="\\"))
        if where.source:
            query = query.where(
                exists().where(
                    SOURCES.c.team_id == EVENTS.c.team_id,
                    SOURCES.c.name == EVENTS.c.name,
                    SOURCES.c.source_type == where.source,
                )
            )
        if where.pii is not None:
            flagged = exists().where(key, _flagged())
            query = query.where(flagged if where.pii else ~flagged)
        if after:
            query = query.where(EVENTS.c.name > after)
        rows = list(await self._session.execute(query.order_by(EVENTS.c.name).limit(limit)))
        sources = await self._sources(team_id, [row.name for row in rows])
        return [_entry(row, sources.get(row.name, ()), row.pii_paths, row.drift) for row in rows]

    async def _sources(self, team_id: str, names: list[str]) -> dict[str, tuple[SourceCount, ...]]:
        if not names:
            return {}
        rows = await self._session.execute(
            select(SOURCES.c.name, SOURCES.c.source_type, SOURCES.c.count)
            .where(SOURCES.c.team_id == team_id, SOURCES.c.name.in_(names))
            .order_by(SOURCES.c.name, SOURCES.c.count.desc(), SOURCES.c.source_type)
        )
        found: dict[str, list[SourceCount]] = {}
        for row in rows:
            found.setdefault(row.name, []).append(SourceCount(row.source_type, _count(row)))
        return {name: tuple(counts) for name, counts in found.items()}

    async def detail(self, team_id: str, name: str) -> CatalogDetail | None:
        event = (
            await self._session.execute(
                select(EVENTS).where(EVENTS.c.team_id == team_id, EVENTS.c.name == name)
            )
        ).first()
        if event is None:
            return None
        paths = list(
            await self._session.execute(
                select(PATHS).where(PATHS.c.team_id == team_id, PATHS.c.name == name).order_by(PATHS.c.path)
            )
        )
        types: dict[str, list[TypeHint]] = {}
        for row in await self._session.execute(
            select(TYPES)
            .where(TYPES.c.team_id == team_id, TYPES.c.name == name)
            .order_by(TYPES.c.path, TYPES.c.first_seen, TYPES.c.json_type)
        ):
            types.setdefault(row.path, []).append(
                TypeHint(
                    row.json_type,
                    _count(row),
                    row.first_seen,
                    row.last_seen,
                    row.first_seen > event.first_seen,
                )
            )
        hints = tuple(
            PathHint(
                p.path,
                _count(p),
                p.first_seen,
                p.last_seen,
                p.first_seen > event.first_seen,
                tuple(types.get(p.path, ())),
            )
            for p in paths
        )
        flags = []
        for p in paths:
            status = pii_status(tuple(p.pii_kinds or ()), p.pii_review)
            if status is not None:
                flags.append(PiiFlag(p.path, tuple(p.pii_kinds or ()), status, p.reviewed_at))
        examples = tuple(
            Example(row.event_id, row.accepted_at, row.source_type, row.payload)
            for row in await self._session.execute(
                select(EXAMPLES)
                .where(EXAMPLES.c.team_id == team_id, EXAMPLES.c.name == name)
                .order_by(EXAMPLES.c.accepted_at.desc(), EXAMPLES.c.event_id.desc())
            )
        )
        sources = await self._sources(team_id, [name])
        pii_paths = sum(1 for f in flags if f.status != PiiStatus.DISMISSED)
        drift = any(hint.drift or any(t.drift for t in hint.types) for hint in hints)
        return CatalogDetail(
            _entry(event, sources.get(name, ()), pii_paths, drift),
            hints,
            tuple(flags),
            examples,
            event.truncated,
        )

    async def review(self, team_id: str, name: str, path: str, status: str, at: datetime) -> bool:
        result = await self._session.execute(
            update(PATHS)
            .where(PATHS.c.team_id == team_id, PATHS.c.name == name, PATHS.c.path == path)
            .values(pii_review=status, reviewed_at=at)
        )
        return bool(getattr(result, "rowcount", 0))

    async def has_event(self, team_id: str, name: str) -> bool:
        found = await self._session.scalar(
            select(exists().where(EVENTS.c.team_id == team_id, EVENTS.c.name == name))
        )
        return bool(found)

    async def examples(self, team_id: str, name: str) -> dict[str, Mapping[str, Any]]:
        rows = await self._session.execute(
            select(EXAMPLES.c.event_id, EXAMPLES.c.payload)
            .where(EXAMPLES.c.team_id == team_id, EXAMPLES.c.name == name)
            .order_by(EXAMPLES.c.event_id)
            .with_for_update()
        )
        return {row.event_id: row.payload for row in rows}

    async def rewrite_examples(self, team_id: str, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        if not payloads:
            return
        await update_many(
            await driver(self._session),
            EXAMPLES,
            [{"event_id": event_id, "payload": payload} for event_id, payload in sorted(payloads.items())],
            "payload = r.payload",
            key="event_id",
        )

    async def erase_contact_examples(self, team_id: str, contact_id: str) -> int:
        result = await self._session.execute(
            delete(EXAMPLES).where(EXAMPLES.c.team_id == team_id, EXAMPLES.c.contact_id == contact_id)
        )
        return int(getattr(result, "rowcount", 0))

    async def purge_examples(self, team_id: str, before: datetime, limit: int) -> int:
        oldest = (
            select(EXAMPLES.c.event_id)
            .where(EXAMPLES.c.team_id == team_id, EXAMPLES.c.accepted_at < before)
            .order_by(EXAMPLES.c.accepted_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await self._session.execute(delete(EXAMPLES).where(EXAMPLES.c.event_id.in_(oldest)))
        return int(getattr(result, "rowcount", 0))

    async def forget_counted_events(self, before: datetime, limit: int) -> int:
        oldest = (
            select(APPLIED.c.event_id)
            .where(APPLIED.c.accepted_at < before)
            .order_by(APPLIED.c.accepted_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await self._session.execute(delete(APPLIED).where(APPLIED.c.event_id.in_(oldest)))
        return int(getattr(result, "rowcount", 0))


def _count(row: Any) -> int:
    """A row's `count` column (`row.count` is the tuple's method)."""
    return int(row._mapping["count"])


def _entry(row: Any, sources: tuple[SourceCount, ...], pii_paths: int, drift: bool) -> CatalogEntry:
    return CatalogEntry(
        row.name, row.first_seen, row.last_seen, _count(row), sources, int(pii_paths or 0), bool(drift)
    )


class CatalogSqlUnitOfWork(SqlUnitOfWork):
    catalog: SqlCatalogRepository

    def open_repositories(self, session: AsyncSession) -> None:
        self.catalog = SqlCatalogRepository(session)
