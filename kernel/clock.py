"""Time: one way to read the clock and one way to write timestamps on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat_ms(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as the public API writes it: 2024-12-10T10:00:00.000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(moment: datetime) -> Timestamp:
    """The Timestamp of `moment` (a naive datetime is local time), to the microsecond."""
    since = moment.astimezone(UTC) - EPOCH
    # Computed here rather than by Timestamp.FromDatetime (pure Python, several times slower).
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def from_timestamp(stamp: Timestamp) -> datetime:
    """The moment of `stamp`, in UTC, to the microsecond (nanoseconds truncated)."""
    # Computed here rather than by Timestamp.ToDatetime (pure Python, twice as slow).
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
