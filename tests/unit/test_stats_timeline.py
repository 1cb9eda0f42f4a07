"""The stats timeline's window, step and buckets; bad input is refused before anything is read."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from kernel.errors import InvalidArgument
from services.tracker import handlers
from services.tracker.domain import StatsBucket, StatsTimeline, bucket_starts, isoformat_duration, parse_step
from tests.unit.test_tracker_queries import untouchable

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("window", "step"),
    [
        (HOUR, timedelta(minutes=1)),
        (timedelta(minutes=5), timedelta(seconds=10)),
        (timedelta(minutes=30), timedelta(seconds=30)),
        (timedelta(hours=24), timedelta(minutes=30)),
        (timedelta(days=7), timedelta(hours=3)),
    ],
)
def test_the_default_step_is_the_smallest_that_makes_at_most_60_buckets(
    window: timedelta, step: timedelta
) -> None:
    assert parse_step("", window) == step


def test_a_step_asked_for_is_taken_when_it_divides_the_window() -> None:
    assert parse_step("PT10S", HOUR) == timedelta(seconds=10)
    assert parse_step("PT5M", HOUR) == timedelta(minutes=5)
    assert parse_step("PT1H", HOUR) == HOUR


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("a minute", "step: 'a minute' is not an ISO 8601 duration"),
        ("PT5S", "at least PT10S"),
        ("PT10.5S", "whole seconds"),
        ("PT7M", r"divide the window \(PT1H\) evenly"),
        ("PT2H", r"divide the window \(PT1H\) evenly"),
        ("P1M", "years and months"),
    ],
)
def test_a_bad_step_is_refused_naming_it(step: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        parse_step(step, HOUR)
    assert refused.value.metadata == {"parameter": "step"}


def test_more_than_500_buckets_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="makes 2160 buckets of the window; at most 500") as refused:
        parse_step("PT10S", timedelta(hours=6))
    assert refused.value.metadata == {"parameter": "step"}


@pytest.mark.parametrize(
    ("window", "step", "parameter", "message"),
    [
        ("an hour", "", "window", "window: 'an hour' is not an ISO 8601 duration"),
        ("P8D", "", "window", "at most P7D"),
        ("PT1H", "PT1S", "step", "at least PT10S"),
    ],
)
async def test_a_timeline_with_bad_input_reads_nothing(
    window: str, step: str, parameter: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        await handlers.stats_timeline("team-1", window, step, untouchable())
    assert refused.value.metadata == {"parameter": parameter}


def test_buckets_start_at_multiples_of_the_step_and_the_last_holds_now() -> None:
    now = datetime(2026, 3, 1, 12, 30, 42, 500000, tzinfo=UTC)

    starts = bucket_starts(now, HOUR, timedelta(minutes=1))

    assert len(starts) == 60
    assert starts[-1] == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    assert starts[0] == datetime(2026, 3, 1, 11, 31, tzinfo=UTC)
    assert all(later - earlier == timedelta(minutes=1) for earlier, later in itertools.pairwise(starts))


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(minutes=1), "PT1M"),
        (timedelta(seconds=90), "PT1M30S"),
        (timedelta(days=1, hours=2), "P1DT2H"),
        (timedelta(days=7), "P7D"),
        (timedelta(0), "PT0S"),
    ],
)
def test_durations_read_back_as_iso_8601(duration: timedelta, text: str) -> None:
    assert isoformat_duration(duration) == text


def test_the_window_totals_add_up_its_buckets() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    first = StatsBucket(at, 3, {"completed": 2, "failed": 1}, {("email", "sent"): 2, ("sms", "failed"): 1}, 1)
    second = StatsBucket(at + HOUR, 1, {"completed": 1}, {("email", "sent"): 1})
    timeline = StatsTimeline("PT2H", HOUR, at, at + 2 * HOUR, [first, second])

    assert timeline.triggers_by_status() == {
        "scheduled": 0,
        "queued": 0,
        "processing": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert timeline.deliveries_by_channel() == {("email", "sent"): 3, ("sms", "failed"): 1}
    assert timeline.dead_letters == 1
