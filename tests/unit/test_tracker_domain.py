"""A trigger's status, moved on by the progress the tracker has seen (services.tracker.domain)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kernel.errors import InvalidArgument
from services.tracker.domain import (
    Outcome,
    Progress,
    Summary,
    TriggerDetail,
    TriggerState,
    TriggerStatus,
    TriggerView,
    cancel,
    next_status,
    status_now,
)
from services.tracker.handlers import wait_period

CREATED = datetime(2024, 12, 10, 10, 0, tzinfo=UTC)
MATCHED_AT = CREATED + timedelta(milliseconds=120)
LATER = CREATED + timedelta(seconds=5)
NOT_MATCHED = Progress(matched=False, expected_runs=0, finished_runs=0, failed_runs=0)


def a_trigger(status: str = TriggerStatus.QUEUED, scheduled_for: datetime | None = None) -> TriggerState:
    return TriggerState(
        uuid.uuid4(), "team-1", status=status, created_at=CREATED, scheduled_for=scheduled_for
    )


def progress(expected: int, finished: int = 0, failed: int = 0) -> Progress:
    return Progress(matched=True, expected_runs=expected, finished_runs=finished, failed_runs=failed)


def test_an_unmatched_trigger_stays_queued() -> None:
    trigger = a_trigger()

    next_status(trigger, NOT_MATCHED, MATCHED_AT)

    assert trigger.status == TriggerStatus.QUEUED
    assert trigger.started_at is None and trigger.completed_at is None


def test_an_unmatched_trigger_with_a_time_to_fire_is_scheduled() -> None:
    trigger = a_trigger(scheduled_for=LATER)

    next_status(trigger, NOT_MATCHED, MATCHED_AT)

    assert trigger.status == TriggerStatus.SCHEDULED
    assert trigger.started_at is None


def test_a_scheduled_trigger_whose_time_has_come_is_queued_though_its_last_fact_is_older() -> None:
    trigger = a_trigger(status=TriggerStatus.SCHEDULED, scheduled_for=LATER)

    next_status(trigger, NOT_MATCHED, CREATED, now=LATER + timedelta(milliseconds=1))

    assert trigger.status == TriggerStatus.QUEUED


def test_the_clock_not_the_facts_time_says_whether_a_trigger_still_waits() -> None:
    trigger = a_trigger(scheduled_for=LATER)

    # A fact stamped after trigger_at (a sender's clock ahead) does not make it fire early.
    next_status(trigger, NOT_MATCHED, LATER + timedelta(seconds=1), now=MATCHED_AT)

    assert trigger.status == TriggerStatus.SCHEDULED


def test_a_cancelled_trigger_is_final_and_completed_when_cancelled() -> None:
    trigger = a_trigger(status=TriggerStatus.SCHEDULED, scheduled_for=LATER)

    cancel(trigger, MATCHED_AT)
    next_status(trigger, progress(expected=1, finished=1), LATER, now=LATER)

    assert trigger.status == TriggerStatus.CANCELLED
    assert trigger.completed_at == MATCHED_AT
    assert trigger.started_at is None


@pytest.mark.parametrize("final", [TriggerStatus.COMPLETED, TriggerStatus.FAILED])
def test_a_trigger_that_already_finished_cannot_be_cancelled(final: str) -> None:
    trigger = a_trigger(status=final)
    trigger.completed_at = MATCHED_AT

    cancel(trigger, LATER)

    assert (trigger.status, trigger.completed_at) == (final, MATCHED_AT)


def test_a_matched_trigger_with_runs_going_is_processing_since_the_match() -> None:
    trigger = a_trigger()

    next_status(trigger, progress(expected=2, finished=1), MATCHED_AT)

    assert trigger.status == TriggerStatus.PROCESSING
    assert trigger.started_at == MATCHED_AT
    assert trigger.completed_at is None


def test_a_scheduled_trigger_that_fired_is_processing() -> None:
    trigger = a_trigger(status=TriggerStatus.SCHEDULED, scheduled_for=MATCHED_AT)

    next_status(trigger, progress(expected=1), MATCHED_AT)

    assert trigger.status == TriggerStatus.PROCESSING


def test_a_trigger_completes_when_every_run_finished() -> None:
    trigger = a_trigger()
    next_status(trigger, progress(expected=2, finished=1), MATCHED_AT)

    next_status(trigger, progress(expected=2, finished=2, failed=1), LATER)

    assert trigger.status == TriggerStatus.COMPLETED
    assert trigger.started_at == MATCHED_AT
    assert trigger.completed_at == LATER


def test_a_trigger_fails_when_every_run_failed() -> None:
    trigger = a_trigger()

    next_status(trigger, progress(expected=2, finished=2, failed=2), LATER)

    assert trigger.status == TriggerStatus.FAILED
    assert trigger.completed_at == LATER


def test_a_trigger_no_workflow_ran_for_completes_at_the_match() -> None:
    trigger = a_trigger()

    next_status(trigger, progress(expected=0), MATCHED_AT)

    assert trigger.status == TriggerStatus.COMPLETED
    assert trigger.started_at == trigger.completed_at == MATCHED_AT


def test_started_at_is_set_once() -> None:
    trigger = a_trigger()
    next_status(trigger, progress(expected=3, finished=0), MATCHED_AT)

    next_status(trigger, progress(expected=3, finished=2), LATER)

    assert trigger.started_at == MATCHED_AT


@pytest.mark.parametrize("final", [TriggerStatus.COMPLETED, TriggerStatus.FAILED, TriggerStatus.CANCELLED])
@pytest.mark.parametrize(
    "seen", [NOT_MATCHED, progress(expected=2, finished=1), progress(expected=1, finished=1)]
)
def test_a_final_status_never_changes(final: str, seen: Progress) -> None:
    trigger = a_trigger(status=final)
    trigger.started_at, trigger.completed_at = MATCHED_AT, MATCHED_AT

    next_status(trigger, seen, LATER)

    assert trigger.status == final
    assert (trigger.started_at, trigger.completed_at) == (MATCHED_AT, MATCHED_AT)


def test_a_completed_trigger_keeps_its_completion_time_when_a_late_fact_arrives() -> None:
    trigger = a_trigger()
    next_status(trigger, progress(expected=1, finished=1), MATCHED_AT)

    next_status(trigger, progress(expected=1, finished=1, failed=1), LATER)

    assert trigger.status == TriggerStatus.COMPLETED
    assert trigger.completed_at == MATCHED_AT


def test_the_view_points_at_its_workflow_details() -> None:
    trigger_id = uuid.uuid4()
    view = TriggerView(trigger_id, TriggerStatus.QUEUED, CREATED, None, None, Summary())

    assert view.details_endpoint == f"/triggers/{trigger_id}/workflow"


def test_a_trigger_with_events_still_undecided_stays_processing_though_its_runs_finished() -> None:
    trigger = a_trigger()
    waiting = Progress(matched=True, expected_runs=1, finished_runs=1, failed_runs=0, undecided_events=2)

    next_status(trigger, waiting, MATCHED_AT)
    assert trigger.status == TriggerStatus.PROCESSING

    next_status(trigger, progress(expected=3, finished=3), LATER)
    assert trigger.status == TriggerStatus.COMPLETED


def a_view(status: str, event_name: str = "user_signup") -> TriggerView:
    return TriggerView(uuid.uuid4(), status, CREATED, None, None, Summary(), event_name)


def an_outcome(key: str = "welcome") -> Outcome:
    return Outcome(key, 1, "c-1", matched=False, reason="workflow is inactive")


@pytest.mark.parametrize(
    ("status", "outcomes", "total", "decided", "note"),
    [
        (TriggerStatus.CANCELLED, 0, 0, False, "The trigger was cancelled before it fired"),
        (TriggerStatus.QUEUED, 0, 0, False, "Not matched yet: the trigger is queued"),
        (TriggerStatus.PROCESSING, 1, 1, False, "Some of the trigger's events are not matched yet"),
        (TriggerStatus.COMPLETED, 0, 0, True, "No workflow listens to 'user_signup': nothing ran"),
        (TriggerStatus.COMPLETED, 2, 5, True, "5 outcomes; the first 2 are listed"),
        (TriggerStatus.COMPLETED, 2, 2, True, ""),
    ],
)
def test_a_trigger_detail_notes_why_its_list_is_empty_or_short(
    status: str, outcomes: int, total: int, decided: bool, note: str
) -> None:
    detail = TriggerDetail(a_view(status), [an_outcome() for _ in range(outcomes)], total, decided)

    assert detail.note.startswith(note) and (note or not detail.note)
    assert detail.finished == (status in TriggerStatus.FINAL)


@pytest.mark.parametrize(("given", "expected"), [(0, 10), (1, 1), (30, 30)])
def test_the_wait_of_a_synchronous_trigger(given: int, expected: int) -> None:
    assert wait_period(given) == expected


@pytest.mark.parametrize("given", [-1, 31, 3600])
def test_a_wait_out_of_range_is_refused(given: int) -> None:
    with pytest.raises(InvalidArgument, match="wait_seconds must be 1 to 30"):
        wait_period(given)


def test_a_scheduled_trigger_whose_time_has_come_shows_as_queued() -> None:
    at = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    second = timedelta(seconds=1)

    assert status_now(TriggerStatus.SCHEDULED, at, at - second) == TriggerStatus.SCHEDULED
    assert status_now(TriggerStatus.SCHEDULED, at, at) == TriggerStatus.QUEUED
    assert status_now(TriggerStatus.CANCELLED, at, at + second) == TriggerStatus.CANCELLED
    assert status_now(TriggerStatus.PROCESSING, None, at) == TriggerStatus.PROCESSING
