"""Opaque page cursors for lists ordered newest first by (moment, key): the next page starts
strictly after the last entry of the previous one."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from kernel.errors import InvalidArgument


def encode_cursor(at: datetime, key: str) -> str:
    """The opaque cursor of the entry at `at` with tie-breaking `key`."""
    document = json.dumps([at.isoformat(), key], separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parameter: str = "cursor") -> tuple[datetime, str] | None:
    """The (moment, key) a cursor this API gave names; None for no cursor; InvalidArgument
    naming `parameter` for any other text."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, key = json.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(key, str):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(
            f"{parameter} is not one this API gave: pass the next_cursor of the previous page",
            reason="INVALID_PARAMETER",
            metadata={"parameter": parameter},
        ) from None
    return moment, key
