"""The event catalog's use cases: record what a fetch of events looked like (each event once),
list and describe the catalogued event names, review PII flags, erase and purge examples."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kernel.errors import InvalidArgument, NotFound
from kernel.unit_of_work import UnitOfWork
from services.tracker.catalog import (
    EXAMPLES_PER_EVENT,
    MAX_PATHS_PER_EVENT,
    CatalogDetail,
    CatalogEntry,
    PiiAction,
    PiiStatus,
    Review,
    Scans,
    confirmed_kind,
    event_shape,
    redacted_example,
)

EventKey = tuple[str, str]
"""(team id, event name)."""


@dataclass(frozen=True)
class ObservedEvent:
    """An event as the catalog sees it (from the EVENTS stream)."""

    team_id: str
    event_id: str
    name: str
    source: str
    accepted_at: datetime
    contact_id: str | None
    sections: Mapping[str, Any]


@dataclass(frozen=True)
class KnownPath:
    kinds: tuple[str, ...]
    review: str


@dataclass
class EventTally:
    team_id: str
    name: str
    count: int
    first_seen: datetime
    last_seen: datetime
    truncated: bool = False


@dataclass
class Tally:
    """How often something was seen in a batch, and when first and last."""

    count: int
    first_seen: datetime
    last_seen: datetime
    kinds: set[str] = field(default_factory=set)
    # A path's tallies by JSON type.
    types: dict[str, Tally] = field(default_factory=dict)

    def see(self, at: datetime) -> None:
        self.count += 1
        if at < self.first_seen:
            self.first_seen = at
        elif at > self.last_seen:
            self.last_seen = at


@dataclass(frozen=True)
class StoredExample:
    team_id: str
    name: str
    event_id: str
    contact_id: str | None
    source: str
    accepted_at: datetime
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class CatalogFilter:
    # A LIKE pattern over names (see name_pattern), "" for all.
    name_pattern: str = ""
    source: str = ""
    pii: bool | None = None


class CatalogRepository(Protocol):
    """Every write takes the rows of a whole batch in one statement."""

    def together(self) -> AbstractAsyncContextManager[None]:
        """Send the statements made inside to the database together (one round trip up to each
        read that needs its rows); a failed one raises at the latest when the block ends."""
        ...

    async def claim(self, events: Sequence[ObservedEvent]) -> set[str]:
        """The ids of the events not recorded before (each is recorded from now on)."""
        ...

    async def tally_events(self, tallies: Sequence[EventTally]) -> None:
        """Count the events per name; the names' rows stay locked until the unit of work ends."""
        ...

    async def tally_sources(self, tallies: Mapping[tuple[str, str, str], Tally]) -> None: ...

    async def mark_truncated(self, keys: Sequence[EventKey]) -> None:
        """Note that these event names had more paths than the catalog keeps."""
        ...

    async def known_paths(self, keys: Sequence[EventKey]) -> dict[EventKey, dict[str, KnownPath]]: ...

    async def tally_paths(self, tallies: Mapping[tuple[str, str, str], Tally]) -> None:
        """Count the paths; each tally's kinds are all the kinds the path has had."""
        ...

    async def tally_types(self, tallies: Mapping[tuple[str, str, str, str], Tally]) -> None: ...

    async def add_examples(self, examples: Sequence[StoredExample], keep: int) -> None:
        """Store the examples, keeping the `keep` latest of each event name."""
        ...

    async def entries(
        self, team_id: str, where: CatalogFilter, after: str, limit: int
    ) -> list[CatalogEntry]: ...

    async def detail(self, team_id: str, name: str) -> CatalogDetail | None: ...

    async def review(self, team_id: str, name: str, path: str, status: str, at: datetime) -> bool:
        """Set a path's review; False when the event name has no such path."""
        ...

    async def has_event(self, team_id: str, name: str) -> bool: ...

    async def examples(self, team_id: str, name: str) -> dict[str, Mapping[str, Any]]:
        """The stored examples of an event name (payload by event id), locked."""
        ...

    async def rewrite_examples(self, team_id: str, payloads: Mapping[str, Mapping[str, Any]]) -> None: ...

    async def erase_contact_examples(self, team_id: str, contact_id: str) -> int: ...

    async def purge_examples(self, team_id: str, before: datetime, limit: int) -> int: ...

    async def forget_counted_events(self, before: datetime, limit: int) -> int: ...


class CatalogUnitOfWork(UnitOfWork, Protocol):
    @property
    def catalog(self) -> CatalogRepository: ...


async def record_events(events: Sequence[ObservedEvent], uow: CatalogUnitOfWork) -> None:
    """Catalogue a fetch of events in one transaction, each event once however often it is
    delivered: names, sources, paths and types are counted for all of them at once."""
    async with uow:
        # Three round trips: the claim, the names and sources with the known paths, the rest.
        async with uow.catalog.together():
            new = await uow.catalog.claim(events)
            fresh: dict[str, ObservedEvent] = {}
            for event in events:
                if event.event_id in new:
                    fresh.setdefault(event.event_id, event)
            if fresh:
                await _record(list(fresh.values()), uow.catalog)
        await uow.commit()


async def _record(events: list[ObservedEvent], catalog: CatalogRepository) -> None:
    # One scan of each value for the paths' kinds and the examples' redaction.
    scans = Scans()
    shapes = [event_shape(event.sections, scans) for event in events]
    tallies: dict[EventKey, EventTally] = {}
    sources: dict[tuple[str, str, str], Tally] = {}
    for event, shape in zip(events, shapes, strict=True):
        key = (event.team_id, event.name)
        tally = tallies.get(key)
        if tally is None:
            tallies[key] = EventTally(*key, 1, event.accepted_at, event.accepted_at, shape.truncated)
        else:
            tally.count += 1
            tally.first_seen = min(tally.first_seen, event.accepted_at)
            tally.last_seen = max(tally.last_seen, event.accepted_at)
            tally.truncated |= shape.truncated
        _see(sources, (*key, event.source), event.accepted_at)
    # In key order: two replicas lock the same names in the same order, never in a cycle.
    await catalog.tally_events([tallies[key] for key in sorted(tallies)])
    await catalog.tally_sources(sources)
    known = await catalog.known_paths(sorted(tallies))
    paths: dict[tuple[str, str, str], Tally] = {}
    capped: set[EventKey] = set()
    for event, shape in zip(events, shapes, strict=True):
        team_id, name, at = event.team_id, event.name, event.accepted_at
        existing = known.setdefault((team_id, name), {})
        for path, seen in shape.paths.items():
            at_path = paths.get((team_id, name, path))
            if at_path is None:
                if path not in existing:
                    if len(existing) >= MAX_PATHS_PER_EVENT:
                        capped.add((team_id, name))
                        continue
                    existing[path] = KnownPath((), "")
                # Every kind the path has had: the stored ones, and what this batch saw.
                at_path = paths[team_id, name, path] = Tally(1, at, at, set(existing[path].kinds))
            else:
                at_path.see(at)
            if seen.kinds:
                at_path.kinds |= seen.kinds
            for json_type in seen.types:
                typed = at_path.types.get(json_type)
                if typed is None:
                    at_path.types[json_type] = Tally(1, at, at)
                else:
                    typed.see(at)
    await catalog.tally_paths(paths)
    await catalog.tally_types(
        {(*key, json_type): typed for key, tally in paths.items() for json_type, typed in tally.types.items()}
    )
    if capped:
        await catalog.mark_truncated(sorted(capped))
    # The latest few of each name, redacted as the paths' reviews say.
    latest: dict[EventKey, list[ObservedEvent]] = {}
    for event in sorted(events, key=lambda e: e.accepted_at, reverse=True):
        kept = latest.setdefault((event.team_id, event.name), [])
        if len(kept) < EXAMPLES_PER_EVENT:
            kept.append(event)
    examples = []
    for key, kept in latest.items():
        review = _review(known.get(key, {}))
        examples += [
            StoredExample(
                e.team_id,
                e.name,
                e.event_id,
                e.contact_id,
                e.source,
                e.accepted_at,
                redacted_example(e.sections, review, scans),
            )
            for e in kept
        ]
    await catalog.add_examples(examples, EXAMPLES_PER_EVENT)


def _see(tallies: dict[Any, Tally], key: Any, at: datetime) -> Tally:
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = Tally(1, at, at)
    else:
        tally.see(at)
    return tally


def _review(paths: Mapping[str, KnownPath]) -> Review:
    return Review(
        confirmed={p: confirmed_kind(k.kinds) for p, k in paths.items() if k.review == PiiStatus.CONFIRMED},
        dismissed=frozenset(p for p, k in paths.items() if k.review == PiiStatus.DISMISSED),
    )


# Listing.

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_NAME_FILTER = 128


def name_pattern(name: str) -> str:
    """The LIKE pattern of a `name` filter: a prefix (`order.` → every `order.*` name), or, with
    `*` in it, a wildcard pattern (`*pay*` → names containing `pay`, `*.failed` → ending so)."""
    if len(name) > MAX_NAME_FILTER:
        raise InvalidArgument(
            f"name must be at most {MAX_NAME_FILTER} characters",
            reason="INVALID_NAME_FILTER",
            metadata={"field": "name"},
        )
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%") if "*" in name else escaped + "%"


def page_limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(
            f"limit must be 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); got {limit}",
            reason="INVALID_LIMIT",
            metadata={"field": "limit"},
        )
    return limit


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The last name of the previous page; 400 when the cursor is not one this API gave."""
    if not cursor:
        return ""
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not name:
        raise InvalidArgument(
            "cursor is not valid: pass the next_cursor of the previous page, or omit it for the first page",
            reason="INVALID_CURSOR",
            metadata={"field": "cursor"},
        )
    return name


async def list_catalog(
    team_id: str,
    uow: CatalogUnitOfWork,
    *,
    name: str = "",
    source: str = "",
    pii: bool | None = None,
    limit: int = 0,
    cursor: str = "",
) -> tuple[list[CatalogEntry], str]:
    """A page of the project's catalogued event names (by name), and the cursor of the next
    page ("" after the last)."""
    size = page_limit(limit)
    after = decode_cursor(cursor)
    where = CatalogFilter(name_pattern(name) if name else "", source, pii)
    async with uow:
        entries = await uow.catalog.entries(team_id, where, after, size + 1)
    more = len(entries) > size
    entries = entries[:size]
    return entries, encode_cursor(entries[-1].name) if more else ""


def event_not_found(name: str) -> NotFound:
    return NotFound(
        f"Event '{name}' is not in the catalog", reason="CATALOG_EVENT_NOT_FOUND", metadata={"name": name}
    )


async def get_catalog_event(team_id: str, name: str, uow: CatalogUnitOfWork) -> CatalogDetail:
    async with uow:
        detail = await uow.catalog.detail(team_id, name)
    if detail is None:
        raise event_not_found(name)
    return detail


async def review_pii(
    team_id: str, name: str, path: str, action: str, at: datetime, uow: CatalogUnitOfWork
) -> CatalogDetail:
    """Confirm or dismiss the PII flag of one path of an event; the event as it is now."""
    if action not in PiiAction.ALL:
        raise InvalidArgument(
            f"action must be 'confirm' or 'dismiss', got {action!r}",
            reason="INVALID_PII_ACTION",
            metadata={"field": "action"},
        )
    if not path:
        raise InvalidArgument(
            "path is required: one of the event's paths, e.g. 'data.email'",
            reason="PATH_REQUIRED",
            metadata={"field": "path"},
        )
    status = PiiStatus.CONFIRMED if action == PiiAction.CONFIRM else PiiStatus.DISMISSED
    async with uow:
        if not await uow.catalog.review(team_id, name, path, status, at):
            if not await uow.catalog.has_event(team_id, name):
                raise event_not_found(name)
            raise NotFound(
                f"Event '{name}' has no path '{path}' in the catalog",
                reason="CATALOG_PATH_NOT_FOUND",
                metadata={"name": name, "path": path},
            )
        if status == PiiStatus.CONFIRMED:
            # The stored examples too: a confirmed path is redacted in every example.
            review = _review((await uow.catalog.known_paths([(team_id, name)])).get((team_id, name), {}))
            stored = await uow.catalog.examples(team_id, name)
            await uow.catalog.rewrite_examples(
                team_id, {event_id: redacted_example(payload, review) for event_id, payload in stored.items()}
            )
        await uow.commit()
    return await get_catalog_event(team_id, name, uow)


async def erase_contact_examples(team_id: str, contact_id: str, uow: CatalogUnitOfWork) -> int:
    """Delete every stored example of the contact's events (right to erasure); how many."""
    async with uow:
        erased = await uow.catalog.erase_contact_examples(team_id, contact_id)
        await uow.commit()
    return erased


async def purge_examples(team_id: str, before: datetime, limit: int, uow: CatalogUnitOfWork) -> int:
    """Delete up to `limit` of the project's examples accepted before `before` (retention); how
    many (call again while it returns `limit`)."""
    async with uow:
        purged = await uow.catalog.purge_examples(team_id, before, limit)
        await uow.commit()
    return purged


async def forget_counted_events(before: datetime, limit: int, uow: CatalogUnitOfWork) -> int:
    """Forget up to `limit` of the event ids the catalog counted, of events accepted before
    `before`; how many. Only for events the bus can no longer redeliver: `before` must be older
    than the EVENTS stream's max age (7 days), or a redelivery would count again."""
    async with uow:
        forgotten = await uow.catalog.forget_counted_events(before, limit)
        await uow.commit()
    return forgotten
