"""The one rule for event names, shared by ingest (events) and the matcher (workflow triggers).

Customer event names are lowercase dot-separated segments of [a-z0-9_], starting with a letter
(`user_signup`, `order.completed`, `billing.payment_failed`), at most 128 characters. Names under
`herald.` are the platform's own system events.
"""

from __future__ import annotations

import re

from kernel.errors import InvalidArgument

MAX_LENGTH = 128
PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
SYSTEM_PREFIX = "herald."


def is_system_event(name: str) -> bool:
    return name.startswith(SYSTEM_PREFIX)


def check_format(name: str) -> str:
    """`name` if it is well formed (customer or system), else an InvalidArgument naming the rule."""
    if not name:
        raise InvalidArgument("Event name is required", reason="EVENT_NAME_REQUIRED")
    if len(name) > MAX_LENGTH:
        raise InvalidArgument(
            f"Event name is too long ({len(name)} characters): at most {MAX_LENGTH}",
            reason="EVENT_NAME_TOO_LONG",
        )
    if not PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"Invalid event name {name!r}: use lowercase dot-separated segments of letters, digits "
            "and underscores, starting with a letter (e.g. 'user_signup', 'order.completed')",
            reason="INVALID_EVENT_NAME",
            metadata={"event_name": name},
        )
    return name


def validate_customer_event_name(name: str) -> str:
    """`name` if a customer may send it; system events are emitted only by the platform."""
    check_format(name)
    if is_system_event(name):
        raise InvalidArgument(
            f"Event name {name!r} is in the reserved namespace 'herald.': system events are "
            "emitted only by the platform",
            reason="RESERVED_EVENT_NAME",
            metadata={"event_name": name},
        )
    return name
