"""ISO 8601 durations as workflows and policies write them: days, hours, minutes and seconds."""

from __future__ import annotations

from datetime import timedelta

import isodate


def parse_duration(text: str) -> timedelta:
    """`text` (e.g. PT24H, P7D) as a timedelta; ValueError, saying what to write, otherwise.
    Years and months are refused: their length varies."""
    try:
        parsed = isodate.parse_duration(text.strip())
    except (isodate.ISO8601Error, ValueError, OverflowError):
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 duration such as PT24H or P7D") from None
    if not isinstance(parsed, timedelta):
        raise ValueError(f"{text[:40]!r}: years and months have no fixed length; use days (P30D, not P1M)")
    return parsed
