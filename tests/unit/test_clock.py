"""Timestamps on the wire (kernel.clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kernel.clock import from_timestamp, isoformat_ms, to_timestamp, utcnow


def test_isoformat_ms_writes_utc_with_milliseconds() -> None:
    assert isoformat_ms(datetime(2024, 12, 10, 10, 0, tzinfo=UTC)) == "2024-12-10T10:00:00.000Z"


def test_isoformat_ms_truncates_to_milliseconds() -> None:
    moment = datetime(2024, 12, 10, 10, 0, 0, 120999, tzinfo=UTC)

    assert isoformat_ms(moment) == "2024-12-10T10:00:00.120Z"


def test_isoformat_ms_converts_other_offsets_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2024, 12, 10, 0, 30, 5, 7000, tzinfo=paris)

    assert isoformat_ms(moment) == "2024-12-09T23:30:05.007Z"


def test_timestamps_round_trip_in_utc() -> None:
    moment = datetime(2024, 12, 10, 10, 0, 0, 123456, tzinfo=UTC)

    restored = from_timestamp(to_timestamp(moment))

    assert restored == moment
    assert restored.tzinfo == UTC


def test_to_timestamp_counts_from_the_epoch_in_utc() -> None:
    stamp = to_timestamp(datetime(1970, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))))

    assert (stamp.seconds, stamp.nanos) == (0, 0)


def test_utcnow_is_aware_and_in_utc() -> None:
    now = utcnow()

    assert now.tzinfo == UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2030, 1, 15, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
    ids=["before-the-epoch", "offset", "first", "last"],
)
def test_to_timestamp_gives_what_from_datetime_gives(moment: datetime) -> None:
    reference = Timestamp()
    reference.FromDatetime(moment.astimezone(UTC))

    assert to_timestamp(moment) == reference


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (0, 0),
        (1733824800, 123456789),
        (1733824800, 999),
        (-86400 * 365, 500_000_000),
        (253402300799, 999999999),
    ],
)
def test_from_timestamp_reads_what_protobuf_reads(seconds: int, nanos: int) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)

    moment = from_timestamp(stamp)

    assert moment == stamp.ToDatetime(tzinfo=UTC)
    assert moment.tzinfo == UTC
