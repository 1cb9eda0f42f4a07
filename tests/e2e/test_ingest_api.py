"""The ingest API through the REST gateway, as both product documents show it: the five Sendmator
"Send Event (Async)" examples, scheduling and cancelling, event-name rules, the Sendrealm
`POST /v1/events` with idempotency, batches, and one team never seeing another's triggers.

The helpers at the top are shared with test_contacts_and_policy.py.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.database import sqlalchemy_url
from kernel.tenancy import ensure_team, issue_key
from tests.conftest import TeamCredentials
from tests.e2e.conftest import RunningStack
from tests.e2e.support import SENDMATOR_EXAMPLE_1, eventually

SEND = "/api/v1/events/send"
PUBLISH = "/v1/events"
BATCH = "/api/v1/events/batch"
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# The Sendmator page's examples 2, 3 and 5, exactly as its curl commands send them (example 1 is
# tests.e2e.support.SENDMATOR_EXAMPLE_1; example 4 is scheduled, see example_4()).
SENDMATOR_EXAMPLE_2 = {
    "event_name": "purchase_completed",
    "user_info": {"contact_external_id": "user_67890", "email": "alice@example.com", "name": "Alice Johnson"},
    "event_data": {"order_id": "ORD-98765", "amount": 149.99, "currency": "USD", "items_count": 3},
    "variables": {
        "order_total": "$149.99",
        "estimated_delivery": "2024-12-20",
        "tracking_url": "https://track.example.com/ORD-98765",
    },
}
SENDMATOR_EXAMPLE_3 = {
    "event_name": "password_reset_requested",
    "user_info": {"contact_external_id": "user_11111", "email": "bob@example.com"},
    "source": {"type": "web_app", "ip": "203.0.113.45"},
    "variables": {
        "reset_code": "ABC123",
        "reset_link": "https://app.example.com/reset?token=xyz789",
        "expiry_time": "30 minutes",
    },
}
SENDMATOR_EXAMPLE_5 = {
    "event_name": "course_completed",
    "user_info": {"contact_external_id": "student_456", "email": "learner@example.com", "name": "Sarah Lee"},
    "event_data": {
        "course_id": "CS101",
        "course_name": "Introduction to Programming",
        "completion_date": "2024-12-10",
        "score": 95,
        "certificate_url": "https://certs.example.com/CS101-456",
    },
    "variables": {
        "course_title": "Introduction to Programming",
        "student_name": "Sarah Lee",
        "grade": "A",
        "certificate_link": "https://certs.example.com/CS101-456",
        "next_course": "Advanced Programming",
    },
}
# The Sendrealm page's example request body.
SENDREALM_EXAMPLE = {
    "event": "order.completed",
    "email": "olivia@example.com",
    "payload": {"order_id": "ord_123", "amount": 4900, "currency": "USD"},
    "occurred_at": "2026-06-08T14:15:00.000Z",
    "idempotency_key": "evt_order_completed_ord_123",
}

REMINDER_EVENT = "reminder.scheduled_check"
REMINDER_WORKFLOW = {
    "key": "scheduled-reminder",
    "name": "Scheduled reminder",
    "trigger": {"event": REMINDER_EVENT},
    "steps": [{"type": "email", "subject": "Reminder for {{contact.external_id}}", "body": "Due now"}],
    "active": True,
}


# Shared helpers


def example_4(trigger_at: str) -> dict[str, Any]:
    """The page's example 4, with a trigger_at of our choosing (the page's date is in the past)."""
    return {
        "event_name": "subscription_renewal_reminder",
        "user_info": {"contact_external_id": "user_22222", "email": "customer@example.com"},
        "trigger_at": trigger_at,
        "variables": {"subscription_type": "Premium", "renewal_date": "2024-12-20", "amount": "$29.99"},
    }


def instant(moment: datetime) -> str:
    """`moment` as the API writes it: 2026-12-15T10:00:00.000Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bearer(credentials: TeamCredentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials.api_key}"}


def assert_error(
    answer: httpx.Response,
    status: int,
    message: str | None = None,
    *,
    starts_with: str | None = None,
    contains: str | None = None,
) -> dict[str, Any]:
    """`answer` is the one error shape with `status`, and its message is as given."""
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status
    assert body["error"] == HTTPStatus(status).phrase
    if message is not None:
        assert body["message"] == message, body
    if starts_with is not None:
        assert body["message"].startswith(starts_with), body
    if contains is not None:
        assert contains in body["message"], body
    return body


def assert_uuid(value: Any) -> str:
    assert isinstance(value, str)
    assert str(uuid.UUID(value)) == value, value
    return value


def assert_queued(answer: httpx.Response) -> dict[str, Any]:
    """A 201 of /api/v1/events/send for an event queued now, exactly as the Sendmator page shows."""
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"success", "trigger_id", "job_id", "message"}, body
    assert body["success"] is True
    assert_uuid(body["trigger_id"])
    assert body["job_id"].isdigit() and int(body["job_id"]) > 0, body
    assert body["message"] == "Event queued successfully"
    return body


def get_trigger(
    running: RunningStack, trigger_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    answer = running.http.get(
        f"/api/v1/triggers/{trigger_id}", headers=headers or running.credentials.headers
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["id"] == trigger_id
    return body


def trigger_status(running: RunningStack, trigger_id: str) -> str:
    status: str = get_trigger(running, trigger_id)["status"]
    return status


def wait_for_status(running: RunningStack, trigger_id: str, wanted: str, timeout: float = 10.0) -> None:
    eventually(lambda: trigger_status(running, trigger_id) == wanted, timeout=timeout)


INGEST_COUNTS = {
    "contacts": "SELECT count(*) FROM ingest.contacts WHERE team_id = :team",
    "events": "SELECT count(*) FROM ingest.events WHERE team_id = :team AND name NOT LIKE 'herald.%'",
    "system_events": "SELECT count(*) FROM ingest.events WHERE team_id = :team AND name LIKE 'herald.%'",
    "triggers": (
        "SELECT count(*) FROM ingest.triggers WHERE team_id = :team AND event_name NOT LIKE 'herald.%'"
    ),
    "event_types": "SELECT count(*) FROM ingest.event_types WHERE team_id = :team",
    "idempotency_keys": "SELECT count(*) FROM ingest.idempotency_keys WHERE team_id = :team",
}
NOTHING = dict.fromkeys(INGEST_COUNTS, 0)


def ingest_rows(database: sqlalchemy.Engine, team_id: str) -> dict[str, int]:
    """How many rows of each kind ingest holds for `team_id` (customer events apart from the
    `herald.*` events the platform emits, such as herald.contact.created)."""
    with database.connect() as connection:
        return {
            kind: int(connection.execute(sqlalchemy.text(query), {"team": team_id}).scalar_one())
            for kind, query in INGEST_COUNTS.items()
        }


def trigger_row_status(database: sqlalchemy.Engine, trigger_id: str) -> str | None:
    with database.connect() as connection:
        query = sqlalchemy.text("SELECT status FROM ingest.triggers WHERE id = :id")
        status: str | None = connection.execute(query, {"id": uuid.UUID(trigger_id)}).scalar_one_or_none()
        return status


async def new_team(sessions: async_sessionmaker[AsyncSession], prefix: str) -> TeamCredentials:
    team_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    async with sessions() as session, session.begin():
        await ensure_team(session, team_id)
        issued = await issue_key(session, team_id, label="tests")
    return TeamCredentials(team_id, issued.secret)


def database_of(running: RunningStack) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(sqlalchemy_url(running.stack.database_url), poolclass=sqlalchemy.NullPool)


def cancel_scheduled(
    running: RunningStack, database: sqlalchemy.Engine, credentials: TeamCredentials
) -> None:
    """Cancel the team's triggers still scheduled, so that no test leaves a timer behind in a
    database other stacks may share."""
    with database.connect() as connection:
        query = sqlalchemy.text(
            "SELECT id FROM ingest.triggers WHERE team_id = :team AND status = 'scheduled'"
        )
        scheduled = [str(row.id) for row in connection.execute(query, {"team": credentials.team_id})]
    for trigger_id in scheduled:
        running.http.delete(f"/api/v1/triggers/{trigger_id}", headers=credentials.headers)


@pytest.fixture(scope="module")
def database(running: RunningStack) -> Iterator[sqlalchemy.Engine]:
    engine = database_of(running)
    yield engine
    cancel_scheduled(running, engine, running.credentials)
    engine.dispose()


@pytest.fixture(scope="module")
def reminder_workflow(running: RunningStack) -> str:
    answer = running.http.post(
        "/api/v1/workflows", json=REMINDER_WORKFLOW, headers=running.credentials.headers
    )
    assert answer.status_code == 201, answer.text
    return REMINDER_EVENT


# The Sendmator examples


@pytest.mark.parametrize(
    "example",
    [SENDMATOR_EXAMPLE_1, SENDMATOR_EXAMPLE_2, SENDMATOR_EXAMPLE_3, SENDMATOR_EXAMPLE_5],
    ids=["1-user_signup", "2-purchase_completed", "3-password_reset_requested", "5-course_completed"],
)
def test_the_sendmator_examples_are_queued(running: RunningStack, example: dict[str, Any]) -> None:
    body = assert_queued(running.http.post(SEND, json=example, headers=running.credentials.headers))
    trigger = get_trigger(running, body["trigger_id"])
    assert trigger["status"] in ("queued", "processing", "completed"), trigger
    assert trigger["flow_type"] == "workflow"
    assert trigger["details_endpoint"] == f"/triggers/{body['trigger_id']}/workflow"
    info = example["user_info"]
    contact = running.http.get(
        f"/api/v1/contacts/{info['contact_external_id']}", headers=running.credentials.headers
    )
    assert contact.status_code == 200, contact.text
    assert contact.json()["email"] == info["email"]
    assert contact.json()["name"] == info.get("name", "")


def test_example_4_is_scheduled_until_its_time(running: RunningStack) -> None:
    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    trigger_at = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = running.http.post(SEND, json=example_4(trigger_at), headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"success", "trigger_id", "job_id", "message", "scheduled_for"}, body
    assert body["success"] is True
    assert_uuid(body["trigger_id"])
    assert body["job_id"] == ""  # scheduled: not queued on the bus yet
    assert body["message"] == f"Event scheduled for {at.strftime('%Y-%m-%dT%H:%M:%S')}.000Z"
    assert body["scheduled_for"] == instant(at)
    assert trigger_status(running, body["trigger_id"]) == "scheduled"
    time.sleep(0.5)  # the tracker has heard of it by now, and still says scheduled
    trigger = get_trigger(running, body["trigger_id"])
    assert trigger["status"] == "scheduled"
    assert "started_at" not in trigger and "completed_at" not in trigger
    # Other offsets name the same instant, answered in UTC.
    later = at + timedelta(hours=1)
    with_offset = (later + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    answer = running.http.post(SEND, json=example_4(with_offset), headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["scheduled_for"] == instant(later)
    assert answer.json()["message"] == f"Event scheduled for {instant(later)}"


def schedule(running: RunningStack, event: dict[str, Any], at: datetime) -> str:
    answer = running.http.post(
        SEND, json={**event, "trigger_at": instant(at)}, headers=running.credentials.headers
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["message"] == f"Event scheduled for {instant(at)}"
    assert body["scheduled_for"] == instant(at)
    assert body["job_id"] == ""
    trigger_id: str = body["trigger_id"]
    return trigger_id


def watch_until_fired(
    running: RunningStack, trigger_id: str, at: datetime, mailbox: str | None = None
) -> None:
    """Poll the trigger from now until it leaves `scheduled`: never before `at`, at most 2 s after."""
    left_scheduled: datetime | None = None
    deadline = at + timedelta(seconds=6)
    while datetime.now(UTC) < deadline:
        status = trigger_status(running, trigger_id)
        seen_at = datetime.now(UTC)
        if status != "scheduled":
            left_scheduled = seen_at
            break
        if mailbox is not None:
            assert running.sink.messages_for(mailbox) == []
        time.sleep(0.05)
    assert left_scheduled is not None, "the trigger never left 'scheduled'"
    assert left_scheduled >= at
    assert left_scheduled - at <= timedelta(seconds=2), left_scheduled - at


def cancel_if_scheduled(running: RunningStack, database: sqlalchemy.Engine, trigger_id: str) -> None:
    """Leave no due trigger behind that the timer keeps failing on (the database is shared)."""
    if trigger_row_status(database, trigger_id) == "scheduled":
        running.http.delete(f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers)


def test_a_scheduled_event_fires_on_time(running: RunningStack, database: sqlalchemy.Engine) -> None:
    at = datetime.now(UTC) + timedelta(seconds=2)
    trigger_id = schedule(running, {"event_name": "reminder.no_contact"}, at)
    try:
        assert trigger_status(running, trigger_id) == "scheduled"
        watch_until_fired(running, trigger_id, at)
        wait_for_status(running, trigger_id, "completed")
        assert trigger_row_status(database, trigger_id) == "queued"
        assert_error(
            running.http.delete(f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers),
            409,
            starts_with=f"Trigger {trigger_id} is not scheduled",
        )
    finally:
        cancel_if_scheduled(running, database, trigger_id)


def test_a_scheduled_event_about_a_contact_fires_on_time_and_sends(
    running: RunningStack, reminder_workflow: str, database: sqlalchemy.Engine
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=2)
    event = {
        "event_name": reminder_workflow,
        "user_info": {"contact_external_id": "fire_1", "email": "fire.1@example.com"},
    }
    trigger_id = schedule(running, event, at)
    try:
        watch_until_fired(running, trigger_id, at, mailbox="fire.1@example.com")
        wait_for_status(running, trigger_id, "completed")
        assert get_trigger(running, trigger_id)["summary"] == {
            "total_contacts": 1,
            "sent": 1,
            "failed": 0,
            "filtered": 0,
        }
        mail = running.sink.messages_with("X-Herald-Trigger", trigger_id)
        assert len(mail) == 1
        assert mail[0].rcpt_to == ["fire.1@example.com"]
        assert mail[0].message["Subject"] == "Reminder for fire_1"
    finally:
        cancel_if_scheduled(running, database, trigger_id)


def test_a_cancelled_trigger_never_fires(running: RunningStack, database: sqlalchemy.Engine) -> None:
    headers = running.credentials.headers
    at = datetime.now(UTC) + timedelta(seconds=2)
    cancelled = schedule(running, {"event_name": "reminder.cancel_check"}, at)
    control = schedule(running, {"event_name": "reminder.cancel_check"}, at)  # same time, not cancelled
    try:
        answer = running.http.delete(f"/api/v1/triggers/{cancelled}", headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"id", "status", "scheduled_for", "cancelled_at"}, body
        assert body["id"] == cancelled
        assert body["status"] == "cancelled"
        assert body["scheduled_for"] == instant(at)
        assert trigger_row_status(database, cancelled) == "cancelled"
        wait_for_status(running, cancelled, "cancelled", timeout=5)

        watch_until_fired(running, control, at)
        wait_for_status(running, control, "completed")
        time.sleep(max(0.0, (at + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()))
        trigger = get_trigger(running, cancelled)
        assert trigger["status"] == "cancelled"
        assert trigger["summary"] == {"total_contacts": 0, "sent": 0, "failed": 0, "filtered": 0}
        assert "started_at" not in trigger
        assert trigger_row_status(database, cancelled) == "cancelled"
        # Cancelling again changes nothing.
        again = running.http.delete(f"/api/v1/triggers/{cancelled}", headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "cancelled"
    finally:
        cancel_if_scheduled(running, database, control)


def test_the_cancel_answer_says_when(running: RunningStack) -> None:
    at = datetime.now(UTC) + timedelta(hours=2)
    sent = running.http.post(SEND, json=example_4(instant(at)), headers=running.credentials.headers)
    assert sent.status_code == 201, sent.text
    before = datetime.now(UTC)
    answer = running.http.delete(
        f"/api/v1/triggers/{sent.json()['trigger_id']}", headers=running.credentials.headers
    )
    assert answer.status_code == 200, answer.text
    cancelled_at = answer.json()["cancelled_at"]
    assert ISO_MS.match(cancelled_at), answer.json()
    moment = datetime.fromisoformat(cancelled_at)
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC) + timedelta(seconds=1)


def test_cancelling_an_unscheduled_or_unknown_trigger(running: RunningStack) -> None:
    headers = running.credentials.headers
    now = assert_queued(running.http.post(SEND, json={"event_name": "cancel.now"}, headers=headers))
    trigger_id = now["trigger_id"]
    body = assert_error(
        running.http.delete(f"/api/v1/triggers/{trigger_id}", headers=headers),
        409,
        starts_with=f"Trigger {trigger_id} is not scheduled",
    )
    assert "only a scheduled trigger can be cancelled" in body["message"]
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        assert_error(
            running.http.delete(f"/api/v1/triggers/{missing}", headers=headers), 404, "Trigger not found"
        )
    assert trigger_status(running, trigger_id) != "cancelled"


# trigger_at


@pytest.mark.parametrize(
    "trigger_at",
    [
        "tomorrow",
        "2026-13-45T10:00:00Z",
        "2030-12-15",
        "2030-12-15T10:00:00",
        "10:00:00Z",
        "2030-12-15T25:00Z",
    ],
)
def test_a_malformed_trigger_at_is_a_400(running: RunningStack, trigger_at: str) -> None:
    answer = running.http.post(SEND, json=example_4(trigger_at), headers=running.credentials.headers)
    assert_error(answer, 400, starts_with="Invalid trigger_at format")


@pytest.mark.parametrize("ago", [timedelta(days=700), timedelta(seconds=5)], ids=["page-date", "seconds"])
def test_a_past_trigger_at_is_a_400(running: RunningStack, ago: timedelta) -> None:
    trigger_at = "2024-12-15T10:00:00Z" if ago.days else instant(datetime.now(UTC) - ago)
    answer = running.http.post(SEND, json=example_4(trigger_at), headers=running.credentials.headers)
    assert_error(answer, 400, "trigger_at must be a future date")


def test_a_trigger_at_more_than_a_year_ahead_is_a_400(running: RunningStack) -> None:
    trigger_at = instant(datetime.now(UTC) + timedelta(days=367))
    answer = running.http.post(SEND, json=example_4(trigger_at), headers=running.credentials.headers)
    assert_error(answer, 400, "trigger_at is too far ahead: schedule at most 366 days in advance")


def test_trigger_at_must_be_a_string_and_is_not_a_sendrealm_field(running: RunningStack) -> None:
    answer = running.http.post(SEND, json=example_4(20301215), headers=running.credentials.headers)  # type: ignore[arg-type]
    assert_error(answer, 400, starts_with="trigger_at must be a string")
    answer = running.http.post(
        PUBLISH,
        json={"event": "order.completed", "trigger_at": "2030-12-15T10:00:00Z"},
        headers=bearer(running.credentials),
    )
    assert_error(answer, 400, starts_with="Unknown field 'trigger_at'")


# Event names


BAD_NAMES = [
    ("UserSignup", "Invalid event name 'UserSignup': use lowercase dot-separated segments"),
    ("purchase-completed", "Invalid event name 'purchase-completed': use lowercase dot-separated segments"),
    ("order..completed", "Invalid event name 'order..completed'"),
    ("1st_event", "Invalid event name '1st_event'"),
    ("a" * 129, "Event name is too long (129 characters): at most 128"),
    ("herald.contact.created", "Event name 'herald.contact.created' is in the reserved namespace 'herald.'"),
    ("herald.mail.send", "Event name 'herald.mail.send' is in the reserved namespace 'herald.'"),
]


@pytest.mark.parametrize(("name", "message_start"), BAD_NAMES, ids=[name[:24] for name, _ in BAD_NAMES])
def test_bad_event_names_are_a_400_naming_the_rule(
    running: RunningStack, name: str, message_start: str
) -> None:
    answer = running.http.post(SEND, json={"event_name": name}, headers=running.credentials.headers)
    assert_error(answer, 400, starts_with=message_start)
    answer = running.http.post(PUBLISH, json={"event": name}, headers=bearer(running.credentials))
    assert_error(answer, 400, starts_with=message_start)


def test_an_empty_event_name_is_required(running: RunningStack) -> None:
    answer = running.http.post(SEND, json={"event_name": ""}, headers=running.credentials.headers)
    assert_error(answer, 400, "Event name is required")
    answer = running.http.post(PUBLISH, json={"event": ""}, headers=bearer(running.credentials))
    assert_error(answer, 400, starts_with="Event name is required")
    answer = running.http.post(PUBLISH, json={"email": "x@example.com"}, headers=bearer(running.credentials))
    assert_error(answer, 400, starts_with="Event name is required")


@pytest.mark.parametrize(
    "name", ["billing.payment_failed", "user_signup", "order.completed", "a" * 128, "x.1_2"]
)
def test_good_event_names_are_accepted(running: RunningStack, name: str) -> None:
    assert_queued(running.http.post(SEND, json={"event_name": name}, headers=running.credentials.headers))
    answer = running.http.post(PUBLISH, json={"event": name}, headers=bearer(running.credentials))
    assert answer.status_code == 202, answer.text
    assert answer.json()["event"] == name


# Sendrealm and idempotency


def test_the_sendrealm_example_and_its_replay(running: RunningStack) -> None:
    headers = bearer(running.credentials)
    first = running.http.post(PUBLISH, json=SENDREALM_EXAMPLE, headers=headers)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    body = first.json()
    assert set(body) == {
        "id",
        "event",
        "contact_id",
        "trigger_id",
        "status",
        "occurred_at",
        "accepted_at",
        "idempotent_replayed",
    }, body
    assert_uuid(body["id"])
    assert_uuid(body["trigger_id"])
    assert_uuid(body["contact_id"])
    assert body["event"] == "order.completed"
    assert body["status"] == "queued"
    assert body["occurred_at"] == "2026-06-08T14:15:00.000Z"
    assert ISO_MS.match(body["accepted_at"]), body
    assert body["idempotent_replayed"] is False
    assert get_trigger(running, body["trigger_id"])["id"] == body["trigger_id"]

    again = running.http.post(PUBLISH, json=SENDREALM_EXAMPLE, headers=headers)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {**body, "idempotent_replayed": True}

    changed = {**SENDREALM_EXAMPLE, "payload": {**SENDREALM_EXAMPLE["payload"], "amount": 5000}}  # type: ignore[dict-item]
    conflict = running.http.post(PUBLISH, json=changed, headers=headers)
    assert_error(conflict, 422, starts_with="idempotency_key was already used for a different request")
    assert "Idempotent-Replayed" not in conflict.headers
    # The key still answers its first event.
    third = running.http.post(PUBLISH, json=SENDREALM_EXAMPLE, headers=headers)
    assert third.status_code == 202
    assert third.json()["trigger_id"] == body["trigger_id"]


def test_sendrealm_occurred_at_is_checked(running: RunningStack) -> None:
    headers = bearer(running.credentials)
    answer = running.http.post(
        PUBLISH, json={"event": "order.completed", "occurred_at": "June 8"}, headers=headers
    )
    assert_error(answer, 400, starts_with="Invalid occurred_at format")
    future = instant(datetime.now(UTC) + timedelta(hours=1))
    answer = running.http.post(
        PUBLISH, json={"event": "order.completed", "occurred_at": future}, headers=headers
    )
    assert_error(answer, 400, "occurred_at must not be in the future")
    answer = running.http.post(PUBLISH, json={"event": "order.completed"}, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["occurred_at"] == answer.json()["accepted_at"]
    assert answer.json()["contact_id"] == ""


def test_the_idempotency_key_header_on_events_send(running: RunningStack) -> None:
    key = f"send-{uuid.uuid4()}"
    headers = {**running.credentials.headers, "Idempotency-Key": key}
    event = {**SENDMATOR_EXAMPLE_2, "user_info": {"contact_external_id": "idem_1"}}
    first = assert_queued(running.http.post(SEND, json=event, headers=headers))
    again = running.http.post(SEND, json=event, headers=headers)
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {**first, "job_id": ""}
    # The body's key is the same key.
    in_body = running.http.post(
        SEND, json={**event, "idempotency_key": key}, headers=running.credentials.headers
    )
    assert in_body.status_code == 201
    assert in_body.json()["trigger_id"] == first["trigger_id"]
    assert in_body.headers["Idempotent-Replayed"] == "true"
    assert_error(
        running.http.post(SEND, json={**event, "variables": {}}, headers=headers),
        422,
        starts_with="idempotency_key was already used for a different request",
    )
    assert_error(
        running.http.post(SEND, json={**event, "idempotency_key": "other"}, headers=headers),
        400,
        starts_with="The Idempotency-Key header and the body's idempotency_key differ",
    )
    fresh = assert_queued(running.http.post(SEND, json=event, headers=running.credentials.headers))
    assert fresh["trigger_id"] != first["trigger_id"]


def test_a_replayed_scheduled_event_answers_its_schedule(running: RunningStack) -> None:
    at = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    event = {**example_4(instant(at)), "idempotency_key": f"sched-{uuid.uuid4()}"}
    first = running.http.post(SEND, json=event, headers=running.credentials.headers)
    assert first.status_code == 201, first.text
    again = running.http.post(SEND, json=event, headers=running.credentials.headers)
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.json()["message"] == f"Event scheduled for {instant(at)}"


@pytest.mark.parametrize("route", [SEND, PUBLISH])
def test_concurrent_requests_with_one_key_make_one_trigger(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine, route: str
) -> None:
    key = f"race-{uuid.uuid4()}"
    if route == SEND:
        body: dict[str, Any] = {**SENDMATOR_EXAMPLE_1, "idempotency_key": key}
        headers = team.headers
        success = 201
    else:
        body = {**SENDREALM_EXAMPLE, "idempotency_key": key}
        headers = bearer(team)
        success = 202
    barrier = threading.Barrier(10)

    def post(_: int) -> httpx.Response:
        barrier.wait(timeout=10)
        return running.http.post(route, json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, range(10)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {success, 409}, [answer.text for answer in answers]
    accepted = [answer for answer in answers if answer.status_code == success]
    assert accepted
    assert len({answer.json()["trigger_id"] for answer in accepted}) == 1
    originals = [answer for answer in accepted if "Idempotent-Replayed" not in answer.headers]
    assert len(originals) == 1, statuses
    for answer in answers:
        if answer.status_code == 409:
            assert_error(answer, 409)
    rows = ingest_rows(database, team.team_id)
    assert rows["events"] == 1 and rows["triggers"] == 1 and rows["idempotency_keys"] == 1, rows


# Batches


def test_a_batch_answers_each_event_in_order(running: RunningStack, database: sqlalchemy.Engine) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    events: list[dict[str, Any]] = [
        SENDMATOR_EXAMPLE_1,
        {"event_name": "UserSignup"},
        SENDMATOR_EXAMPLE_2,
        example_4("2024-12-15T10:00:00Z"),
        {"event_name": "herald.contact.created"},
        example_4(instant(at)),
        {"event_name": "batch.bad_email", "user_info": {"email": "not-an-email"}},
        {"event_name": ""},
    ]
    answer = running.http.post(BATCH, json={"events": events}, headers=running.credentials.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"results", "accepted", "rejected"}
    results = body["results"]
    assert [result["index"] for result in results] == list(range(len(events)))
    assert body["accepted"] == 3 and body["rejected"] == 5

    for index in (0, 2):
        result = results[index]
        assert result["success"] is True, result
        assert_uuid(result["trigger_id"])
        assert int(result["job_id"]) > 0
        assert result["message"] == "Event queued successfully"
        assert result["idempotent_replayed"] is False
        assert "error" not in result and "scheduled_for" not in result
        assert get_trigger(running, result["trigger_id"])["id"] == result["trigger_id"]
    scheduled = results[5]
    assert scheduled["success"] is True
    assert scheduled["scheduled_for"] == instant(at)
    assert scheduled["message"] == f"Event scheduled for {instant(at)}"
    assert trigger_status(running, scheduled["trigger_id"]) == "scheduled"

    expected_errors = {
        1: ("INVALID_EVENT_NAME", "Invalid event name 'UserSignup'"),
        3: ("TRIGGER_AT_IN_PAST", "trigger_at must be a future date"),
        4: ("RESERVED_EVENT_NAME", "Event name 'herald.contact.created' is in the reserved namespace"),
        6: ("INVALID_EMAIL", "Invalid user_info.email 'not-an-email'"),
        7: ("EVENT_NAME_REQUIRED", "Event name is required"),
    }
    for index, (reason, message_start) in expected_errors.items():
        result = results[index]
        assert result["success"] is False, result
        assert result["trigger_id"] == "" and result["job_id"] == "" and result["message"] == ""
        error = result["error"]
        assert error["status_code"] == 400
        assert error["error"] == "Bad Request"
        assert error["reason"] == reason
        assert error["message"].startswith(message_start), error
    with database.connect() as connection:
        query = sqlalchemy.text(
            "SELECT count(*) FROM ingest.event_types WHERE team_id = :team AND name = 'batch.bad_email'"
        )
        assert connection.execute(query, {"team": running.credentials.team_id}).scalar_one() == 0


def test_one_key_twice_in_a_batch_is_one_trigger(running: RunningStack) -> None:
    key = f"batch-{uuid.uuid4()}"
    event = {**SENDMATOR_EXAMPLE_5, "idempotency_key": key}
    answer = running.http.post(BATCH, json={"events": [event, event]}, headers=running.credentials.headers)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert all(result["success"] for result in results), results
    assert results[0]["trigger_id"] == results[1]["trigger_id"]
    assert sorted(result["idempotent_replayed"] for result in results) == [False, True]


def test_the_idempotency_key_header_on_a_batch_is_not_silently_ignored(running: RunningStack) -> None:
    headers = {**running.credentials.headers, "Idempotency-Key": f"batch-header-{uuid.uuid4()}"}
    body = {"events": [SENDMATOR_EXAMPLE_3]}
    first = running.http.post(BATCH, json=body, headers=headers)
    if first.status_code == 400:
        assert_error(first, 400, contains="Idempotency-Key")
        return
    assert first.status_code == 200, first.text
    again = running.http.post(BATCH, json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["results"][0]["trigger_id"] == first.json()["results"][0]["trigger_id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": [{"event_name": "x"}] * 501}, "A batch holds at most 500 events; this one has 501"),
        ({"events": []}, "A batch needs at least one event in 'events'"),
        ({}, "A batch needs at least one event in 'events'"),
    ],
    ids=["501", "empty", "absent"],
)
def test_batch_size_limits(
    running: RunningStack,
    team: TeamCredentials,
    database: sqlalchemy.Engine,
    body: dict[str, Any],
    message: str,
) -> None:
    assert_error(running.http.post(BATCH, json=body, headers=team.headers), 400, message)
    assert ingest_rows(database, team.team_id) == NOTHING


def test_a_batch_with_an_unknown_field_is_refused_whole(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    events = [SENDMATOR_EXAMPLE_1, {"event_name": "x", "user_info": {"emial": "a@example.com"}}]
    answer = running.http.post(BATCH, json={"events": events}, headers=team.headers)
    assert_error(answer, 400, starts_with="Unknown field 'events[1].user_info.emial'")
    assert ingest_rows(database, team.team_id)["events"] == 0


# Teams


def test_another_teams_trigger_is_exactly_not_found(
    running: RunningStack, team: TeamCredentials, database: sqlalchemy.Engine
) -> None:
    headers = running.credentials.headers
    at = datetime.now(UTC) + timedelta(hours=1)
    sent = running.http.post(SEND, json=example_4(instant(at)), headers=headers)
    assert sent.status_code == 201, sent.text
    scheduled = sent.json()["trigger_id"]
    queued = assert_queued(running.http.post(SEND, json=SENDMATOR_EXAMPLE_1, headers=headers))["trigger_id"]
    missing = str(uuid.uuid4())

    for method in ("GET", "DELETE"):
        missing_answer = running.http.request(method, f"/api/v1/triggers/{missing}", headers=team.headers)
        expected = assert_error(missing_answer, 404, "Trigger not found")
        for trigger_id in (scheduled, queued):
            for other in (team.headers, bearer(team)):
                answer = running.http.request(method, f"/api/v1/triggers/{trigger_id}", headers=other)
                assert answer.status_code == 404
                assert answer.json() == expected
    assert trigger_row_status(database, scheduled) == "scheduled"
    assert trigger_status(running, scheduled) == "scheduled"
    # Idempotency keys are per team: the same key is a new event for another team.
    key = f"shared-{uuid.uuid4()}"
    mine = running.http.post(SEND, json=SENDMATOR_EXAMPLE_1, headers={**headers, "Idempotency-Key": key})
    theirs = running.http.post(
        SEND, json=SENDMATOR_EXAMPLE_2, headers={**team.headers, "Idempotency-Key": key}
    )
    assert mine.status_code == 201 and theirs.status_code == 201, theirs.text
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json()["trigger_id"] != theirs.json()["trigger_id"]
    # Cleanup: the owner can cancel it.
    assert running.http.delete(f"/api/v1/triggers/{scheduled}", headers=headers).status_code == 200


# --------------------------------------------------------------------------------------------
# Concurrent single sends: the gateway carries them to ingest together (gateway.coalesce) and
# ingest stores them in groups (services.ingest.groups); each is still answered on its own.
# --------------------------------------------------------------------------------------------


async def test_concurrent_single_sends_of_two_teams_are_each_answered_as_if_alone(
    running: RunningStack, database: sqlalchemy.Engine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    limited = await new_team(sessions, "limited")
    unlimited = await new_team(sessions, "unlimited")
    answer = running.http.patch(
        "/api/v1/project/policy", json={"rate_limit_per_hour": 20}, headers=limited.headers
    )
    assert answer.status_code == 200, answer.text
    barrier = threading.Barrier(45)

    def post(job: tuple[TeamCredentials, dict[str, Any], dict[str, str]]) -> httpx.Response:
        credentials, body, extra = job
        # A client per thread: 45 threads on one client's connection pool have seen a connection
        # closed under another thread's read.
        with httpx.Client(base_url=running.http.base_url, timeout=30) as http:
            barrier.wait(timeout=10)
            return http.post(SEND, json=body, headers={**credentials.headers, **extra})

    jobs: list[tuple[TeamCredentials, dict[str, Any], dict[str, str]]] = []
    jobs += [(limited, {"event_name": "order.completed", "event_data": {"n": n}}, {}) for n in range(25)]
    jobs += [(limited, {"event_name": "Order-Completed"}, {}) for _ in range(5)]
    jobs += [(unlimited, {"event_name": "page.viewed", "event_data": {"n": n}}, {}) for n in range(10)]
    # One key sent five times at once: one event, four replays (or a 409 while it is in flight).
    jobs += [(unlimited, {"event_name": "page.viewed"}, {"Idempotency-Key": "same-key"}) for _ in range(5)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(post, jobs))

    mine = answers[:25]
    accepted = [a for a in mine if a.status_code == 201]
    limited_out = [a for a in mine if a.status_code == 429]
    assert (len(accepted), len(limited_out)) == (20, 5), [a.status_code for a in mine]
    assert sorted(int(a.headers["RateLimit-Remaining"]) for a in accepted) == list(range(20))
    for answer in limited_out:
        assert_error(answer, 429, starts_with="Rate limit exceeded")
        assert int(answer.headers["Retry-After"]) > 0
    for answer in answers[25:30]:
        assert_error(answer, 400, contains="lowercase")
    for answer in answers[30:40]:
        assert_queued(answer)
        assert "RateLimit-Remaining" not in answer.headers
    keyed = answers[40:]
    assert {a.status_code for a in keyed} <= {201, 409}, [a.text for a in keyed]
    replays = [a for a in keyed if a.headers.get("Idempotent-Replayed") == "true"]
    originals = [a for a in keyed if a.status_code == 201 and a not in replays]
    assert len(originals) == 1
    assert {a.json()["trigger_id"] for a in originals + replays} == {originals[0].json()["trigger_id"]}
    assert ingest_rows(database, limited.team_id)["events"] == 20
    assert ingest_rows(database, unlimited.team_id)["events"] == 11
