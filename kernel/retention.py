"""Retention and erasure: every service purges what it owns once it is older than its project's
`retention_days`, and erases a deleted contact's personal data from what it owns.

One shape for the four services. A service gives a `Purge`: for one project, delete up to
`limit` rows per table of what is older than `before`, and say how many went from each table.
`Retention.run_pass` walks every project (kernel.policy.retention_by_team), calls the purge
again and again (a short pause between rounds, so that the service's own traffic is never
blocked by a long delete) until no table had a full batch or the project's budget of rounds
for the pass is spent (what is left goes in the next pass), then logs one `retention.purged` line with the
cutoff and the per-table counts of each project, and keeps that report for the service to show.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from kernel.clock import isoformat_ms, utcnow
from kernel.errors import InvalidArgument
from kernel.loops import every
from kernel.policy import retention_by_team
from kernel.unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from kernel.service import Runtime

log = structlog.get_logger(__name__)

Purge = Callable[[str, datetime, int], Awaitable[Mapping[str, int]]]
"""`purge(team_id, before, limit)`: delete up to `limit` rows of each table, of the project's data
older than `before`; how many rows went, by table ("schema.table")."""


Projects = Callable[[], Awaitable[list[tuple[str, int]]]]
"""Every project with its retention in days (kernel.policy.retention_by_team)."""


@dataclass(frozen=True)
class ContactNames:
    """What names a contact to erase (an EraseContact request of any service): the values a row
    about it may hold."""

    contact_id: str
    external_id: str = ""
    email: str = ""
    phone: str = ""

    @classmethod
    def of(cls, request: Any) -> ContactNames:
        """From an EraseContactRequest; InvalidArgument when it names no contact."""
        contact_id = request.contact_id.strip()
        try:
            uuid.UUID(contact_id)
        except ValueError:
            raise InvalidArgument(
                f"contact_id must be the contact's id (a UUID), got {contact_id[:64]!r}",
                reason="INVALID_CONTACT_ID",
            ) from None
        return cls(contact_id, request.external_id.strip(), request.email.strip(), request.phone.strip())

    @property
    def identifiers(self) -> list[str]:
        """Every value that names the contact, for searching payloads."""
        return [value for value in (self.contact_id, self.external_id, self.email, self.phone) if value]


class Lifecycle(Protocol):
    """What a service's repository of retention and erasure does over its own schema."""

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        """Delete up to `limit` rows per table of the project's data older than `before`; the
        counts by table."""
        ...

    async def erase_contact(self, team_id: str, names: ContactNames) -> dict[str, int]:
        """Delete (or empty) every row about the contact; the counts by table."""
        ...


class LifecycleUnitOfWork(UnitOfWork, Protocol):
    @property
    def lifecycle(self) -> Lifecycle: ...


async def purge_project(
    team_id: str, before: datetime, limit: int, uow: LifecycleUnitOfWork
) -> dict[str, int]:
    """One round of retention for one project, in one transaction (a `Purge`, given its unit of work)."""
    async with uow:
        purged = await uow.lifecycle.purge(team_id, before, limit)
        await uow.commit()
    return purged


async def erase_contact(team_id: str, names: ContactNames, uow: LifecycleUnitOfWork) -> dict[str, int]:
    """Right to erasure in one service, in one transaction: what went, by table. Idempotent."""
    async with uow:
        erased = await uow.lifecycle.erase_contact(team_id, names)
        await uow.commit()
    log.info("contact.erased", team_id=team_id, contact_id=names.contact_id, erased=erased)
    return erased


@dataclass(frozen=True)
class RetentionSettings:
    # How often a pass runs (HERALD_RETENTION_INTERVAL_SECONDS).
    interval_seconds: float = 600.0
    # Rows one statement deletes at most (per table, per round).
    batch: int = 5000
    # Rounds one pass spends at most on one project: the rest of a large backlog waits for the
    # next pass, so that one project never holds up the others.
    max_rounds: int = 20
    # The pause between two rounds, so that the service's own statements get their turn.
    pause_seconds: float = 0.05


@dataclass
class ProjectPurge:
    """What one pass purged of one project."""

    team_id: str
    retention_days: int
    cutoff: datetime
    purged: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    # False when the pass's budget ran out before this project's old rows were all gone.
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.purged.values())

    def document(self) -> dict[str, object]:
        return {
            "team_id": self.team_id,
            "retention_days": self.retention_days,
            "cutoff": isoformat_ms(self.cutoff),
            "purged": dict(self.purged),
            "complete": self.complete,
        }


@dataclass
class RetentionReport:
    """What one pass of one service purged."""

    service: str
    started_at: datetime
    finished_at: datetime | None = None
    projects: list[ProjectPurge] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(project.total for project in self.projects)

    def purged(self, team_id: str) -> dict[str, int]:
        """The counts of one project (empty when the pass purged nothing of it)."""
        return next((dict(p.purged) for p in self.projects if p.team_id == team_id), {})

    def document(self) -> dict[str, object]:
        return {
            "service": self.service,
            "started_at": isoformat_ms(self.started_at),
            "finished_at": isoformat_ms(self.finished_at) if self.finished_at else None,
            "total": self.total,
            "projects": [project.document() for project in self.projects if project.total],
        }


class Retention:
    """The retention job of one service: `run(stop)` runs a pass every `interval_seconds`."""

    def __init__(
        self,
        service: str,
        projects: Projects,
        purge: Purge,
        settings: RetentionSettings | None = None,
    ):
        self.service = service
        self._projects = projects
        self._purge = purge
        self._settings = settings or RetentionSettings()
        self.last_report: RetentionReport | None = None

    async def run_pass(self, now: datetime | None = None) -> RetentionReport:
        """Purge every project's data older than its retention (as of `now`); log and keep the report."""
        now = now or utcnow()
        settings = self._settings
        report = RetentionReport(self.service, started_at=utcnow())
        teams = await self._projects()
        started = time.monotonic()
        for team_id, days in sorted(teams):
            project = ProjectPurge(team_id, days, now - timedelta(days=days))
            report.projects.append(project)
            while True:
                if project.rounds >= settings.max_rounds:
                    project.complete = False
                    break
                project.rounds += 1
                counts = await self._purge(team_id, project.cutoff, settings.batch)
                for table, count in counts.items():
                    project.purged[table] = project.purged.get(table, 0) + count
                if all(count < settings.batch for count in counts.values()):
                    break
                await asyncio.sleep(settings.pause_seconds)
        report.finished_at = utcnow()
        self.last_report = report
        log.info(
            "retention.purged",
            service=self.service,
            total=report.total,
            seconds=round(time.monotonic() - started, 3),
            projects=[project.document() for project in report.projects if project.total],
            incomplete=[project.team_id for project in report.projects if not project.complete],
        )
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every `interval_seconds` until `stop` (a failed pass is logged and retried)."""

        async def one_pass() -> int:
            await self.run_pass()
            return 0

        await every(self._settings.interval_seconds, f"{self.service}.retention", one_pass, stop)

    @classmethod
    def for_service(cls, service: str, runtime: Runtime, purge: Purge) -> Retention:
        """The retention job of a service process, as its settings say."""
        settings = runtime.settings

        async def projects() -> list[tuple[str, int]]:
            async with runtime.sessions() as session:
                return await retention_by_team(session)

        return cls(
            service,
            projects,
            purge,
            RetentionSettings(
                interval_seconds=settings.retention_interval_seconds, batch=settings.retention_batch_size
            ),
        )
