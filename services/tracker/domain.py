"""The tracker's domain: a trigger's status and summary, derived from the facts reported."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from kernel.durations import parse_duration
from kernel.errors import InvalidArgument
from kernel.event_names import check_format
from kernel.lag import ConsumerLag

FLOW_TYPE = "workflow"
T = TypeVar("T")


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
    """A trigger as its facts have made it so far (its row in the tracker's table)."""

    id: uuid.UUID
    team_id: str
    status: str = TriggerStatus.QUEUED
    created_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # When the first of its steps was done (a message delivered, or failed for good).
    first_step_at: datetime | None = None
    # The event that made it, as its accepted fact says.
    event_id: uuid.UUID | None = None
    event_name: str | None = None
    contact_id: str | None = None
    # A trigger of several events (a direct workflow trigger): how many, and how many contacts it
    # targets. None for an event's own trigger: one event, matched once matched_at is set.
    expected_events: int | None = None
    contacts: int | None = None
    # When the matcher decided (its first event, of several), as the facts say.
    matched_at: datetime | None = None
    # Counters moved as facts arrive: its events decided (of several), the runs its decisions
    # started, how many of those have finished and failed, and when the last of them finished.
    events_matched: int = 0
    runs_expected: int = 0
    runs_finished: int = 0
    runs_failed: int = 0
    last_finished_at: datetime | None = None

    @property
    def progress(self) -> Progress:
        return Progress(
            matched=self.matched_at is not None,
            expected_runs=self.runs_expected,
            finished_runs=self.runs_finished,
            failed_runs=self.runs_failed,
            matched_at=self.matched_at,
            last_finished_at=self.last_finished_at,
            undecided_events=(
                max(self.expected_events - self.events_matched, 0) if self.expected_events else 0
            ),
        )

    def count_finished(self, finished: int, failed: int, at: datetime) -> None:
        """Runs it started finished (`finished` more, `failed` more of them failed; either may be
        0, and `failed` -1 for a failed run replayed to completion), the latest at `at`."""
        self.runs_finished += finished
        self.runs_failed += failed
        if self.last_finished_at is None or at > self.last_finished_at:
            self.last_finished_at = at


class RunStatus:
    """A run's status as the tracker records it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, as a fact reported it."""

    run_id: uuid.UUID
    trigger_id: uuid.UUID
    status: str
    detail: str
    finished_at: datetime


@dataclass(frozen=True)
class RunRecord:
    """A run as the tracker has recorded it: how it ended (no status or end while it has not),
    and the triggers whose matched decisions started it."""

    status: str | None = None
    finished_at: datetime | None = None
    decided_by: frozenset[uuid.UUID] = frozenset()

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


# What is recorded of a run no fact named yet.
NOT_RECORDED = RunRecord()


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


def note_step_done(trigger: TriggerState, at: datetime) -> None:
    """A step of the trigger's runs was done at `at`: the earliest such moment is its first step's
    (facts may arrive in any order, and a repeated one changes nothing)."""
    if trigger.first_step_at is None or at < trigger.first_step_at:
        trigger.first_step_at = at


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
    # What an unfinished step waits for, and until when (see the executor's RunStep).
    waiting_for: str = ""
    waiting_until: str = ""


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


# Listing triggers and a contact's timeline.

DEFAULT_PAGE = 50
MAX_PAGE = 200
STATUSES = (
    TriggerStatus.SCHEDULED,
    TriggerStatus.QUEUED,
    TriggerStatus.PROCESSING,
    TriggerStatus.COMPLETED,
    TriggerStatus.FAILED,
    TriggerStatus.CANCELLED,
)


def bad_parameter(parameter: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_PARAMETER", metadata={"parameter": parameter})


@dataclass(frozen=True, order=True)
class Position:
    """Where a page ended, in the list's order (newest first): the last entry's moment, its rank
    among entries of the same moment, and its key. The next page starts strictly after it."""

    at: datetime
    rank: int
    key: str


def encode_cursor(position: Position) -> str:
    """The opaque cursor of `position`."""
    document = json.dumps([position.at.isoformat(), position.rank, position.key], separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position | None:
    """The position a cursor this API gave names; None for no cursor; 400 for any other text."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, rank, key = json.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(rank, int) or not isinstance(key, str):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_parameter(
            "cursor", "cursor is not one this API gave: pass the next_cursor of the previous page"
        ) from None
    return Position(moment, rank, key)


def page_size(limit: int) -> int:
    if limit == 0:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise bad_parameter("limit", f"limit must be 1 to {MAX_PAGE} (default {DEFAULT_PAGE}); got {limit}")
    return limit


def parse_moment(text: str, parameter: str) -> datetime | None:
    """An ISO 8601 date or date-time (UTC when it has no offset); None for no text."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise bad_parameter(
            parameter,
            f"{parameter} must be an ISO 8601 date-time such as 2024-12-10T10:00:00Z; got {text[:64]!r}",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_statuses(text: str) -> tuple[str, ...]:
    """The statuses of a comma-separated list; none for no text."""
    statuses = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [status for status in statuses if status not in STATUSES]
    if unknown or (text.strip() and not statuses):
        raise bad_parameter(
            "status",
            f"status must be one or more of {', '.join(STATUSES)}, separated by commas; got {text[:64]!r}",
        )
    return statuses


def parse_event_name(text: str) -> str:
    if not text:
        return ""
    try:
        return check_format(text)
    except InvalidArgument as error:
        raise bad_parameter("event_name", f"event_name: {error.message}") from None


def parse_contact_id(text: str) -> str:
    if not text:
        return ""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise bad_parameter(
            "contact_id", f"contact_id must be Herald's id of a contact (a UUID); got {text[:64]!r}"
        ) from None


@dataclass(frozen=True)
class TriggerListRequest:
    """The list's parameters as the caller wrote them."""

    status: str = ""
    event_name: str = ""
    contact: str = ""
    contact_id: str = ""
    created_after: str = ""
    created_before: str = ""
    limit: int = 0
    cursor: str = ""


@dataclass(frozen=True)
class TriggerQuery:
    """Which of a project's triggers to list, and where the page starts."""

    statuses: tuple[str, ...] = ()
    event_name: str = ""
    contact_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = DEFAULT_PAGE
    after: Position | None = None

    def __post_init__(self) -> None:
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise bad_parameter("created_before", "created_before must be later than created_after")
        if self.after is not None:
            try:
                uuid.UUID(self.after.key)
            except ValueError:
                raise bad_parameter(
                    "cursor", "cursor is not one of this list's: start again without it"
                ) from None


@dataclass(frozen=True)
class TriggerListing:
    """A trigger as the list shows it."""

    view: TriggerView
    contact_id: str

    @property
    def position(self) -> Position:
        return Position(self.view.created_at, 0, str(self.view.id))


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    # Where the next page starts; None when this one is the last.
    next: Position | None


class TimelineKind:
    EVENT = "event"
    RUN_STARTED = "run_started"
    DELIVERY = "delivery"
    RUN_FINISHED = "run_finished"
    # Of entries of the same moment, the later in a story ranks higher (listed first, newest first).
    RANK = {EVENT: 0, RUN_STARTED: 1, DELIVERY: 2, RUN_FINISHED: 3}


@dataclass(frozen=True)
class TimelineEntry:
    kind: str
    at: datetime
    # What the entry is about: the trigger, run or delivery id; the cursor's key.
    key: str
    trigger_id: uuid.UUID
    event_name: str = ""
    run_id: uuid.UUID | None = None
    workflow_key: str = ""
    step_id: str = ""
    channel: str = ""
    outcome: str = ""
    detail: str = ""

    @property
    def position(self) -> Position:
        return Position(self.at, TimelineKind.RANK[self.kind], self.key)


# Latency per event name and queue lag.

DEFAULT_WINDOW = "PT1H"
MAX_WINDOW = timedelta(days=7)


def parse_window(text: str) -> timedelta:
    """The stats window: an ISO 8601 duration, longer than zero and at most MAX_WINDOW."""
    try:
        window = parse_duration(text or DEFAULT_WINDOW)
    except ValueError as error:
        raise bad_parameter("window", f"window: {error}") from None
    if not timedelta(0) < window <= MAX_WINDOW:
        raise bad_parameter("window", f"window must be longer than zero and at most P7D; got {text[:40]!r}")
    return window


@dataclass(frozen=True)
class Latency:
    """Milliseconds."""

    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class EventLatency:
    event_name: str
    count: int
    matched: int
    first_step_done: int
    accepted_to_matched: Latency | None
    accepted_to_first_step: Latency | None


@dataclass(frozen=True)
class Stats:
    window: str
    since: datetime
    until: datetime
    events: list[EventLatency]
    queues: list[ConsumerLag]


# The timeline of GET /api/v1/stats/timeline.

MIN_STEP = timedelta(seconds=10)
MAX_BUCKETS = 500
# The default step makes at most this many buckets (PT1M for PT1H; at most half of the 120 a chart
# shows well on a laptop screen).
DEFAULT_BUCKETS = 60
# The default steps, smallest first: the first that makes at most DEFAULT_BUCKETS buckets.
DEFAULT_STEPS = tuple(
    timedelta(seconds=seconds)
    for seconds in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_step(text: str, window: timedelta) -> timedelta:
    """The timeline's bucket size: the one asked for (at least MIN_STEP, whole seconds, dividing
    the window into at most MAX_BUCKETS), or the smallest default step that makes at most
    DEFAULT_BUCKETS."""
    if not text:
        return next(step for step in DEFAULT_STEPS if window / step <= DEFAULT_BUCKETS)
    try:
        step = parse_duration(text)
    except ValueError as error:
        raise bad_parameter("step", f"step: {error}") from None
    if step < MIN_STEP or step.microseconds:
        raise bad_parameter("step", f"step must be whole seconds and at least PT10S; got {text[:40]!r}")
    if step > window or window % step:
        raise bad_parameter(
            "step", f"step must divide the window ({isoformat_duration(window)}) evenly; got {text[:40]!r}"
        )
    if window // step > MAX_BUCKETS:
        raise bad_parameter(
            "step",
            f"step {text[:40]!r} makes {window // step} buckets of the window; at most {MAX_BUCKETS}: "
            "use a longer step or a shorter window",
        )
    return step


def isoformat_duration(duration: timedelta) -> str:
    """`duration` as ISO 8601 (P1DT2H, PT1M30S)."""
    days, seconds = duration.days, duration.seconds
    hours, minutes, seconds = seconds // 3600, seconds // 60 % 60, seconds % 60
    clock = "".join(
        f"{value}{unit}" for value, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if value
    )
    return f"P{f'{days}D' if days else ''}{f'T{clock}' if clock else ''}" if days or clock else "PT0S"


def bucket_starts(now: datetime, window: timedelta, step: timedelta) -> list[datetime]:
    """The start of every bucket of the window ending at `now`, oldest first: buckets start at
    multiples of `step` since the Unix epoch, and the last one holds `now`."""
    last = EPOCH + (now - EPOCH) // step * step
    count = -(-window // step)  # a window the default step does not divide: one bucket more
    return [last - step * (count - 1 - index) for index in range(count)]


TRIGGER_STATUSES = (
    TriggerStatus.SCHEDULED,
    TriggerStatus.QUEUED,
    TriggerStatus.PROCESSING,
    TriggerStatus.COMPLETED,
    TriggerStatus.FAILED,
    TriggerStatus.CANCELLED,
)


@dataclass
class StatsBucket:
    at: datetime
    events: int = 0
    # Status → count, of the triggers accepted in the bucket, as of now.
    triggers: dict[str, int] = field(default_factory=dict)
    # (channel, outcome) → count.
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_letters: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    queue_pending: int | None = None
    queue_oldest_age_seconds: float | None = None


@dataclass(frozen=True)
class QueueLagSample:
    """The bus's lag at a moment, over every consumer: messages pending or not acknowledged, and
    the oldest one's age."""

    sampled_at: datetime
    pending: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class StatsTimeline:
    window: str
    step: timedelta
    since: datetime
    until: datetime
    buckets: list[StatsBucket]

    def triggers_by_status(self) -> dict[str, int]:
        return {status: sum(b.triggers.get(status, 0) for b in self.buckets) for status in TRIGGER_STATUSES}

    def deliveries_by_channel(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = {}
        for bucket in self.buckets:
            for key, count in bucket.deliveries.items():
                totals[key] = totals.get(key, 0) + count
        return dict(sorted(totals.items()))

    @property
    def dead_letters(self) -> int:
        return sum(bucket.dead_letters for bucket in self.buckets)
