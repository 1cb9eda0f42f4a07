"""Group commit: the events that arrive together are accepted in one transaction.

While one group is being written, the events that arrive wait; when it has committed they form
the next group (up to MAX_GROUP events), written while the bus acknowledges the last group's
messages (its events are answered then). Under light load a group is one event; under heavy
load one transaction, a handful of multi-row statements and one round of publishes carry
hundreds of events.

Each event of a group runs the very same `handlers.accept` as an event stored alone, against
its `_Share` of the group: reads are answered from a snapshot the group takes first (the
contacts, idempotency keys and registered event types its events name, plus what earlier events
of the group created), writes are staged. Then each project's events are counted against its
rate limit at once, the staged rows are written with one statement per table, and the group
commits and publishes.

An event the snapshot cannot settle is deferred: stored alone after the group, by the ordinary
path, so it gets exactly the answer it would have had. That is a key used before (a replay) or
by an earlier event of the group, a contact that must change, and every event of a project
whose rate limit the group would pass. If the group's transaction fails (another replica
created one of its contacts or claimed one of its keys first), each of its events is stored
alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import structlog

from kernel.bus import OutgoingMessage
from kernel.errors import HeraldError, ResourceExhausted
from kernel.unit_of_work import Publication, UnitOfWork
from services.ingest import handlers
from services.ingest.domain import (
    AcceptedEvent,
    Contact,
    EventQueued,
    IdempotencyRecord,
    RateState,
    TriggerRecord,
)
from services.ingest.handlers import Draft

log = structlog.get_logger(__name__)

MAX_GROUP = 500
# Deferred events stored alone at the same time, at most (each holds a connection).
ALONE_CONCURRENCY = 8
# Committed groups whose messages are being published while the next group is written, at most.
MAX_PUBLISHING = 4

TeamKey = tuple[str, str]


class Deferred(Exception):
    """This event needs a transaction of its own."""


@dataclass(frozen=True)
class KeyClaim:
    team_id: str
    key: str
    fingerprint: str
    trigger_id: uuid.UUID
    expires_at: datetime


@dataclass
class Snapshot:
    """What the group's events name, as stored when the group began."""

    contacts: list[Contact] = field(default_factory=list)
    # Idempotency keys whose claim is still in force.
    keys: dict[TeamKey, IdempotencyRecord] = field(default_factory=dict)
    # Event types that exist, among those the events of rejecting projects name.
    event_types: set[TeamKey] = field(default_factory=set)


@dataclass
class Writes:
    """Every row a group stores: one statement per table."""

    claims: list[KeyClaim] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    catalogued: list[TeamKey] = field(default_factory=list)
    events: list[AcceptedEvent] = field(default_factory=list)


class GroupUnitOfWork(UnitOfWork, Protocol):
    """A group's transaction."""

    async def snapshot(self, drafts: Sequence[Draft]) -> Snapshot: ...

    async def consume_rate(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        """Count `count` events against the project's hourly `limit` in this transaction;
        ResourceExhausted when that would exceed it."""
        ...

    async def write(self, writes: Writes) -> None:
        """Store `writes`; raise when another transaction got to one of its keys or contacts
        first (the group is then rolled back and its events stored alone)."""
        ...

    async def commit_unpublished(self) -> Publication: ...


class _View:
    """The snapshot, plus what the group's accepted events have created so far."""

    def __init__(self, snapshot: Snapshot):
        self.contacts: dict[uuid.UUID, Contact] = {}
        self.by_external_id: dict[TeamKey, uuid.UUID] = {}
        self.by_email: dict[TeamKey, list[uuid.UUID]] = {}
        for contact in snapshot.contacts:
            self.add_contact(contact)
        self.keys = snapshot.keys
        self.claimed: set[TeamKey] = set()
        self.event_types = snapshot.event_types
        self.catalogued: set[TeamKey] = set()

    def add_contact(self, contact: Contact) -> None:
        self.contacts[contact.id] = contact
        if contact.external_id is not None:
            self.by_external_id[(contact.team_id, contact.external_id)] = contact.id
        if contact.email is not None:
            self.by_email.setdefault((contact.team_id, contact.email), []).append(contact.id)

    def absorb(self, share: _Share) -> None:
        for contact in share.created:
            self.add_contact(contact)
        self.claimed.update((claim.team_id, claim.key) for claim in share.claims)
        self.catalogued.update(share.catalogued)


class _Share:
    """One event's share of its group: what it would write, staged until the group writes."""

    def __init__(self, view: _View):
        self.view = view
        self.created: list[Contact] = []
        self.claims: list[KeyClaim] = []
        self.catalogued: list[TeamKey] = []
        self.events: list[AcceptedEvent] = []
        self.messages: list[OutgoingMessage] = []
        # (limit, now) when the event counts against its project's rate limit.
        self.rated: tuple[int, datetime] | None = None

    async def consume(self, team_id: str, limit: int, count: int, now: datetime) -> RateState:
        """The rate limiter `accept` sees: the group counts each project's events at once, later."""
        self.rated = (limit, now)
        return RateState(limit=limit, remaining=limit, reset_seconds=0)


class _ShareContacts:
    def __init__(self, share: _Share):
        self._share = share
        self._view = share.view

    async def by_id(self, team_id: str, contact_id: uuid.UUID) -> Contact | None:
        found = self._view.contacts.get(contact_id)
        return found if found is not None and found.team_id == team_id else None

    async def by_external_id(self, team_id: str, external_id: str, *, lock: bool = False) -> Contact | None:
        found = self._view.by_external_id.get((team_id, external_id))
        return self._view.contacts[found] if found is not None else None

    async def by_email(self, team_id: str, email: str) -> Contact | None:
        candidates = [self._view.contacts[i] for i in self._view.by_email.get((team_id, email), ())]
        # As the SQL repository orders them: contacts without an external id first, then the oldest
        # (a contact created by this group is the newest).
        candidates.sort(key=_email_order)
        return candidates[0] if candidates else None

    async def add(self, contact: Contact) -> tuple[Contact, bool]:
        self._share.created.append(contact)
        return contact, True

    async def update(self, contact: Contact) -> Contact:
        raise Deferred("the contact changes")


def _email_order(contact: Contact) -> tuple[bool, bool, float]:
    created = contact.created_at.timestamp() if contact.created_at is not None else 0.0
    return contact.external_id is not None, contact.created_at is None, created


class _ShareEvents:
    def __init__(self, share: _Share):
        self._share = share

    async def add(self, event: AcceptedEvent) -> None:
        self._share.events.append(event)

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None:
        raise Deferred("a replay reads the earlier trigger")


class _ShareKeys:
    def __init__(self, share: _Share):
        self._share = share
        self._view = share.view

    async def claim(
        self, team_id: str, key: str, fingerprint: str, trigger_id: uuid.UUID, expires_at: datetime
    ) -> IdempotencyRecord | None:
        if (team_id, key) in self._view.keys or (team_id, key) in self._view.claimed:
            raise Deferred("the idempotency key is taken")
        self._share.claims.append(KeyClaim(team_id, key, fingerprint, trigger_id, expires_at))
        return None


class _ShareEventTypes:
    def __init__(self, share: _Share):
        self._share = share
        self._view = share.view

    async def catalogue(self, team_id: str, name: str) -> None:
        if (team_id, name) not in self._view.catalogued:
            self._share.catalogued.append((team_id, name))

    async def exists(self, team_id: str, name: str) -> bool:
        return (team_id, name) in self._view.event_types


class _ShareUnitOfWork:
    """A `handlers.AcceptingUnitOfWork` over one event's share: reads from the group's view,
    writes into the share."""

    def __init__(self, share: _Share):
        self.contacts = _ShareContacts(share)
        self.events = _ShareEvents(share)
        self.idempotency = _ShareKeys(share)
        self.event_types = _ShareEventTypes(share)
        self._share = share

    def publish(self, message: OutgoingMessage) -> None:
        self._share.messages.append(message)


@dataclass
class _Accepted:
    queued: EventQueued
    share: _Share


# An accepted event, or the error that answers it, or Deferred (stored alone).
Outcome = EventQueued | Exception


@dataclass
class _Waiting:
    draft: Draft
    answer: asyncio.Future[EventQueued]


class GroupCommit:
    """Accepts events in groups; see the module's documentation."""

    def __init__(
        self,
        unit_of_work: Callable[[], GroupUnitOfWork],
        alone: Callable[[Draft], Awaitable[EventQueued]],
        *,
        max_group: int = MAX_GROUP,
    ):
        self._unit_of_work = unit_of_work
        self._alone = alone
        self._max_group = max_group
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self._alone_gate = asyncio.Semaphore(ALONE_CONCURRENCY)
        self._alone_tasks: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()

    async def submit(self, draft: Draft) -> EventQueued:
        answer: asyncio.Future[EventQueued] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(draft, answer))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_groups(), name="ingest.group_commit")
        return await answer

    async def _write_groups(self) -> None:
        """Write groups until nobody waits. While a committed group's messages are published (its
        events are answered once the bus acknowledges them), the next group is written."""
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self._max_group], self._waiting[self._max_group :]
                outcomes: list[Outcome | _Accepted]
                publication: Publication | None
                try:
                    outcomes, publication = await self._write_group([waiting.draft for waiting in group])
                except Exception as error:
                    outcomes, publication = [error for _ in group], None
                accepted: list[tuple[_Waiting, EventQueued]] = []
                deferred: list[_Waiting] = []
                for waiting, outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, _Accepted):
                        accepted.append((waiting, outcome.queued))
                    elif isinstance(outcome, Deferred):
                        deferred.append(waiting)
                    else:
                        _settle(waiting.answer, outcome)
                group = []
                if publication is None:
                    for waiting in deferred:
                        self._store_alone(waiting)
                else:
                    await self._answer_when_published(accepted, publication, deferred)
        finally:
            # Callers are left unanswered only when this writer was cancelled (the process is
            # stopping): theirs is cancelled too rather than waiting forever.
            self._writer = None
            leftover, self._waiting = [*group, *self._waiting], []
            for waiting in leftover:
                if not waiting.answer.done():
                    waiting.answer.cancel()

    async def _answer_when_published(
        self, accepted: list[tuple[_Waiting, EventQueued]], publication: Publication, deferred: list[_Waiting]
    ) -> None:
        """Publish a committed group and answer its events, beside the writer; it waits only when
        MAX_PUBLISHING groups are still being published. The group's deferred events are stored
        alone after its messages are published, so that what they announce follows (a contact's
        update after its `herald.contact.created`), as when each event is stored alone."""
        task = asyncio.create_task(self._publish_and_answer(accepted, publication, deferred))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        while len(self._publishing) >= MAX_PUBLISHING:
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)

    async def _publish_and_answer(
        self, accepted: list[tuple[_Waiting, EventQueued]], publication: Publication, deferred: list[_Waiting]
    ) -> None:
        try:
            receipts = await publication()
        except asyncio.CancelledError:  # the process is stopping: so are the callers
            for waiting in [*(waiting for waiting, _queued in accepted), *deferred]:
                waiting.answer.cancel()
            raise
        except Exception as error:
            # The events are committed: the relay publishes them; they answer without a job id.
            log.error("ingest.group_publish_failed", events=len(accepted), error=repr(error))
            receipts = {}
        for waiting, queued in accepted:
            _settle(waiting.answer, handlers.with_receipt(queued, receipts))
        for waiting in deferred:
            self._store_alone(waiting)

    def _store_alone(self, waiting: _Waiting) -> None:
        async def store() -> None:
            async with self._alone_gate:
                try:
                    outcome: EventQueued | BaseException = await self._alone(waiting.draft)
                except Exception as error:
                    outcome = error
            _settle(waiting.answer, outcome)

        task = asyncio.create_task(store())
        self._alone_tasks.add(task)
        task.add_done_callback(self._alone_tasks.discard)

    async def _write_group(self, drafts: list[Draft]) -> tuple[list[Outcome | _Accepted], Publication | None]:
        """Stage and write the group, then commit; returns each event's outcome and what
        publishes the group's messages. Whatever fails before the commit defers every event (each
        is stored alone instead); a failing commit is raised: whether it took effect is unknown,
        so storing the events again could store them twice."""
        async with self._unit_of_work() as uow:
            try:
                outcomes = await self._stage_and_write(uow, drafts)
            except Exception as error:
                log.warning("ingest.group_deferred", events=len(drafts), error=repr(error))
                return [Deferred("the group failed")] * len(drafts), None
            if not any(isinstance(outcome, _Accepted) for outcome in outcomes):
                return outcomes, None
            return outcomes, await uow.commit_unpublished()

    async def _stage_and_write(self, uow: GroupUnitOfWork, drafts: list[Draft]) -> list[Outcome | _Accepted]:
        view = _View(await uow.snapshot(drafts))
        outcomes: list[Outcome | _Accepted] = []
        for draft in drafts:
            share = _Share(view)
            try:
                queued = await handlers.accept(draft, _ShareUnitOfWork(share), share)
            except (Deferred, HeraldError) as error:
                outcomes.append(error)
                continue
            view.absorb(share)
            outcomes.append(_Accepted(queued, share))
        await _count_rates(uow, drafts, outcomes)
        writes = Writes()
        for outcome in outcomes:
            if isinstance(outcome, _Accepted):
                share = outcome.share
                writes.claims += share.claims
                writes.contacts += share.created
                writes.catalogued += share.catalogued
                writes.events += share.events
                for message in share.messages:
                    uow.publish(message)
        if writes.events:
            await uow.write(writes)
        return outcomes


async def _count_rates(
    uow: GroupUnitOfWork, drafts: list[Draft], outcomes: list[Outcome | _Accepted]
) -> None:
    """Count each project's accepted events against its rate limit at once; a project the group
    would take past it has all its events deferred (stored alone, each answered on its own)."""
    rated: dict[str, list[int]] = {}
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, _Accepted) and outcome.share.rated is not None:
            rated.setdefault(drafts[index].event.team_id, []).append(index)
    for team_id, indices in rated.items():
        first = outcomes[indices[0]]
        assert isinstance(first, _Accepted) and first.share.rated is not None
        limit, now = first.share.rated
        try:
            state = await uow.consume_rate(team_id, limit, len(indices), now)
        except ResourceExhausted:
            for index, draft in enumerate(drafts):
                if draft.event.team_id == team_id and isinstance(outcomes[index], _Accepted):
                    outcomes[index] = Deferred("the rate limit")
            continue
        for position, index in enumerate(indices):
            item = outcomes[index]
            assert isinstance(item, _Accepted)
            remaining = state.remaining + len(indices) - 1 - position
            item.queued = replace(item.queued, rate=replace(state, remaining=remaining))


def _settle(answer: asyncio.Future[EventQueued], outcome: EventQueued | BaseException) -> None:
    if answer.done():  # the caller went away; the event is stored (or not) all the same
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
