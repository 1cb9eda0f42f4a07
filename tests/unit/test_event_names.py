"""The one rule for event names (kernel.event_names)."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument
from kernel.event_names import MAX_LENGTH, check_format, is_system_event, validate_customer_event_name


@pytest.mark.parametrize(
    "name",
    [
        "user_signup",
        "order.completed",
        "billing.payment_failed",
        "a",
        "a1",
        "v2.order.completed",
        "a.1",
        "a_",
        "a" * 128,
    ],
)
def test_a_well_formed_customer_name_is_accepted(name: str) -> None:
    assert validate_customer_event_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "UserSignup",
        "purchase-completed",
        "a..b",
        ".a",
        "a.",
        "1abc",
        "_abc",
        "user signup",
        " user_signup",
        "usér",
        "user/signup",
        "events.>",
        "user.*",
    ],
)
def test_a_malformed_name_is_invalid_and_named_in_the_error(name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_customer_event_name(name)

    assert raised.value.reason == "INVALID_EVENT_NAME"
    assert raised.value.metadata == {"event_name": name}
    assert "lowercase dot-separated segments" in raised.value.message


def test_an_empty_name_is_required() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_customer_event_name("")

    assert (raised.value.reason, raised.value.message) == ("EVENT_NAME_REQUIRED", "Event name is required")


def test_a_name_over_the_limit_is_too_long() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_customer_event_name("a" * (MAX_LENGTH + 1))

    assert raised.value.reason == "EVENT_NAME_TOO_LONG"
    assert raised.value.message == "Event name is too long (129 characters): at most 128"


@pytest.mark.parametrize("name", ["herald.anything", "herald.contact.created"])
def test_customers_cannot_send_system_events(name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_customer_event_name(name)

    assert raised.value.reason == "RESERVED_EVENT_NAME"
    assert raised.value.metadata == {"event_name": name}


def test_only_the_herald_namespace_is_reserved() -> None:
    assert validate_customer_event_name("herald") == "herald"
    assert validate_customer_event_name("heraldry.updated") == "heraldry.updated"


def test_system_events_are_well_formed_names() -> None:
    assert check_format("herald.contact.created") == "herald.contact.created"
    assert is_system_event("herald.contact.created")
    assert not is_system_event("heraldry.update")


@pytest.mark.parametrize("name", ["user_signup\n", "herald.x\n"])
def test_a_trailing_newline_is_not_part_of_a_valid_name(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_format(name)
