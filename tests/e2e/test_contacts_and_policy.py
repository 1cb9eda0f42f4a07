"""Contacts, identity and project policy through the REST gateway: identity resolution and
normalization, the contacts API, the project policy (payload limit, unknown events, event types,
rate limit), one team never seeing another's contacts, and rejected requests creating nothing.

Tests that change a policy use a team of their own, so that they cannot affect each other.
"""

from __future__ import annotations

import time
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import TeamCredentials
from tests.e2e.conftest import RunningStack
from tests.e2e.support import eventually
from tests.e2e.test_ingest_api import (
    BATCH,
    ISO_MS,
    NOTHING,
    PUBLISH,
    SEND,
    assert_error,
    assert_queued,
    assert_uuid,
    bearer,
    cancel_scheduled,
    database_of,
    ingest_rows,
    new_team,
)

POLICY = "/api/v1/project/policy"
EVENT_TYPES = "/api/v1/event-types"
DEFAULT_POLICY = {
    "event_payload_limit_bytes": 262144,
    "unknown_events": "accept",
    "retention_days": 90,
    "idempotency_window": "PT24H",
    "plan": "enterprise",
    "rate_limit_per_hour": 0,
    "effective_rate_limit_per_hour": 0,
}
CONTACT_FIELDS = {
    "id",
    "external_id",
    "email",
    "phone",
    "name",
    "custom_fields",
    "tags",
    "topics",
    "created_at",
    "updated_at",
}
# A payload over the default limit (262144 bytes) and under the gateway's 1 MiB: refused by any
# policy, with a message that names the limit in force, so it shows which policy ingest applies.
PROBE_EVENT = {"event_name": "policy.probe", "event_data": {"blob": "x" * 300_000}}


@pytest.fixture(scope="module")
def database(running: RunningStack) -> Iterator[sqlalchemy.Engine]:
    engine = database_of(running)
    yield engine
    cancel_scheduled(running, engine, running.credentials)
    engine.dispose()


@pytest.fixture
async def other_team(sessions: async_sessionmaker[AsyncSession]) -> TeamCredentials:
    """A second new team, besides `team`."""
    return await new_team(sessions, "other")


def contact_url(external_id: str, suffix: str = "") -> str:
    return f"/api/v1/contacts/{external_id}{suffix}"


def get_contact(running: RunningStack, external_id: str, credentials: TeamCredentials) -> dict[str, Any]:
    answer = running.http.get(contact_url(external_id), headers=credentials.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == CONTACT_FIELDS, body
    return body


def get_policy(running: RunningStack, credentials: TeamCredentials) -> dict[str, Any]:
    answer = running.http.get(POLICY, headers=credentials.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def patch_policy(
    running: RunningStack, credentials: TeamCredentials, change: dict[str, Any]
) -> dict[str, Any]:
    answer = running.http.patch(POLICY, json=change, headers=credentials.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def apply_policy(running: RunningStack, credentials: TeamCredentials, change: dict[str, Any]) -> None:
    """PATCH `change` with a payload limit of 1000 bytes as a marker, and wait until ingest
    applies it (within about a second): the probe's 413 then names the new limit."""
    patch_policy(running, credentials, {**change, "event_payload_limit_bytes": 1000})

    def applied() -> bool:
        answer = running.http.post(SEND, json=PROBE_EVENT, headers=credentials.headers)
        assert answer.status_code == 413, answer.text
        return bool(answer.json()["message"].endswith("event_payload_limit_bytes is 1000"))

    eventually(applied, timeout=5)


def events_named(database: sqlalchemy.Engine, team_id: str, name: str) -> int:
    with database.connect() as connection:
        query = sqlalchemy.text("SELECT count(*) FROM ingest.events WHERE team_id = :team AND name = :name")
        return int(connection.execute(query, {"team": team_id, "name": name}).scalar_one())


def contacts_with_email(database: sqlalchemy.Engine, team_id: str, email: str) -> list[str]:
    with database.connect() as connection:
        query = sqlalchemy.text("SELECT id FROM ingest.contacts WHERE team_id = :team AND email = :email")
        return [str(row.id) for row in connection.execute(query, {"team": team_id, "email": email})]


def away_from_the_hour() -> None:
    """Rate limits count fixed hourly windows: do not start a count just before one ends."""
    now = datetime.now(UTC)
    left = 3600 - (now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < 15:
        time.sleep(left + 0.5)


# Identity


def test_emails_are_normalized_before_identity_is_resolved(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    headers = bearer(team)
    first = running.http.post(
        PUBLISH, json={"event": "identity.check", "email": "  Ada@Example.COM "}, headers=headers
    )
    assert first.status_code == 202, first.text
    contact_id = assert_uuid(first.json()["contact_id"])
    second = running.http.post(
        PUBLISH, json={"event": "identity.check", "email": "ada@example.com"}, headers=headers
    )
    assert second.status_code == 202, second.text
    assert second.json()["contact_id"] == contact_id
    # The Sendmator form finds the same contact by email, and gives it its external id.
    event = {
        "event_name": "identity.check",
        "user_info": {"contact_external_id": "ada-1", "email": "ADA@example.com"},
    }
    assert_queued(running.http.post(SEND, json=event, headers=team.headers))
    contact = get_contact(running, "ada-1", team)
    assert contact["id"] == contact_id
    assert contact["email"] == "ada@example.com"
    third = running.http.post(
        PUBLISH, json={"event": "identity.check", "external_id": "ada-1"}, headers=headers
    )
    assert third.json()["contact_id"] == contact_id
    assert contacts_with_email(database, team.team_id, "ada@example.com") == [contact_id]
    assert ingest_rows(database, team.team_id)["contacts"] == 1


def test_unicode_emails_are_compared_in_nfc(running: RunningStack, team: TeamCredentials) -> None:
    composed = unicodedata.normalize("NFC", "zoë@example.com")
    decomposed = unicodedata.normalize("NFD", "Zoë@Example.com")
    assert composed != decomposed.lower()
    ids = []
    for email in (composed, decomposed):
        answer = running.http.post(
            PUBLISH, json={"event": "identity.check", "email": email}, headers=bearer(team)
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["contact_id"])
    assert ids[0] == ids[1]


def test_phones_are_stored_in_e164(running: RunningStack, team: TeamCredentials) -> None:
    event = {
        "event_name": "identity.check",
        "user_info": {"contact_external_id": "tel-1", "phone": "+1 (415) 555-0100"},
    }
    assert_queued(running.http.post(SEND, json=event, headers=team.headers))
    assert get_contact(running, "tel-1", team)["phone"] == "+14155550100"
    answer = running.http.put(contact_url("tel-2"), json={"phone": "+44 20 7946 0958"}, headers=team.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["phone"] == "+442079460958"


@pytest.mark.parametrize(
    ("user_info", "message_start"),
    [
        ({"contact_external_id": "bad-1", "email": "not-an-email"}, "Invalid user_info.email 'not-an-email'"),
        (
            {"contact_external_id": "bad-2", "email": "a@@example.com"},
            "Invalid user_info.email 'a@@example.com'",
        ),
        ({"contact_external_id": "bad-3", "phone": "12345"}, "Invalid user_info.phone '12345'"),
        ({"contact_external_id": "bad-4", "phone": "call me"}, "Invalid user_info.phone 'call me'"),
        ({"contact_external_id": "bad-5", "phone": "+999 1234"}, "Invalid user_info.phone '+999 1234'"),
    ],
)
def test_invalid_emails_and_phones_are_a_400(
    running: RunningStack, team: TeamCredentials, user_info: dict[str, str], message_start: str
) -> None:
    answer = running.http.post(
        SEND, json={"event_name": "identity.check", "user_info": user_info}, headers=team.headers
    )
    assert_error(answer, 400, starts_with=message_start)
    assert_error(
        running.http.get(contact_url(user_info["contact_external_id"]), headers=team.headers),
        404,
        "Contact not found",
    )


def test_an_impossible_phone_number_is_a_400(running: RunningStack, team: TeamCredentials) -> None:
    event = {"event_name": "identity.check", "user_info": {"contact_external_id": "short", "phone": "+1 555"}}
    answer = running.http.post(SEND, json=event, headers=team.headers)
    assert_error(answer, 400, starts_with="Invalid user_info.phone '+1 555'")


def test_sendrealm_errors_name_sendrealm_fields(running: RunningStack, team: TeamCredentials) -> None:
    answer = running.http.post(
        PUBLISH, json={"event": "identity.check", "email": "not-an-email"}, headers=bearer(team)
    )
    assert_error(answer, 400, starts_with="Invalid email 'not-an-email'")


def test_contact_id_must_name_a_contact_of_the_team(
    running: RunningStack, team: TeamCredentials, other_team: TeamCredentials
) -> None:
    theirs = running.http.put(
        contact_url("theirs"), json={"email": "theirs@example.com"}, headers=other_team.headers
    )
    assert theirs.status_code == 200, theirs.text
    their_id = theirs.json()["id"]
    mine = running.http.put(contact_url("mine"), json={"email": "mine@example.com"}, headers=team.headers)
    my_id = mine.json()["id"]

    missing_answer = running.http.post(
        SEND, json={"event_name": "identity.check", "contact_id": str(uuid.uuid4())}, headers=team.headers
    )
    expected = assert_error(missing_answer, 404, "Contact not found")
    for body in (
        {"event_name": "identity.check", "contact_id": their_id},
        {
            "event_name": "identity.check",
            "contact_id": their_id,
            "user_info": {"contact_external_id": "new-x"},
        },
    ):
        answer = running.http.post(SEND, json=body, headers=team.headers)
        assert answer.status_code == 404
        assert answer.json() == expected
    answer = running.http.post(
        PUBLISH, json={"event": "identity.check", "contact_id": their_id}, headers=bearer(team)
    )
    assert answer.status_code == 404
    assert answer.json() == expected
    assert_error(
        running.http.post(
            SEND, json={"event_name": "identity.check", "contact_id": "user_1"}, headers=team.headers
        ),
        400,
        starts_with="Invalid contact_id 'user_1'",
    )
    assert_error(running.http.get(contact_url("new-x"), headers=team.headers), 404, "Contact not found")
    # contact_id comes first: before external_id and email.
    answer = running.http.post(
        PUBLISH,
        json={
            "event": "identity.check",
            "contact_id": my_id,
            "external_id": "theirs",
            "email": "theirs@example.com",
        },
        headers=bearer(team),
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["contact_id"] == my_id


# The contacts API


def test_put_get_and_delete_a_contact(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    headers = team.headers
    profile = {
        "email": " Grace@Example.com ",
        "phone": "+1 (415) 555-0100",
        "name": "Grace Hopper",
        "custom_fields": {"plan": "pro", "seats": 5, "beta": True},
        "tags": ["vip", "beta", "vip"],
    }
    put = running.http.put(contact_url("grace"), json=profile, headers=headers)
    assert put.status_code == 200, put.text
    contact = put.json()
    assert set(contact) == CONTACT_FIELDS
    assert_uuid(contact["id"])
    assert {
        key: value for key, value in contact.items() if key not in ("id", "created_at", "updated_at")
    } == {
        "external_id": "grace",
        "email": "grace@example.com",
        "phone": "+14155550100",
        "name": "Grace Hopper",
        "custom_fields": {"plan": "pro", "seats": 5, "beta": True},
        "tags": ["vip", "beta"],
        "topics": [],
    }
    assert ISO_MS.match(contact["created_at"]) and ISO_MS.match(contact["updated_at"])
    assert get_contact(running, "grace", team) == contact
    assert events_named(database, team.team_id, "herald.contact.created") == 1

    # PUT replaces the profile: what is absent becomes empty; topics are kept.
    subscribed = running.http.put(contact_url("grace", "/topics/newsletter"), headers=headers)
    assert subscribed.status_code == 200, subscribed.text
    replaced = running.http.put(contact_url("grace"), json={"name": "Grace B. Hopper"}, headers=headers)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["id"] == contact["id"]
    assert body["created_at"] == contact["created_at"]
    assert (body["email"], body["phone"], body["name"]) == ("", "", "Grace B. Hopper")
    assert body["custom_fields"] == {}
    assert body["tags"] == []
    assert body["topics"] == ["newsletter"]
    assert events_named(database, team.team_id, "herald.contact.created") == 1

    deleted = running.http.delete(contact_url("grace"), headers=headers)
    assert deleted.status_code == 200, deleted.text
    erased = deleted.json()["erased"]
    # Its two events (herald.contact.created, herald.topic.subscribed), and a count from every service.
    assert (erased["ingest.contacts"], erased["ingest.events"]) == (1, 2)
    assert {table.split(".")[0] for table in erased} == {"ingest", "matcher", "executor", "tracker"}
    assert_error(running.http.get(contact_url("grace"), headers=headers), 404, "Contact not found")
    assert_error(running.http.delete(contact_url("grace"), headers=headers), 404, "Contact not found")
    # An event about it later makes a new contact.
    assert_queued(
        running.http.post(
            SEND,
            json={"event_name": "identity.check", "user_info": {"contact_external_id": "grace"}},
            headers=headers,
        )
    )
    assert get_contact(running, "grace", team)["id"] != contact["id"]


def test_tags_and_topics(running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine) -> None:
    headers = team.headers
    running.http.put(
        contact_url("tagged"), json={"email": "tagged@example.com", "tags": ["a", "b"]}, headers=headers
    )
    answer = running.http.post(
        contact_url("tagged", "/tags"), json={"add": ["c", "a"], "remove": ["b"]}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["tags"] == ["a", "c"]
    answer = running.http.post(contact_url("tagged", "/tags"), json={"remove": ["zzz"]}, headers=headers)
    assert answer.json()["tags"] == ["a", "c"]
    assert_error(
        running.http.post(
            contact_url("tagged", "/tags"), json={"add": ["x"], "remove": ["x"]}, headers=headers
        ),
        400,
        "A tag cannot be both added and removed: x",
    )
    assert_error(
        running.http.post(contact_url("tagged", "/tags"), json={"add": [" "]}, headers=headers),
        400,
        "A tag must not be empty",
    )
    assert get_contact(running, "tagged", team)["tags"] == ["a", "c"]

    for _ in range(2):
        answer = running.http.put(contact_url("tagged", "/topics/product-news"), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["topics"] == ["product-news"]
    assert events_named(database, team.team_id, "herald.topic.subscribed") == 1
    running.http.put(contact_url("tagged", "/topics/billing:alerts"), headers=headers)
    answer = running.http.delete(contact_url("tagged", "/topics/product-news"), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["topics"] == ["billing:alerts"]
    answer = running.http.delete(contact_url("tagged", "/topics/product-news"), headers=headers)
    assert answer.json()["topics"] == ["billing:alerts"]
    assert_error(
        running.http.put(contact_url("tagged", "/topics/-bad"), headers=headers),
        400,
        starts_with="Invalid topic '-bad'",
    )
    for method, suffix in (("POST", "/tags"), ("PUT", "/topics/news"), ("DELETE", "/topics/news")):
        body = {"add": ["a"]} if method == "POST" else None
        answer = running.http.request(method, contact_url("nobody", suffix), json=body, headers=headers)
        assert_error(answer, 404, "Contact not found")


@pytest.mark.parametrize(
    ("method", "suffix", "body", "message_start"),
    [
        ("PUT", "", {"emial": "a@example.com"}, "Unknown field 'emial'"),
        ("PUT", "", {"email": "a@example.com", "topics": ["x"]}, "Unknown field 'topics'"),
        ("PUT", "", {"custom_fields": {"ok": 1}, "user_info": {}}, "Unknown field 'user_info'"),
        ("PUT", "", {"tags": "vip"}, "tags must be an array"),
        ("PUT", "", {"email": "nope"}, "Invalid email 'nope'"),
        ("PUT", "", {"phone": "12"}, "Invalid phone '12'"),
        ("POST", "/tags", {"add": ["a"], "delete": ["b"]}, "Unknown field 'delete'"),
    ],
)
def test_bad_contact_requests_are_a_400(
    running: RunningStack,
    team: TeamCredentials,
    method: str,
    suffix: str,
    body: dict[str, Any],
    message_start: str,
) -> None:
    running.http.put(contact_url("fields"), json={"name": "Before"}, headers=team.headers)
    answer = running.http.request(method, contact_url("fields", suffix), json=body, headers=team.headers)
    assert_error(answer, 400, starts_with=message_start)
    contact = get_contact(running, "fields", team)
    assert (contact["name"], contact["email"], contact["tags"]) == ("Before", "", [])


def test_another_teams_contact_is_exactly_not_found(
    running: RunningStack, team: TeamCredentials, other_team: TeamCredentials
) -> None:
    created = running.http.put(
        contact_url("shared-id"), json={"email": "owner@example.com"}, headers=team.headers
    )
    assert created.status_code == 200
    expected = assert_error(
        running.http.get(contact_url(f"missing-{uuid.uuid4().hex}"), headers=other_team.headers),
        404,
        "Contact not found",
    )
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/tags"),
        ("PUT", "/topics/news"),
        ("DELETE", "/topics/news"),
    ):
        body = {"add": ["stolen"]} if suffix == "/tags" else None
        for headers in (other_team.headers, bearer(other_team)):
            answer = running.http.request(
                method, contact_url("shared-id", suffix), json=body, headers=headers
            )
            assert answer.status_code == 404, (method, suffix, answer.text)
            assert answer.json() == expected
    contact = get_contact(running, "shared-id", team)
    assert contact == created.json()
    # The same external id is another contact in another team.
    theirs = running.http.put(
        contact_url("shared-id"), json={"email": "other@example.com"}, headers=other_team.headers
    )
    assert theirs.status_code == 200
    assert theirs.json()["id"] != contact["id"]
    assert get_contact(running, "shared-id", team)["email"] == "owner@example.com"


# Project policy


def test_the_default_policy(running: RunningStack, team: TeamCredentials) -> None:
    policy = get_policy(running, team)
    assert set(policy) == set(DEFAULT_POLICY)
    assert {key: value for key, value in policy.items() if key != "idempotency_window"} == {
        key: value for key, value in DEFAULT_POLICY.items() if key != "idempotency_window"
    }
    assert policy["idempotency_window"] in ("PT24H", "P1D")  # exactly "PT24H": see the test below


def test_the_idempotency_window_reads_back_as_written(running: RunningStack, team: TeamCredentials) -> None:
    assert get_policy(running, team)["idempotency_window"] == "PT24H"
    for window in ("PT24H", "PT36H", "P2D", "PT30M"):
        assert patch_policy(running, team, {"idempotency_window": window})["idempotency_window"] == window


def test_patching_the_policy_changes_only_what_is_given(running: RunningStack, team: TeamCredentials) -> None:
    changed = patch_policy(running, team, {"retention_days": 30, "idempotency_window": "P7D"})
    before = get_policy(running, team)
    expected = {**before, "retention_days": 30, "idempotency_window": "P7D"}
    assert changed == expected
    assert get_policy(running, team) == expected
    assert patch_policy(running, team, {"plan": "starter"}) == {
        **expected,
        "plan": "starter",
        "effective_rate_limit_per_hour": 1000,
    }
    assert patch_policy(running, team, {"rate_limit_per_hour": 50})["effective_rate_limit_per_hour"] == 50
    after = patch_policy(running, team, {"rate_limit_per_hour": 0, "idempotency_window": "PT30M"})
    assert after == {
        **expected,
        "plan": "starter",
        "idempotency_window": "PT30M",
        "effective_rate_limit_per_hour": 1000,
    }
    assert patch_policy(running, team, {}) == after
    assert patch_policy(running, team, {"plan": "pro"})["effective_rate_limit_per_hour"] == 10000
    assert get_policy(running, team)["plan"] == "pro"


@pytest.mark.parametrize(
    ("change", "message_start"),
    [
        (
            {"event_payload_limit_bytes": 0},
            "Invalid event_payload_limit_bytes: must be between 1 and 1048576",
        ),
        (
            {"event_payload_limit_bytes": 1048577},
            "Invalid event_payload_limit_bytes: must be between 1 and 1048576",
        ),
        ({"unknown_events": "maybe"}, "Invalid unknown_events: must be 'accept' or 'reject'"),
        ({"unknown_events": "REJECT"}, "Invalid unknown_events: must be 'accept' or 'reject'"),
        ({"retention_days": 0}, "Invalid retention_days: must be between 1 and 3650"),
        ({"retention_days": 3651}, "Invalid retention_days: must be between 1 and 3650"),
        (
            {"idempotency_window": "24 hours"},
            "Invalid idempotency_window: '24 hours' is not an ISO 8601 duration",
        ),
        (
            {"idempotency_window": "P1M"},
            "Invalid idempotency_window: 'P1M': years and months have no fixed length",
        ),
        ({"idempotency_window": "PT10S"}, "Invalid idempotency_window: must be between PT1M and P30D"),
        ({"idempotency_window": "P31D"}, "Invalid idempotency_window: must be between PT1M and P30D"),
        ({"plan": "gold"}, "Invalid plan: must be one of 'starter', 'pro', 'enterprise'"),
        (
            {"rate_limit_per_hour": -1},
            "Invalid rate_limit_per_hour: must be 0 (use the plan's limit) or more",
        ),
        ({"retention_days": 1.5}, "retention_days must be an integer"),
        ({"retention_days": 30, "plan": "gold"}, "Invalid plan"),
        ({"retension_days": 30}, "Unknown field 'retension_days'"),
    ],
)
def test_invalid_policy_values_are_a_400_and_change_nothing(
    running: RunningStack, team: TeamCredentials, change: dict[str, Any], message_start: str
) -> None:
    before = get_policy(running, team)
    answer = running.http.patch(POLICY, json=change, headers=team.headers)
    assert_error(answer, 400, starts_with=message_start)
    assert get_policy(running, team) == before


def test_a_payload_over_the_limit_is_a_413(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    assert patch_policy(running, team, {"event_payload_limit_bytes": 100})["event_payload_limit_bytes"] == 100
    big = {"blob": "x" * 200}
    over = {"event_name": "payload.check", "user_info": {"contact_external_id": "heavy"}, "event_data": big}

    def refused() -> httpx.Response | None:
        answer = running.http.post(SEND, json=over, headers=team.headers)
        return answer if answer.status_code == 413 else None

    answer = eventually(refused, timeout=5)
    body = assert_error(answer, 413, starts_with="Event payload is ")
    assert body["message"].endswith("bytes; the project's event_payload_limit_bytes is 100")
    size = int(body["message"].split()[3])
    assert size > 200
    assert ingest_rows(database, team.team_id)["events"] in (0, 1)  # 1 if accepted before the change applied
    before = ingest_rows(database, team.team_id)

    for route, event, headers in (
        (SEND, {"event_name": "payload.check", "variables": big}, team.headers),
        (SEND, {"event_name": "payload.check", "user_info": {"custom_fields": big}}, team.headers),
        (PUBLISH, {"event": "payload.check", "external_id": "heavy", "payload": big}, bearer(team)),
    ):
        assert_error(
            running.http.post(route, json=event, headers=headers), 413, starts_with="Event payload is "
        )
    assert_error(
        running.http.put(contact_url("heavy"), json={"custom_fields": big}, headers=team.headers),
        413,
        starts_with="custom_fields is ",
    )
    batch = running.http.post(
        BATCH, json={"events": [over, {"event_name": "payload.check"}]}, headers=team.headers
    )
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["results"]
    assert first["success"] is False
    assert first["error"]["status_code"] == 413
    assert first["error"]["error"] == HTTPStatus(413).phrase
    assert first["error"]["reason"] == "PAYLOAD_TOO_LARGE"
    assert second["success"] is True
    after = ingest_rows(database, team.team_id)
    assert after["events"] == before["events"] + 1
    assert after["contacts"] == before["contacts"]
    # Under the limit is fine.
    assert_queued(
        running.http.post(
            SEND, json={"event_name": "payload.check", "event_data": {"a": 1}}, headers=team.headers
        )
    )


def test_unknown_events_rejected_until_registered(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    headers = team.headers
    assert_queued(running.http.post(SEND, json={"event_name": "order.placed"}, headers=headers))
    # (Polling with the unknown name would catalogue it while the old policy still applies.)
    apply_policy(running, team, {"unknown_events": "reject"})
    assert get_policy(running, team)["unknown_events"] == "reject"
    before = ingest_rows(database, team.team_id)
    answer = running.http.post(SEND, json={"event_name": "order.shipped"}, headers=headers)
    assert_error(answer, 404, "Event type not found")
    assert ingest_rows(database, team.team_id) == before
    counted = ingest_rows(database, team.team_id)
    event = {"event": "order.shipped", "email": "buyer@example.com"}
    assert_error(running.http.post(PUBLISH, json=event, headers=bearer(team)), 404, "Event type not found")
    # A name catalogued under "accept" is known.
    assert_queued(running.http.post(SEND, json={"event_name": "order.placed"}, headers=headers))

    registered = running.http.post(
        EVENT_TYPES,
        json={"name": "order.shipped", "description": "An order left the warehouse"},
        headers=headers,
    )
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert set(body) == {"name", "description", "origin", "created_at"}
    assert (body["name"], body["description"], body["origin"]) == (
        "order.shipped",
        "An order left the warehouse",
        "registered",
    )
    assert ISO_MS.match(body["created_at"])
    assert_queued(running.http.post(SEND, json={"event_name": "order.shipped"}, headers=headers))
    answer = running.http.post(PUBLISH, json=event, headers=bearer(team))
    assert answer.status_code == 202, answer.text
    after = ingest_rows(database, team.team_id)
    assert after["events"] == counted["events"] + 3
    assert after["contacts"] == counted["contacts"] + 1

    listed = running.http.get(EVENT_TYPES, headers=headers)
    assert listed.status_code == 200, listed.text
    types = {item["name"]: item for item in listed.json()["event_types"]}
    assert types["order.shipped"]["origin"] == "registered"
    assert types["order.placed"]["origin"] == "catalogued"
    assert "order.unknown" not in types

    for name, message_start in (
        ("Order.Shipped", "Invalid event name"),
        ("herald.order", "Event name 'herald.order'"),
    ):
        assert_error(
            running.http.post(EVENT_TYPES, json={"name": name}, headers=headers),
            400,
            starts_with=message_start,
        )
    assert_error(
        running.http.post(EVENT_TYPES, json={"name": "x", "schema": {}}, headers=headers),
        400,
        starts_with="Unknown field 'schema'",
    )

    deleted = running.http.delete(f"{EVENT_TYPES}/order.shipped", headers=headers)
    assert deleted.status_code == 204
    assert_error(
        running.http.post(SEND, json={"event_name": "order.shipped"}, headers=headers),
        404,
        "Event type not found",
    )
    assert_error(
        running.http.delete(f"{EVENT_TYPES}/order.shipped", headers=headers), 404, "Event type not found"
    )

    patch_policy(running, team, {"unknown_events": "accept"})
    eventually(
        lambda: (
            running.http.post(SEND, json={"event_name": "order.returned"}, headers=headers).status_code == 201
        ),
        timeout=5,
    )
    names = [item["name"] for item in running.http.get(EVENT_TYPES, headers=headers).json()["event_types"]]
    assert "order.returned" in names


def test_the_rate_limit(running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine) -> None:
    away_from_the_hour()
    apply_policy(running, team, {"rate_limit_per_hour": 3})
    assert get_policy(running, team)["effective_rate_limit_per_hour"] == 3
    headers = team.headers
    for remaining in (2, 1, 0):
        answer = running.http.post(SEND, json={"event_name": "rate.check"}, headers=headers)
        assert_queued(answer)
        assert answer.headers["RateLimit-Limit"] == "3"
        assert answer.headers["RateLimit-Remaining"] == str(remaining)
        assert answer.headers["RateLimit-Policy"] == "3;w=3600"
        assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 3600
        assert "Retry-After" not in answer.headers

    over = {"event_name": "rate.check", "user_info": {"contact_external_id": "over-limit"}}
    for route, body, answer_headers in (
        (SEND, over, headers),
        (PUBLISH, {"event": "rate.check", "external_id": "over-limit"}, bearer(team)),
    ):
        answer = running.http.post(route, json=body, headers=answer_headers)
        assert_error(answer, 429, starts_with="Rate limit exceeded: this project may send 3 events per hour")
        retry_after = answer.headers["Retry-After"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 3600, retry_after
        assert answer.headers["RateLimit-Remaining"] == "0"
        assert answer.headers["RateLimit-Limit"] == "3"
        assert answer.headers["RateLimit-Reset"] == retry_after
        assert answer.json()["message"].endswith(f"try again in {retry_after} seconds")
    batch = running.http.post(BATCH, json={"events": [{"event_name": "rate.check"}]}, headers=headers)
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0]["error"]["status_code"] == 429
    assert ingest_rows(database, team.team_id)["events"] == 3
    assert_error(running.http.get(contact_url("over-limit"), headers=headers), 404, "Contact not found")
    # Other routes are not limited.
    assert get_policy(running, team)["rate_limit_per_hour"] == 3

    # A higher limit counts on from the same window: 3 used, now 4 of 10.
    patch_policy(running, team, {"rate_limit_per_hour": 10})

    def sent() -> httpx.Response | None:
        answer = running.http.post(SEND, json={"event_name": "rate.check"}, headers=headers)
        return answer if answer.status_code == 201 else None

    answer = eventually(sent, timeout=5)
    assert answer.headers["RateLimit-Limit"] == "10"
    assert answer.headers["RateLimit-Remaining"] == "6"


def test_rejected_events_do_not_use_the_rate_limit(running: RunningStack, team: TeamCredentials) -> None:
    away_from_the_hour()
    apply_policy(running, team, {"rate_limit_per_hour": 3, "unknown_events": "reject"})
    headers = team.headers
    for _ in range(2):
        answer = running.http.post(SEND, json={"event_name": "rate.unknown"}, headers=headers)
        assert_error(answer, 404, "Event type not found")
    answer = running.http.post(
        SEND, json={"event_name": "rate.unknown", "contact_id": str(uuid.uuid4())}, headers=headers
    )
    assert_error(answer, 404)
    assert running.http.post(EVENT_TYPES, json={"name": "rate.known"}, headers=headers).status_code == 201
    for remaining in (2, 1, 0):
        answer = running.http.post(SEND, json={"event_name": "rate.known"}, headers=headers)
        assert answer.status_code == 201, answer.text
        assert answer.headers["RateLimit-Remaining"] == str(remaining)


# Rejected requests


def test_rejected_requests_create_nothing(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    headers = team.headers
    policy = get_policy(running, team)
    rejected: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "POST",
            SEND,
            {"event_name": "ghost.event", "user_info": {"contact_external_id": "g1", "email": "x"}},
            400,
        ),
        (
            "POST",
            SEND,
            {"event_name": "ghost.event", "user_info": {"contact_external_id": "g2", "phone": "1"}},
            400,
        ),
        (
            "POST",
            SEND,
            {
                "event_name": "ghost.event",
                "user_info": {"contact_external_id": "g3"},
                "trigger_at": "2024-12-15T10:00:00Z",
            },
            400,
        ),
        (
            "POST",
            SEND,
            {"event_name": "ghost.event", "user_info": {"contact_external_id": "g4"}, "trigger_at": "soon"},
            400,
        ),
        (
            "POST",
            SEND,
            {"event_name": "herald.contact.created", "user_info": {"contact_external_id": "g5"}},
            400,
        ),
        ("POST", SEND, {"event_name": "Ghost", "user_info": {"contact_external_id": "g6"}}, 400),
        (
            "POST",
            SEND,
            {"event_name": "ghost.event", "user_info": {"contact_external_id": "g7", "nickname": "g"}},
            400,
        ),
        (
            "POST",
            SEND,
            {
                "event_name": "ghost.event",
                "contact_id": str(uuid.uuid4()),
                "user_info": {"contact_external_id": "g8"},
            },
            404,
        ),
        ("POST", PUBLISH, {"event": "ghost.event", "external_id": "g9", "occurred_at": "yesterday"}, 400),
        ("POST", PUBLISH, {"event": "ghost.event", "external_id": "g10", "contact_id": "nope"}, 400),
        (
            "POST",
            BATCH,
            {"events": [{"event_name": "Ghost", "user_info": {"contact_external_id": "g11"}}]},
            200,
        ),
        ("PUT", contact_url("g12"), {"email": "not-an-email"}, 400),
        ("PUT", contact_url("g13"), {"name": "x", "role": "admin"}, 400),
        ("POST", contact_url("g14", "/tags"), {"add": ["a"]}, 404),
        ("PUT", contact_url("g15", "/topics/news"), {}, 404),
        ("POST", EVENT_TYPES, {"name": "Ghost"}, 400),
        ("PATCH", POLICY, {"plan": "free"}, 400),
    ]
    for method, route, body, status in rejected:
        request_headers = bearer(team) if route == PUBLISH else headers
        answer = running.http.request(method, route, json=body or None, headers=request_headers)
        assert answer.status_code == status, (method, route, body, answer.text)
        if status == 200:
            assert answer.json()["accepted"] == 0
    assert ingest_rows(database, team.team_id) == NOTHING
    for index in range(1, 16):
        assert running.http.get(contact_url(f"g{index}"), headers=headers).status_code == 404
    assert running.http.get(EVENT_TYPES, headers=headers).json() == {"event_types": []}
    assert get_policy(running, team) == policy
    # The same requests with a mistake fixed are accepted: the checks above were not vacuous.
    assert_queued(
        running.http.post(
            SEND,
            json={"event_name": "ghost.event", "user_info": {"contact_external_id": "g1"}},
            headers=headers,
        )
    )
    assert ingest_rows(database, team.team_id)["contacts"] == 1


def test_a_rejected_idempotent_request_changes_nothing(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    key = f"once-{uuid.uuid4()}"
    event = {
        "event_name": "ghost.event",
        "user_info": {"contact_external_id": "idem"},
        "idempotency_key": key,
    }
    first = assert_queued(running.http.post(SEND, json=event, headers=team.headers))
    counted = ingest_rows(database, team.team_id)
    changed = {**event, "user_info": {"contact_external_id": "someone-else"}}
    assert_error(running.http.post(SEND, json=changed, headers=team.headers), 422)
    assert ingest_rows(database, team.team_id) == counted
    assert_error(
        running.http.get(contact_url("someone-else"), headers=team.headers), 404, "Contact not found"
    )
    replay = running.http.post(SEND, json=event, headers=team.headers)
    assert replay.json()["trigger_id"] == first["trigger_id"]
    assert ingest_rows(database, team.team_id) == counted
    assert replay.json()["job_id"] == ""
    assert replay.headers["Idempotent-Replayed"] == "true"
