"""The parameters of the tracker's queries: each bad one is refused with a 400 that names it, before
any database or bus is asked (services.tracker.domain and handlers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from kernel.errors import InvalidArgument, NotFound
from kernel.lag import ConsumerLag
from services.tracker import handlers
from services.tracker.domain import (
    DEFAULT_PAGE,
    Position,
    TriggerListRequest,
    TriggerQuery,
    TriggerState,
    decode_cursor,
    encode_cursor,
    note_step_done,
    page_size,
    parse_moment,
    parse_statuses,
    parse_window,
)

MOMENT = datetime(2024, 12, 10, 10, 0, tzinfo=UTC)


class NoContacts:
    """A contact directory that knows no contact (and remembers what it was asked)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def id_of(self, external_id: str) -> str | None:
        self.asked.append(external_id)
        return None


class Untouchable:
    """A unit of work that must not be opened: the request is refused before."""

    async def __aenter__(self) -> Any:
        raise AssertionError("the unit of work was opened")

    async def __aexit__(self, *args: object) -> None:
        pass


def untouchable() -> handlers.TrackerUnitOfWork:
    return cast(handlers.TrackerUnitOfWork, Untouchable())


async def no_lag() -> list[ConsumerLag]:
    raise AssertionError("the bus was asked")


def test_a_cursor_names_the_position_it_was_made_of() -> None:
    position = Position(MOMENT + timedelta(microseconds=123), 2, str(uuid.uuid4()))

    cursor = encode_cursor(position)

    assert decode_cursor(cursor) == position
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # fits a query string
    assert decode_cursor("") is None


@pytest.mark.parametrize(
    "cursor",
    ["nonsense", "e30", encode_cursor(Position(MOMENT, 0, "x"))[:-3], "W10", "WyJub3QgYSBkYXRlIiwwLCJ4Il0"],
)
def test_a_cursor_this_api_did_not_give_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_cursor(cursor)
    assert refused.value.metadata == {"parameter": "cursor"}
    assert "next_cursor of the previous page" in refused.value.message


@pytest.mark.parametrize(("limit", "expected"), [(0, DEFAULT_PAGE), (1, 1), (200, 200)])
def test_a_page_holds_50_by_default_and_at_most_200(limit: int, expected: int) -> None:
    assert page_size(limit) == expected


@pytest.mark.parametrize("limit", [-1, 201, 10_000])
def test_a_page_size_out_of_range_is_refused(limit: int) -> None:
    with pytest.raises(InvalidArgument, match=f"limit must be 1 to 200 \\(default 50\\); got {limit}"):
        page_size(limit)


def test_moments_are_iso_8601_and_utc_without_an_offset() -> None:
    assert parse_moment("2024-12-10T10:00:00Z", "created_after") == MOMENT
    assert parse_moment("2024-12-10T12:00:00+02:00", "created_after") == MOMENT
    assert parse_moment("2024-12-10T10:00:00", "created_after") == MOMENT
    assert parse_moment("2024-12-10", "created_after") == MOMENT - timedelta(hours=10)
    assert parse_moment("", "created_after") is None
    with pytest.raises(InvalidArgument, match="created_before must be an ISO 8601 date-time") as refused:
        parse_moment("yesterday", "created_before")
    assert refused.value.metadata == {"parameter": "created_before"}


def test_statuses_are_one_or_several_of_the_six() -> None:
    assert parse_statuses("") == ()
    assert parse_statuses("failed") == ("failed",)
    assert parse_statuses("failed, cancelled,failed") == ("failed", "cancelled")
    for bad in ("done", "failed,done", ",", "COMPLETED"):
        with pytest.raises(
            InvalidArgument, match="status must be one or more of scheduled, queued"
        ) as refused:
            parse_statuses(bad)
        assert refused.value.metadata == {"parameter": "status"}


def test_a_time_range_must_not_be_empty() -> None:
    with pytest.raises(InvalidArgument, match="created_before must be later than created_after"):
        TriggerQuery(created_after=MOMENT, created_before=MOMENT)
    with pytest.raises(InvalidArgument, match="cursor is not one of this list's"):
        TriggerQuery(after=Position(MOMENT, 0, "not-a-trigger-id"))


def test_the_stats_window_is_an_iso_duration_up_to_seven_days() -> None:
    assert parse_window("") == timedelta(hours=1)
    assert parse_window("PT5M") == timedelta(minutes=5)
    assert parse_window("P7D") == timedelta(days=7)
    for bad, words in (
        ("P8D", "at most P7D"),
        ("PT0S", "longer than zero"),
        ("1h", "is not an ISO 8601 duration"),
        ("P1M", "years and months have no fixed length"),
    ):
        with pytest.raises(InvalidArgument, match=words) as refused:
            parse_window(bad)
        assert refused.value.metadata == {"parameter": "window"}


def test_the_first_step_is_the_earliest_step_done() -> None:
    trigger = TriggerState(uuid.uuid4(), "team-1")

    note_step_done(trigger, MOMENT + timedelta(seconds=3))
    note_step_done(trigger, MOMENT + timedelta(seconds=1))
    note_step_done(trigger, MOMENT + timedelta(seconds=2))

    assert trigger.first_step_at == MOMENT + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("request_", "parameter", "words"),
    [
        (TriggerListRequest(status="done"), "status", "status must be one or more of"),
        (TriggerListRequest(event_name="Order Completed"), "event_name", "event_name: Invalid event name"),
        (TriggerListRequest(contact_id="ada"), "contact_id", "contact_id must be Herald's id"),
        (TriggerListRequest(created_after="soon"), "created_after", "created_after must be an ISO 8601"),
        (TriggerListRequest(created_before="2024-13-01"), "created_before", "created_before must be an ISO"),
        (TriggerListRequest(limit=500), "limit", "limit must be 1 to 200"),
        (TriggerListRequest(cursor="abc"), "cursor", "cursor is not one this API gave"),
        (
            TriggerListRequest(contact="ada", contact_id=str(uuid.uuid4())),
            "contact",
            "by contact (an external id) or by contact_id, not both",
        ),
    ],
)
async def test_a_bad_list_filter_is_refused_naming_it(
    request_: TriggerListRequest, parameter: str, words: str
) -> None:
    contacts = NoContacts()
    with pytest.raises(InvalidArgument) as refused:
        await handlers.list_triggers("team-1", request_, untouchable(), contacts)
    assert refused.value.metadata["parameter"] == parameter
    assert words in refused.value.message
    assert contacts.asked == []


async def test_listing_by_an_unknown_contact_is_not_found() -> None:
    with pytest.raises(NotFound) as refused:
        await handlers.list_triggers(
            "team-1",
            TriggerListRequest(contact="nobody"),
            untouchable(),
            NoContacts(),
        )
    assert refused.value.reason == "CONTACT_NOT_FOUND"
    assert refused.value.metadata == {"parameter": "contact", "external_id": "nobody"}


async def test_the_timeline_of_an_unknown_contact_is_not_found_and_bad_pages_are_refused() -> None:
    with pytest.raises(NotFound, match="Contact not found"):
        await handlers.contact_timeline("team-1", "nobody", 0, "", untouchable(), NoContacts())
    with pytest.raises(InvalidArgument, match="limit must be 1 to 200"):
        await handlers.contact_timeline("team-1", "nobody", 201, "", untouchable(), NoContacts())
    foreign = encode_cursor(Position(MOMENT, 9, "x"))
    with pytest.raises(InvalidArgument, match="cursor is not one of this timeline's"):
        await handlers.contact_timeline("team-1", "nobody", 0, foreign, untouchable(), NoContacts())


async def test_stats_with_a_bad_window_ask_nothing() -> None:
    with pytest.raises(InvalidArgument, match="window: 'an hour' is not an ISO 8601 duration"):
        await handlers.get_stats("team-1", "an hour", untouchable(), no_lag)
