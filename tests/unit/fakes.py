"""In-memory fakes for the handlers' unit tests: units of work, repositories and an email sender.

They keep the promises of the SQL adapters they stand in for:
- a unit of work rolls back unless `commit()` is called: whatever a handler changed inside
  `async with uow:` without committing is discarded when the block ends;
- messages are published only on commit, each with a stream sequence as its receipt;
- repositories keep the uniqueness rules of their tables, and raise `UniqueViolation` where
  PostgreSQL would refuse a write.

Every published message is kept, duplicates included (JetStream would drop a repeated
`Nats-Msg-Id`), so a test sees exactly what a handler asked to publish.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from types import TracebackType
from typing import Any, Self

import grpc

from kernel.bus import OutgoingMessage
from kernel.outbox import Receipts
from services.executor.domain import DeliveryError, OutgoingEmail, Run
from services.ingest.domain import AcceptedEvent, Contact, TriggerRecord
from services.matcher.domain import Decision, MatchedEvent, Workflow


class UniqueViolation(Exception):
    """What PostgreSQL answers when a write breaks a unique index that the statement does not handle."""


class FakeRepository:
    """Rows in memory: changes made in a transaction are kept by `commit` and undone by `rollback`."""

    def __init__(self) -> None:
        self.rows: dict[Any, Any] = {}
        self._committed: dict[Any, Any] = {}

    def begin(self) -> None:
        self._committed = copy.deepcopy(self.rows)

    def commit(self) -> None:
        self._committed = copy.deepcopy(self.rows)

    def rollback(self) -> None:
        self.rows = copy.deepcopy(self._committed)


class FakeUnitOfWork:
    """A transaction over fake repositories, and the messages it publishes when it commits."""

    def __init__(self, *repositories: FakeRepository) -> None:
        self._repositories = repositories
        self._pending: list[OutgoingMessage] = []
        self._sequence = 0
        self.bus_reachable = True
        self.published: list[OutgoingMessage] = []
        # Committed while the bus was unreachable: the outbox relay would publish them later.
        self.deferred: list[OutgoingMessage] = []
        self.commits = 0

    async def __aenter__(self) -> Self:
        self._pending = []
        for repository in self._repositories:
            repository.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pending = []
        for repository in self._repositories:
            repository.rollback()

    def publish(self, message: OutgoingMessage) -> None:
        self._pending.append(message)

    async def commit(self) -> Receipts:
        pending, self._pending = self._pending, []
        for repository in self._repositories:
            repository.commit()
        self.commits += 1
        if not self.bus_reachable:
            self.deferred.extend(pending)
            return {}
        receipts: Receipts = {}
        for message in pending:
            self._sequence += 1
            self.published.append(message)
            receipts[message.msg_id] = self._sequence
        return receipts

    def subjects(self) -> list[str]:
        return [message.subject for message in self.published]


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------


class FakeContactRepository(FakeRepository):
    """Contacts by id, unique on (team, external id) and, for contacts without one, on (team, email)."""

    rows: dict[uuid.UUID, Contact]

    async def by_external_id(self, team_id: str, external_id: str) -> Contact | None:
        return next(
            (c for c in self.rows.values() if c.team_id == team_id and c.external_id == external_id), None
        )

    async def by_email(self, team_id: str, email: str) -> Contact | None:
        matches = [c for c in self.rows.values() if c.team_id == team_id and c.email == email]
        # Like the SQL adapter: contacts without an external id first, then the oldest.
        return min(matches, key=lambda contact: contact.external_id is not None, default=None)

    async def update(self, contact: Contact) -> Contact:
        """Like the SQL adapter's `UPDATE … WHERE id = :id`."""
        if contact.id not in self.rows or self.rows[contact.id].team_id != contact.team_id:
            raise LookupError(f"no contact {contact.id} to update")
        clash = (
            await self.by_external_id(contact.team_id, contact.external_id) if contact.external_id else None
        )
        if clash is not None and clash.id != contact.id:
            raise UniqueViolation(
                'duplicate key value violates unique constraint "uq_contacts_team_external_id"'
            )
        self.rows[contact.id] = copy.deepcopy(contact)
        return copy.deepcopy(contact)

    async def add(self, contact: Contact) -> Contact:
        """An upsert on the same conflict target as the SQL adapter's `INSERT … ON CONFLICT`.

        A row that conflicts on the target is updated and keeps its id; any other clash of ids
        is a unique violation, as the primary key is not part of the conflict target.
        """
        if contact.external_id is not None:
            existing = await self.by_external_id(contact.team_id, contact.external_id)
        elif contact.email is not None:
            existing = next(
                (
                    c
                    for c in self.rows.values()
                    if c.team_id == contact.team_id and c.external_id is None and c.email == contact.email
                ),
                None,
            )
        else:
            existing = None
        if existing is not None:
            stored = dataclasses.replace(contact, id=existing.id, team_id=existing.team_id)
        elif contact.id in self.rows:
            raise UniqueViolation(
                f'duplicate key value violates unique constraint "pk_contacts" ({contact.id})'
            )
        else:
            stored = contact
        self.rows[stored.id] = copy.deepcopy(stored)
        return copy.deepcopy(stored)


class FakeEventRepository(FakeRepository):
    """Accepted events and the trigger each one created, by event id."""

    rows: dict[uuid.UUID, tuple[AcceptedEvent, TriggerRecord]]

    async def add(self, event: AcceptedEvent) -> None:
        if event.id in self.rows or any(t.id == event.trigger_id for _, t in self.rows.values()):
            raise UniqueViolation(f"event {event.id} or trigger {event.trigger_id} exists already")
        trigger = TriggerRecord(
            id=event.trigger_id,
            event_id=event.id,
            event_name=event.name,
            status="queued",
            created_at=event.accepted_at,
        )
        self.rows[event.id] = (copy.deepcopy(event), trigger)

    async def trigger(self, team_id: str, trigger_id: uuid.UUID) -> TriggerRecord | None:
        return next(
            (t for event, t in self.rows.values() if t.id == trigger_id and event.team_id == team_id), None
        )

    @property
    def events(self) -> list[AcceptedEvent]:
        return [event for event, _ in self.rows.values()]


class FakeIngestUnitOfWork(FakeUnitOfWork):
    def __init__(self) -> None:
        self._contacts = FakeContactRepository()
        self._events = FakeEventRepository()
        super().__init__(self._contacts, self._events)

    @property
    def contacts(self) -> FakeContactRepository:
        return self._contacts

    @property
    def events(self) -> FakeEventRepository:
        return self._events


# --------------------------------------------------------------------------------------------
# matcher
# --------------------------------------------------------------------------------------------


class FakeWorkflowRepository(FakeRepository):
    """Workflow versions, unique on (team, key, version)."""

    rows: dict[tuple[str, str, int], Workflow]

    async def latest(self, team_id: str, key: str) -> Workflow | None:
        versions = [w for (team, k, _), w in self.rows.items() if team == team_id and k == key]
        return max(versions, key=lambda workflow: workflow.version, default=None)

    async def all_latest(self, team_id: str) -> list[Workflow]:
        keys = sorted({key for team, key, _ in self.rows if team == team_id})
        return [workflow for key in keys if (workflow := await self.latest(team_id, key)) is not None]

    async def listening_to(self, team_id: str, event_name: str) -> list[Workflow]:
        return [w for w in await self.all_latest(team_id) if w.definition.trigger_event == event_name]

    async def add(self, workflow: Workflow) -> None:
        row_key = (workflow.team_id, workflow.key, workflow.version)
        if row_key in self.rows:
            raise UniqueViolation(f"workflow version {row_key} exists already")
        self.rows[row_key] = workflow


class FakeDecisionRepository(FakeRepository):
    """The events decided, each with its decisions (unique on event id and workflow key)."""

    rows: dict[uuid.UUID, tuple[MatchedEvent, list[Decision]]]

    async def already_decided(self, event_id: uuid.UUID) -> bool:
        return event_id in self.rows

    async def add(self, event: MatchedEvent, decisions: list[Decision]) -> None:
        keys = [decision.workflow.key for decision in decisions]
        if event.event_id in self.rows or len(keys) != len(set(keys)):
            raise UniqueViolation(f"decisions for event {event.event_id} exist already")
        self.rows[event.event_id] = (event, list(decisions))


class FakeMatcherUnitOfWork(FakeUnitOfWork):
    def __init__(self) -> None:
        self._workflows = FakeWorkflowRepository()
        self._decisions = FakeDecisionRepository()
        super().__init__(self._workflows, self._decisions)

    @property
    def workflows(self) -> FakeWorkflowRepository:
        return self._workflows

    @property
    def decisions(self) -> FakeDecisionRepository:
        return self._decisions


# --------------------------------------------------------------------------------------------
# executor
# --------------------------------------------------------------------------------------------


class FakeRunRepository(FakeRepository):
    """Runs by id. Callers get copies, so a run changes only through `add` and `save`."""

    rows: dict[uuid.UUID, Run]

    async def add(self, run: Run) -> bool:
        if run.id in self.rows:
            return False
        self.rows[run.id] = copy.deepcopy(run)
        return True

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None:
        run = self.rows.get(run_id)
        return copy.deepcopy(run) if run is not None and run.team_id == team_id else None

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        run = self.rows.get(run_id)
        return copy.deepcopy(run) if run is not None else None

    async def save(self, run: Run) -> None:
        """Like the SQL adapter: the run's status and its steps' progress, nothing else."""
        stored = self.rows[run.id]
        stored.status = run.status
        stored.finished_at = run.finished_at
        states = {step.spec.id: step for step in run.steps}
        for step in stored.steps:
            state = states[step.spec.id]
            step.status = state.status
            step.attempts = state.attempts
            step.detail = state.detail
            step.finished_at = state.finished_at


class FakeExecutorUnitOfWork(FakeUnitOfWork):
    def __init__(self) -> None:
        self._runs = FakeRunRepository()
        super().__init__(self._runs)

    @property
    def runs(self) -> FakeRunRepository:
        return self._runs


class FakeEmailSender:
    """Records the emails it is asked to send; can be told to fail the next sends."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self.tries = 0
        self._failures: list[DeliveryError] = []

    def fail_next(self, times: int = 1, *, permanent: bool = False) -> None:
        detail = "SMTP 550: mailbox unavailable" if permanent else "SMTP server unreachable: timed out"
        self._failures.extend(DeliveryError(detail, permanent=permanent) for _ in range(times))

    async def send(self, email: OutgoingEmail) -> str:
        self.tries += 1
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(email)
        return f"250 2.0.0 queued {email.message_id}"


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------


def failed_call(status: grpc.Status) -> grpc.aio.AioRpcError:
    """The error a gRPC client sees when the server answers `status`."""
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )
