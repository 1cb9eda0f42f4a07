"""The event catalog's pure parts: PII detection (services.tracker.pii), schema hints and
redacted examples (services.tracker.catalog), and the list API's inputs (catalog_handlers)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from herald.bus.v1 import event_pb2
from kernel.bus import Delivery, Poison
from kernel.clock import to_timestamp
from kernel.errors import InvalidArgument
from kernel.structs import to_struct
from services.tracker import pii
from services.tracker.catalog import (
    EXAMPLE_MAX_ITEMS,
    MAX_DEPTH,
    MAX_PATH_LENGTH,
    MAX_PATHS_PER_EVENT,
    TRUNCATED,
    Review,
    Scans,
    event_shape,
    pii_status,
    redacted_example,
)
from services.tracker.catalog_consumers import observed
from services.tracker.catalog_handlers import decode_cursor, encode_cursor, name_pattern, page_limit


def kinds(text: str, **options: Any) -> list[str]:
    return [finding.kind for finding in pii.find_in_text(text, **options)]


def redacted(text: str) -> str:
    return pii.redact_text(text, pii.find_in_text(text))


# Detection, each kind.


@pytest.mark.parametrize("address", ["jane.doe@example.com", "a+tag@mail.example.co.uk", "X_Y@corp.io"])
def test_email_addresses_are_found_and_masked(address: str) -> None:
    assert kinds(address) == ["email"]
    masked = redacted(address)
    assert masked == f"{address[0]}***@{address.split('@')[1]}"
    assert address not in masked


def test_an_email_inside_free_text_is_masked_and_the_text_kept() -> None:
    text = "Please write to jane.doe@example.com before Friday, or to bob@corp.io."
    assert kinds(text) == ["email", "email"]
    assert redacted(text) == "Please write to j***@example.com before Friday, or to b***@corp.io."


@pytest.mark.parametrize("not_email", ["user@localhost", "@example.com", "jane@", "a@b"])
def test_things_that_are_not_email_addresses(not_email: str) -> None:
    assert "email" not in kinds(not_email)


@pytest.mark.parametrize("number", ["+14155552671", "+1 415 555 2671", "+44 20 7946 0958", "+49 30 901820"])
def test_international_phone_numbers_are_found(number: str) -> None:
    assert kinds(f"call {number} today") == ["phone"]
    assert redacted(f"call {number} today") == "call [REDACTED:phone] today"


def test_a_bare_run_of_digits_is_a_phone_only_under_a_phone_key() -> None:
    assert kinds("order 4155552671") == []
    assert kinds("(415) 555-2671", phone_key=True) == ["phone"]
    assert kinds("123", phone_key=True) == []


@pytest.mark.parametrize(
    "card", ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]
)
def test_card_numbers_passing_luhn_are_found(card: str) -> None:
    assert kinds(f"paid with {card}.") == ["card"]
    assert redacted(f"paid with {card}.") == "paid with [REDACTED:card]."


@pytest.mark.parametrize("digits", ["4111111111111112", "1234567890123", "411111111111"])
def test_digits_failing_luhn_or_too_short_are_not_cards(digits: str) -> None:
    assert "card" not in kinds(digits)


def test_luhn() -> None:
    assert pii.luhn_valid("79927398713")
    assert not pii.luhn_valid("79927398710")
    assert not pii.luhn_valid("7992x398713")
    assert pii.is_card_number("4012888888881881")
    assert not pii.is_card_number("79927398713")  # valid Luhn, too short for a card


def test_card_numbers_as_json_numbers() -> None:
    assert pii.number_kinds(4111111111111111) == {"card"}
    assert pii.number_kinds(4111111111111112) == set()
    assert pii.number_kinds(42.5) == set()
    assert pii.number_kinds(True) == set()


@pytest.mark.parametrize(
    "address",
    ["192.168.1.20", "8.8.8.8", "2001:db8::1", "fe80::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
)
def test_ipv4_and_ipv6_addresses_are_found(address: str) -> None:
    assert kinds(f"from {address} at noon") == ["ip"]
    assert redacted(f"from {address} at noon") == "from [REDACTED:ip] at noon"


@pytest.mark.parametrize("text", ["999.1.1.1", "at 12:30:45", "std::vector", "version 1.2.3.4.5", "::"])
def test_things_that_are_not_ip_addresses(text: str) -> None:
    assert "ip" not in kinds(text)


def test_names_and_addresses_by_key() -> None:
    for key in ("first_name", "lastName", "full-name", "name", "Surname"):
        assert pii.kinds_of_key(key) == {"name"}, key
    for key in ("address", "street", "postcode", "postal_code", "zip", "ZipCode", "city", "address_line1"):
        assert pii.kinds_of_key(key) == {"address"}, key
    for key in ("sku", "plan", "amount", "names_count"):
        assert pii.kinds_of_key(key) == set(), key


def test_names_and_addresses_by_value() -> None:
    assert kinds("Ship to 221B Baker Street, London") == ["address"]
    assert redacted("Ship to 221B Baker Street, London") == "Ship to [REDACTED:address], London"
    assert kinds("Dear Dr. Jane Watson,") == ["name"]
    assert kinds("Order completed") == []


EMAIL_EDGES = [
    "jane.doe@example.com",
    ".jane@example.com",
    "jane.@example.com",
    "ja..ne@example.com",
    "a-b_c%d+e@example.com",
    "jane@localhost.localdomain",
    "jane@x.test",
    "jane@host.invalid",
    "jane@printer.local",
    "jane@example.123",
    "jane@-example.com",
    "jane@example-.com",
    "jane@xn--bcher-kva.de",  # bücher.de: two bytes more in UTF-8 once normalized
    "jane@xn--zz.com",  # not valid punycode
    "x" * 64 + "@example.com",
    "x" * 65 + "@example.com",
    "x" * 200 + "@example.com",
    "jane@" + "a" * 63 + ".com",
    "jane@" + "a" * 64 + ".com",
    "jane@" + ".".join(["a" * 60] * 4) + ".com",
    "x" * (254 - len("@example.com")) + "@example.com",
    "x" * (255 - len("@example.com")) + "@example.com",
    "x" * (254 - len("@xn--bcher-kva.de")) + "@xn--bcher-kva.de",
    "x" * (252 - len("@xn--bcher-kva.de")) + "@xn--bcher-kva.de",
    # 30 characters as given, 64 bytes of UTF-8 once normalized (20 times 中): the longer counts.
    "x" * 189 + "@xn--fiqaaaaaaaaaaaaaaaaaaa.com",
    "x" * 190 + "@xn--fiqaaaaaaaaaaaaaaaaaaa.com",
]


def email_candidates() -> list[str]:
    """Edge cases, and random strings that _EMAIL_CANDIDATE matches whole."""
    rng = random.Random(7)
    local_chars, domain_chars = "abZ09._%+-", "ab0-"
    found = list(EMAIL_EDGES)
    while len(found) < len(EMAIL_EDGES) + 2000:
        local = "".join(rng.choice(local_chars) for _ in range(rng.randint(1, 12)))
        labels = ["".join(rng.choice(domain_chars) for _ in range(rng.randint(1, 6))) for _ in range(3)]
        labels[-1] = rng.choice([labels[-1], "com", "io", "test", "local", "123"])
        found.append(local + "@" + ".".join(labels[rng.randint(0, 1) :]))
    return [c for c in found if pii._EMAIL_CANDIDATE.fullmatch(c)]


def test_the_fast_email_check_agrees_with_email_validator() -> None:
    # is_email_candidate caches the domain's validation and checks the part before the @ itself:
    # it must accept exactly what email-validator accepts.
    candidates = email_candidates()
    assert len(candidates) > 1000
    disagree = [c for c in candidates if pii.is_email_candidate(c) != pii.is_email(c)]
    assert disagree == []
    assert 0 < sum(map(pii.is_email, candidates)) < len(candidates)


FULL_WIDTH = {ord(digit): ord(digit) + 0xFEE0 for digit in "0123456789"}


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("call +1 202 555 0123 now".translate(FULL_WIDTH), {}, ["phone"]),
        ("²⁰²⁵⁵⁵⁰¹²³", {"phone_key": True}, ["phone"]),  # digits that are not \d
        ("Ms Jane Watson", {}, ["name"]),
        ("Mrs. Jane Watson", {}, ["name"]),
        ("Prof Jane", {}, ["name"]),
        ("at 5 Main St", {}, ["address"]),
        ("a::1", {}, []),
        ("1.2.3", {}, []),
        ("", {"phone_key": True}, []),
    ],
)
def test_detectors_are_skipped_only_where_they_cannot_match(
    text: str, options: dict[str, Any], expected: list[str]
) -> None:
    assert kinds(text, **options) == expected


def test_a_batch_scans_each_value_once(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[tuple[str, bool]] = []
    find = pii.find_in_text

    def counting(text: str, *, phone_key: bool = False) -> list[pii.Finding]:
        scanned.append((text, phone_key))
        return find(text, phone_key=phone_key)

    monkeypatch.setattr(pii, "find_in_text", counting)
    event = {
        "data": {"note": "write to jane@example.com", "again": "write to jane@example.com"},
        "user_info": {"email": "jane@example.com", "phone": "+14155552671"},
    }
    scans = Scans()
    shapes = [event_shape(event, scans), event_shape(event, scans)]
    examples = [redacted_example(event, Review(), scans) for _ in range(2)]
    values = [
        (text, phone_key) for text, phone_key in scanned if text not in ("note", "again", "email", "phone")
    ]
    assert sorted(values) == [
        ("+14155552671", True),
        ("jane@example.com", False),
        ("write to jane@example.com", False),
    ]
    assert shapes[0] == shapes[1] == event_shape(event)
    assert examples[0] == examples[1] == redacted_example(event)
    assert examples[0]["data"]["again"] == "write to j***@example.com"


def test_overlapping_findings_count_once() -> None:
    text = "reach me at jane@example.com or +14155552671 from 10.0.0.1"
    assert kinds(text) == ["email", "phone", "ip"]
    assert redacted(text) == "reach me at j***@example.com or [REDACTED:phone] from [REDACTED:ip]"


# Schema hints.


def test_paths_types_and_kinds_of_an_event() -> None:
    shape = event_shape(
        {
            "data": {
                "order": {"total": 10.5, "paid": True, "coupon": None},
                "items": [{"sku": "A", "qty": 1}, {"sku": "B", "note": "gift"}, 3],
                "email": "jane@example.com",
                "first name": "Jane",
            },
            "variables": {"plan": "pro"},
            "user_info": {"phone": "+14155552671", "custom_fields": {"zip": "94107"}},
        }
    )
    types = {path: sorted(seen.types) for path, seen in shape.paths.items()}
    assert types == {
        "data.order": ["object"],
        "data.order.total": ["number"],
        "data.order.paid": ["boolean"],
        "data.order.coupon": ["null"],
        "data.items": ["array"],
        "data.items[]": ["number", "object"],
        "data.items[].sku": ["string"],
        "data.items[].qty": ["number"],
        "data.items[].note": ["string"],
        "data.email": ["string"],
        'data["first name"]': ["string"],
        "variables.plan": ["string"],
        "user_info.phone": ["string"],
        "user_info.custom_fields": ["object"],
        "user_info.custom_fields.zip": ["string"],
    }
    flagged = {path: sorted(seen.kinds) for path, seen in shape.paths.items() if seen.kinds}
    assert flagged == {
        "data.email": ["email"],
        'data["first name"]': ["name"],
        "user_info.phone": ["phone"],
        "user_info.custom_fields.zip": ["address"],
    }
    assert not shape.truncated


def test_arrays_of_arrays_and_empty_containers() -> None:
    shape = event_shape({"data": {"grid": [[1, 2], ["a"]], "empty": [], "nothing": {}}})
    assert {p: sorted(s.types) for p, s in shape.paths.items()} == {
        "data.grid": ["array"],
        "data.grid[]": ["array"],
        "data.grid[][]": ["number", "string"],
        "data.empty": ["array"],
        "data.nothing": ["object"],
    }


def test_a_key_holding_personal_data_is_redacted_in_the_path() -> None:
    shape = event_shape({"data": {"scores": {"jane@example.com": 3}}})
    assert list(shape.paths) == ["data.scores", 'data.scores["j***@example.com"]']


def test_a_wide_payload_keeps_at_most_the_cap_of_paths_shallow_first() -> None:
    wide = {"data": {f"k{i}": {"inner": i} for i in range(2000)}}
    shape = event_shape(wide)
    assert len(shape.paths) == MAX_PATHS_PER_EVENT
    assert shape.truncated
    assert all(path.count(".") == 1 for path in shape.paths)  # the top level first


def test_a_deep_payload_stops_at_the_depth_cap() -> None:
    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(200):
        deep = {"a": deep}
    shape = event_shape({"data": deep})
    assert shape.truncated
    deepest = max(shape.paths, key=len)
    assert deepest.count(".a") == MAX_DEPTH
    assert len(shape.paths) == MAX_DEPTH


def test_a_huge_key_is_not_kept() -> None:
    shape = event_shape({"data": {"k" * (MAX_PATH_LENGTH + 1): 1, "ok": 2}})
    assert list(shape.paths) == ["data.ok"]
    assert shape.truncated


def test_an_array_of_many_elements_is_one_path() -> None:
    shape = event_shape({"data": {"ids": list(range(100_000))}})
    assert list(shape.paths) == ["data.ids", "data.ids[]"]


# Redacted examples.

EVENT = {
    "data": {
        "email": "jane.doe@example.com",
        "note": "ping jane.doe@example.com from 2001:db8::7",
        "card": "4111 1111 1111 1111",
        "card_number": 4111111111111111,
        "first_name": "Jane",
        "shipping": {"street": "1 Main St", "city": "Springfield", "zip": 12345},
        "items": [{"name": "Blue mug", "sku": "MUG-1"}],
        "ip": "192.168.7.8",
        "plan": "pro",
        "amount": 12.5,
    },
    "variables": {"greeting": "Hi"},
    "user_info": {"email": "jane.doe@example.com", "phone": "+14155552671", "name": "Jane Doe"},
}
RAW = ["jane.doe@example.com", "2001:db8::7", "4111 1111 1111 1111", "Jane", "1 Main St", "Springfield",
       "+14155552671", "192.168.7.8", "Blue mug"]  # fmt: skip


def test_an_example_keeps_no_raw_personal_data() -> None:
    example = redacted_example(EVENT)
    text = json.dumps(example)
    for raw in RAW:
        assert raw not in text, raw
    assert "4111111111111111" not in text and "12345" not in text
    assert example["data"]["email"] == "j***@example.com"
    assert example["data"]["note"] == "ping j***@example.com from [REDACTED:ip]"
    assert example["data"]["card"] == example["data"]["card_number"] == "[REDACTED:card]"
    assert example["data"]["first_name"] == "[REDACTED:name]"
    assert example["data"]["shipping"] == {
        "street": "[REDACTED:address]",
        "city": "[REDACTED:address]",
        "zip": "[REDACTED:address]",
    }
    assert example["data"]["items"] == [{"name": "[REDACTED:name]", "sku": "MUG-1"}]
    assert (example["data"]["plan"], example["data"]["amount"]) == ("pro", 12.5)
    assert example["user_info"] == {
        "email": "j***@example.com",
        "phone": "[REDACTED:phone]",
        "name": "[REDACTED:name]",
    }
    assert example["variables"] == {"greeting": "Hi"}


def test_confirmed_paths_are_redacted_whatever_they_hold() -> None:
    review = Review(confirmed={"data.plan": "pii", "data.shipping": "address"})
    example = redacted_example(EVENT, review)
    assert example["data"]["plan"] == "[REDACTED:pii]"
    assert example["data"]["shipping"] == "[REDACTED:address]"


def test_a_dismissed_path_is_not_redacted_by_key_but_still_by_value() -> None:
    review = Review(dismissed=frozenset({"data.items[].name", "data.email"}))
    example = redacted_example(EVENT, review)
    assert example["data"]["items"] == [{"name": "Blue mug", "sku": "MUG-1"}]
    assert example["data"]["email"] == "j***@example.com"


def test_an_example_is_bounded() -> None:
    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(50):
        deep = {"a": deep}
    example = redacted_example(
        {"data": {"long": "y" * 5000, "list": list(range(1000)), "deep": deep, "k" * 300: 1}}
    )
    assert len(example["data"]["long"]) == 1001
    assert example["data"]["list"] == [*range(EXAMPLE_MAX_ITEMS), TRUNCATED]
    assert TRUNCATED in json.dumps(example["data"]["deep"])
    assert example["data"]["k" * 300] == TRUNCATED


def test_pii_status() -> None:
    assert pii_status(("email",), "") == "detected"
    assert pii_status(("email",), "dismissed") == "dismissed"
    assert pii_status((), "confirmed") == "confirmed"
    assert pii_status((), "") is None


# The list API's inputs.


def test_name_filters() -> None:
    assert name_pattern("order.") == "order.%"
    assert name_pattern("*pay*") == "%pay%"
    assert name_pattern("user_signup") == "user\\_signup%"  # `_` is no wildcard
    with pytest.raises(InvalidArgument, match="name must be at most 128"):
        name_pattern("x" * 129)


def test_limits_and_cursors() -> None:
    assert page_limit(0) == 50
    assert page_limit(200) == 200
    for bad in (-1, 201):
        with pytest.raises(InvalidArgument, match="limit must be 1 to 200"):
            page_limit(bad)
    assert decode_cursor(encode_cursor("order.completed")) == "order.completed"
    assert decode_cursor("") == ""
    with pytest.raises(InvalidArgument, match="cursor is not valid"):
        decode_cursor("!!!")


# What the consumer reads off an event.


def a_delivery(event: event_pb2.Event) -> Delivery:
    return Delivery(
        subject="events.t.x", data=event.SerializeToString(), headers={}, attempt=1, stream_sequence=1
    )


def test_an_event_is_observed_with_its_contact_as_user_info() -> None:
    event = event_pb2.Event(
        event_id="e-1",
        project_id="team-1",
        name="order.completed",
        contact=event_pb2.Contact(
            id="c-1",
            external_id="u-1",
            email="jane@example.com",
            tags=["vip"],
            custom_fields=to_struct({"zip": "1"}),
        ),
        data=to_struct({"total": 3}),
        source=event_pb2.Source(type="web", ip="203.0.113.9"),
        accepted_at=to_timestamp(datetime(2024, 12, 10, tzinfo=UTC)),
    )
    seen = observed(a_delivery(event))
    assert (seen.team_id, seen.event_id, seen.name, seen.source, seen.contact_id) == (
        "team-1",
        "e-1",
        "order.completed",
        "web",
        "c-1",
    )
    assert seen.accepted_at == datetime(2024, 12, 10, tzinfo=UTC)
    assert seen.sections == {
        "data": {"total": 3},
        "variables": {},
        "user_info": {"external_id": "u-1", "email": "jane@example.com", "custom_fields": {"zip": "1"}},
    }
    anonymous = observed(a_delivery(event_pb2.Event(event_id="e-2", project_id="t", name="ping")))
    assert (anonymous.source, anonymous.contact_id, anonymous.sections["user_info"]) == ("unknown", None, {})


def test_an_event_without_id_project_or_name_is_poison() -> None:
    with pytest.raises(Poison, match="an event needs an id, a project and a name"):
        observed(a_delivery(event_pb2.Event(project_id="t", name="x")))
    with pytest.raises(Poison, match=r"not a herald\.bus\.v1\.Event"):
        observed(Delivery(subject="events.t.x", data=b"\xff\xff", headers={}, attempt=1, stream_sequence=1))
