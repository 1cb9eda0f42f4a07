"""The tracker's domain: a trigger's status and summary, derived from the facts reported."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

FLOW_TYPE = "workflow"


class TriggerStatus:
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = frozenset({COMPLETED, FAILED, CANCELLED})


@dataclass(frozen=True)
class Summary:
    total_contacts: int = 0
    sent: int = 0
    failed: int = 0
    filtered: int = 0


@dataclass(frozen=True)
class Progress:
    """How far the runs a trigger started have gone."""

    matched: bool
    expected_runs: int
    finished_runs: int
    failed_runs: int
    # When the matcher decided, and when the last of the runs finished, as the facts say
    # (facts may arrive out of order, so these are not the arrival times).
    matched_at: datetime | None = None
    last_finished_at: datetime | None = None
    # Events of the trigger not decided yet (a direct trigger has one per contact).
    undecided_events: int = 0


@dataclass
class TriggerState:
    id: uuid.UUID
    team_id: str
    status: str = TriggerStatus.QUEUED
    created_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class TriggerView:
    id: uuid.UUID
    status: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    summary: Summary
    event_name: str = ""

    @property
    def details_endpoint(self) -> str:
        return f"/triggers/{self.id}/workflow"


def next_status(trigger: TriggerState, progress: Progress, at: datetime, now: datetime | None = None) -> None:
    """Move `trigger` to the status its progress shows; a final status never changes.

    scheduled (until its trigger_at) or queued → processing once the matcher decided →
    completed when every run it started has finished (failed when there were runs and all of them failed).
    """
    if trigger.status in TriggerStatus.FINAL:
        return
    if not progress.matched:
        # Scheduled until its time; facts may arrive in any order, so the clock decides.
        waiting = trigger.scheduled_for is not None and trigger.scheduled_for > (now or at)
        trigger.status = TriggerStatus.SCHEDULED if waiting else TriggerStatus.QUEUED
        return
    trigger.started_at = trigger.started_at or progress.matched_at or at
    if progress.undecided_events or progress.finished_runs < progress.expected_runs:
        trigger.status = TriggerStatus.PROCESSING
        return
    all_failed = progress.expected_runs > 0 and progress.failed_runs == progress.expected_runs
    trigger.status = TriggerStatus.FAILED if all_failed else TriggerStatus.COMPLETED
    moments = [moment for moment in (progress.matched_at, progress.last_finished_at) if moment is not None]
    trigger.completed_at = max(moments) if moments else at


def status_now(status: str, scheduled_for: datetime | None, now: datetime) -> str:
    """A trigger's status as of `now`: a scheduled trigger whose time has come is queued, even
    before the facts of its firing have been applied."""
    if status == TriggerStatus.SCHEDULED and scheduled_for is not None and scheduled_for <= now:
        return TriggerStatus.QUEUED
    return status


def cancel(trigger: TriggerState, at: datetime) -> None:
    """A scheduled trigger cancelled before it fired: final, with nothing sent."""
    if trigger.status in TriggerStatus.FINAL:
        return
    trigger.status = TriggerStatus.CANCELLED
    trigger.completed_at = at


@dataclass(frozen=True)
class Accepted:
    """Ingest's answer to an event sent for a synchronous trigger."""

    trigger_id: str
    job_id: str
    message: str
    scheduled_for: str | None = None


@dataclass(frozen=True)
class StepState:
    """One step of a run, as the executor has it."""

    step_id: str
    type: str
    status: str
    attempts: int
    detail: str
    finished_at: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one workflow did for one contact of a trigger: ran (with its run), or was filtered."""

    workflow_key: str
    workflow_version: int
    contact_id: str
    matched: bool
    reason: str
    run_id: uuid.UUID | None = None
    # The run's status as the tracker heard it ("pending" before any fact about the run).
    run_status: str = ""
    run_started_at: datetime | None = None
    run_finished_at: datetime | None = None
    steps: tuple[StepState, ...] = ()


@dataclass(frozen=True)
class TriggerDetail:
    """A trigger with every workflow its events were considered by."""

    view: TriggerView
    outcomes: list[Outcome]
    # How many outcomes there are in all (the list holds the first ones).
    total_outcomes: int
    # Whether the matcher has decided (every event of) the trigger.
    decided: bool

    @property
    def finished(self) -> bool:
        return self.view.status in TriggerStatus.FINAL

    @property
    def note(self) -> str:
        if self.view.status == TriggerStatus.CANCELLED:
            return "The trigger was cancelled before it fired: no workflow considered it"
        if not self.decided and not self.outcomes:
            return f"Not matched yet: the trigger is {self.view.status}"
        if not self.decided:
            return "Some of the trigger's events are not matched yet: more outcomes will follow"
        if not self.total_outcomes:
            return f"No workflow listens to {self.view.event_name!r}: nothing ran"
        if self.total_outcomes > len(self.outcomes):
            return f"{self.total_outcomes} outcomes; the first {len(self.outcomes)} are listed"
        return ""
