"""The public API the dashboard reads, through the real processes: the stats timeline, the
contact search, dead letters filtered, paged and inspected, and workflows paused and activated;
bad input answers 400 naming the parameter, another project's things 404."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import TeamCredentials
from tests.e2e.conftest import RunningStack
from tests.e2e.support import HttpSink, eventually
from tests.e2e.test_ingest_api import new_team

STATUS_KEYS = {"scheduled", "queued", "processing", "completed", "failed", "cancelled"}


@pytest.fixture
async def other_team(sessions: async_sessionmaker[AsyncSession]) -> TeamCredentials:
    return await new_team(sessions, "other")


def ok(running: RunningStack, method: str, path: str, team: TeamCredentials, **kwargs: Any) -> Any:
    answer = running.http.request(method, path, headers=team.headers, **kwargs)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def refused(running: RunningStack, path: str, team: TeamCredentials, expect: int = 400, **params: Any) -> str:
    answer = running.http.get(path, params=params, headers=team.headers)
    assert answer.status_code == expect, answer.text
    message: str = answer.json()["message"]
    return message


def create_workflow(
    running: RunningStack, team: TeamCredentials, key: str, event: str, step: dict[str, Any]
) -> None:
    workflow = {"key": key, "name": key, "trigger": {"event": event}, "steps": [step]}
    ok(running, "POST", "/api/v1/workflows", team, json=workflow)


def send(running: RunningStack, team: TeamCredentials, event: str, external_id: str) -> str:
    body = {
        "event_name": event,
        "user_info": {"contact_external_id": external_id, "email": f"{external_id}@Example.com"},
    }
    trigger_id: str = ok(running, "POST", "/api/v1/events/send", team, json=body)["trigger_id"]
    return trigger_id


def finished(running: RunningStack, team: TeamCredentials, trigger_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        trigger: dict[str, Any] = ok(running, "GET", f"/api/v1/triggers/{trigger_id}", team)
        return trigger if trigger["status"] in ("completed", "failed") else None

    return eventually(probe, timeout=30)


def test_the_timeline_buckets_a_projects_activity_over_the_window(
    running: RunningStack, team: TeamCredentials
) -> None:
    create_workflow(
        running, team, "dash-welcome", "dash.signup", {"type": "email", "subject": "Hi", "body": "Hello"}
    )
    for who in ("tl-ada", "tl-bob"):
        finished(running, team, send(running, team, "dash.signup", who))

    # Each event accepted, the herald.contact.created of each new contact too.
    triggers = ok(running, "GET", "/api/v1/triggers", team)["triggers"]
    assert len(triggers) == 4 and all(t["status"] == "completed" for t in triggers)

    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = ok(running, "GET", "/api/v1/stats/timeline", team)
        events = sum(bucket["events"] for bucket in body["buckets"])
        return body if events == len(triggers) and body["deliveries_by_channel"] else None

    timeline = eventually(settled)

    assert set(timeline) == {
        "window",
        "step",
        "since",
        "until",
        "buckets",
        "triggers_by_status",
        "deliveries_by_channel",
        "dead_letters",
    }
    assert (timeline["window"], timeline["step"], len(timeline["buckets"])) == ("PT1H", "PT1M", 60)
    assert timeline["since"] == timeline["buckets"][0]["at"]
    assert timeline["triggers_by_status"] == {**dict.fromkeys(STATUS_KEYS, 0), "completed": 4}
    assert timeline["deliveries_by_channel"] == [{"channel": "email", "outcome": "sent", "count": 2}]
    assert timeline["dead_letters"] == 0
    busy = [bucket for bucket in timeline["buckets"] if bucket["events"]]
    assert all(set(bucket["triggers"]) == STATUS_KEYS for bucket in timeline["buckets"])
    assert all(bucket["p50_ms"] >= 0 and bucket["p99_ms"] >= bucket["p50_ms"] for bucket in busy)
    empty = [bucket for bucket in timeline["buckets"] if not bucket["events"]]
    assert empty and all("p50_ms" not in bucket for bucket in empty)
    # The tracker samples the bus's lag from its start: the latest buckets have a figure.
    sampled = [bucket for bucket in timeline["buckets"] if "queue_pending" in bucket]
    assert sampled and all(bucket["queue_oldest_age_seconds"] >= 0 for bucket in sampled)

    coarse = ok(running, "GET", "/api/v1/stats/timeline", team, params={"window": "P1D", "step": "PT1H"})
    assert (coarse["step"], len(coarse["buckets"]), coarse["triggers_by_status"]["completed"]) == (
        "PT1H",
        24,
        4,
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"window": "an hour"}, "window: 'an hour' is not an ISO 8601 duration"),
        ({"window": "P8D"}, "at most P7D"),
        ({"step": "PT5S"}, "at least PT10S"),
        ({"step": "PT7M"}, "step must divide the window (PT1H) evenly"),
        ({"window": "PT6H", "step": "PT10S"}, "makes 2160 buckets of the window; at most 500"),
    ],
)
def test_a_bad_timeline_request_is_400_naming_the_parameter(
    running: RunningStack, params: dict[str, str], expected: str
) -> None:
    assert expected in refused(running, "/api/v1/stats/timeline", running.credentials, 400, **params)


def test_contacts_are_searched_by_external_id_or_email_prefix_a_page_at_a_time(
    running: RunningStack, team: TeamCredentials, other_team: TeamCredentials
) -> None:
    for external_id, email in [("cs-ada", "ada.l@example.com"), ("cs-bob", "Bob@Example.com"), ("zz-cy", "")]:
        ok(running, "PUT", f"/api/v1/contacts/{external_id}", team, json={"email": email} if email else {})
    ok(running, "PUT", "/api/v1/contacts/cs-theirs", other_team, json={"email": "ada.t@example.com"})

    def ids(**params: Any) -> list[str]:
        return [
            c["external_id"] for c in ok(running, "GET", "/api/v1/contacts", team, params=params)["contacts"]
        ]

    assert ids() == ["zz-cy", "cs-bob", "cs-ada"]
    assert ids(q="cs-") == ["cs-bob", "cs-ada"]
    assert ids(q="BOB@EX") == ["cs-bob"]
    assert ids(q="ada") == ["cs-ada"]
    assert ids(q="nobody") == []
    first = ok(running, "GET", "/api/v1/contacts", team, params={"limit": 2})
    second = ok(running, "GET", "/api/v1/contacts", team, params={"limit": 2, "cursor": first["next_cursor"]})
    assert [c["external_id"] for c in first["contacts"] + second["contacts"]] == ["zz-cy", "cs-bob", "cs-ada"]
    assert second["next_cursor"] == ""
    one = ok(running, "GET", "/api/v1/contacts/cs-bob", team)
    assert [c for c in first["contacts"] if c["external_id"] == "cs-bob"] == [one]

    assert "limit must be 1 to 200" in refused(running, "/api/v1/contacts", team, limit=201)
    assert "cursor is not one this API gave" in refused(running, "/api/v1/contacts", team, cursor="nope")
    assert "q must be at most 320 characters" in refused(running, "/api/v1/contacts", team, q="x" * 321)


def test_dead_letters_are_filtered_paged_counted_and_inspected(
    running: RunningStack, team: TeamCredentials, other_team: TeamCredentials, http_sink: HttpSink
) -> None:
    http_sink.answer("/dash-down", 500, 500, 500)
    hook = {"type": "webhook", "url": f"{http_sink.url}/dash-down", "max_attempts": 1}
    create_workflow(running, team, "dash-hook", "dash.hook", hook)
    for who in ("dl-ada", "dl-bob", "dl-cy"):
        finished(running, team, send(running, team, "dash.hook", who))
    listed = eventually(
        lambda: body if len((body := ok(running, "GET", "/api/v1/dlq", team))["dead_letters"]) == 3 else None
    )
    assert (listed["total"], listed["next_cursor"]) == (3, "")
    newest = listed["dead_letters"][0]
    ok(running, "POST", f"/api/v1/dlq/{newest['id']}/replay", team)  # the sink answers 200 now

    first = ok(running, "GET", "/api/v1/dlq", team, params={"limit": 2})
    second = ok(running, "GET", "/api/v1/dlq", team, params={"limit": 2, "cursor": first["next_cursor"]})
    dead = ok(running, "GET", "/api/v1/dlq", team, params={"status": "dead"})
    replayed = ok(running, "GET", "/api/v1/dlq", team, params={"status": "replayed", "channel": "webhook"})
    email = ok(running, "GET", "/api/v1/dlq", team, params={"channel": "email"})
    assert [letter["id"] for letter in first["dead_letters"] + second["dead_letters"]] == [
        letter["id"] for letter in listed["dead_letters"]
    ]
    assert second["next_cursor"] == ""
    assert [letter["id"] for letter in replayed["dead_letters"]] == [newest["id"]]
    assert len(dead["dead_letters"]) == 2 and dead["total"] == 2
    assert (email["dead_letters"], email["total"]) == ([], 2)

    inspected = ok(running, "GET", f"/api/v1/dlq/{newest['id']}", team)
    assert (inspected["id"], inspected["status"], inspected["replays"]) == (newest["id"], "replayed", 1)
    assert inspected["channel"] == "webhook" and "HTTP 500" in inspected["error"]
    assert "replayed_at" in inspected
    for unknown in (newest["id"], "00000000-0000-0000-0000-000000000000", "not-an-id"):
        assert refused(running, f"/api/v1/dlq/{unknown}", other_team, 404) == "Dead letter not found"
    assert "status must be dead or replayed" in refused(running, "/api/v1/dlq", team, 400, status="lost")
    assert "channel must be one of" in refused(running, "/api/v1/dlq", team, channel="fax")
    assert "cursor is not one this API gave" in refused(running, "/api/v1/dlq", team, cursor="nope")


def test_a_workflow_is_paused_and_activated_as_a_new_version_each(
    running: RunningStack, team: TeamCredentials
) -> None:
    create_workflow(
        running, team, "dash-toggle", "dash.toggle", {"type": "email", "subject": "Hi", "body": "Hi"}
    )

    paused = ok(running, "POST", "/api/v1/workflows/dash-toggle/pause", team)
    again = ok(running, "POST", "/api/v1/workflows/dash-toggle/pause", team)
    got = ok(running, "GET", "/api/v1/workflows/dash-toggle", team)
    listed = ok(running, "GET", "/api/v1/workflows", team)["workflows"]

    assert (paused["version"], paused["active"]) == (2, False)
    assert again == paused == got
    assert [(w["key"], w["version"], w["active"]) for w in listed] == [("dash-toggle", 2, False)]
    trigger = finished_or_none(running, team, send(running, team, "dash.toggle", "tg-ada"))
    assert trigger["summary"]["filtered"] == 1

    active = ok(running, "POST", "/api/v1/workflows/dash-toggle/activate", team)
    assert (active["version"], active["active"], active["steps"]) == (3, True, got["steps"])
    versions = ok(running, "GET", "/api/v1/workflows/dash-toggle/versions", team)["versions"]
    assert [(v["version"], v["active"]) for v in versions] == [(3, True), (2, False), (1, True)]
    for action in ("pause", "activate"):
        answer = running.http.post(f"/api/v1/workflows/nope/{action}", headers=team.headers)
        assert answer.status_code == 404, answer.text
        assert answer.json()["message"] == "Workflow 'nope' not found"


def finished_or_none(running: RunningStack, team: TeamCredentials, trigger_id: str) -> dict[str, Any]:
    """The trigger once the matcher decided it (a trigger no workflow ran completes at once)."""
    return finished(running, team, trigger_id)
