"""Following triggers through the real processes: every status a trigger passes through, every
reason a workflow was filtered as GET /api/v1/triggers/{id}/workflow shows it, the trigger list
(filters, pages), a contact's timeline, and the latency and queue-lag figures under load."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import RunningStack
from tests.e2e.support import HttpSink, eventually

SENDMATOR_KEYS = {
    "id",
    "flow_type",
    "trigger_type",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "summary",
    "details_endpoint",
}


def create_workflow(
    running: RunningStack, key: str, event: str, steps: list[dict[str, Any]], **fields: Any
) -> None:
    workflow = {"key": key, "name": key, "trigger": {"event": event}, "steps": steps, **fields}
    answer = running.http.post("/api/v1/workflows", json=workflow, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text


def send(running: RunningStack, event: str, contact: str, **fields: Any) -> str:
    body = {"event_name": event, "user_info": {"contact_external_id": contact}, **fields}
    answer = running.http.post("/api/v1/events/send", json=body, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text
    trigger_id: str = answer.json()["trigger_id"]
    return trigger_id


def get(running: RunningStack, path: str, **params: Any) -> Any:
    answer = running.http.get(path, params=params, headers=running.credentials.headers)
    assert answer.status_code == 200, (path, params, answer.text)
    return answer.json()


def trigger_of(running: RunningStack, trigger_id: str) -> dict[str, Any]:
    found: dict[str, Any] = get(running, f"/api/v1/triggers/{trigger_id}")
    return found


def final(running: RunningStack, trigger_id: str) -> dict[str, Any]:
    return eventually(
        lambda: (
            found
            if (found := trigger_of(running, trigger_id))["status"] in ("completed", "failed", "cancelled")
            else None
        )
    )


def instant(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_scheduled_trigger_goes_through_every_status_in_order(running: RunningStack) -> None:
    create_workflow(
        running,
        "track-later",
        "track.flow",
        [
            {"id": "pause", "type": "delay", "duration": "PT2S"},
            {"id": "note", "type": "in_app", "title": "Hi", "body": "Later"},
        ],
    )
    fires_at = datetime.now(UTC) + timedelta(seconds=2)
    trigger_id = send(running, "track.flow", "flow-ada", trigger_at=instant(fires_at))

    def listed_as(status: str) -> list[str]:
        listed = get(running, "/api/v1/triggers", status=status, event_name="track.flow")
        return [item["id"] for item in listed["triggers"]]

    seen: list[dict[str, Any]] = []
    listed_while: dict[str, list[str]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        trigger = trigger_of(running, trigger_id)
        if not seen or trigger["status"] != seen[-1]["status"]:
            seen.append(trigger)
            listed_while[trigger["status"]] = listed_as(trigger["status"])
        if not seen[1:] and trigger_id not in listed_while["scheduled"]:
            # Until the tracker hears of it (~0.1 s), GET answers from ingest's record; the list
            # shows what the tracker holds.
            listed_while["scheduled"] = listed_as("scheduled")
        if trigger["status"] == "completed":
            break
        time.sleep(0.01)

    assert [t["status"] for t in seen] == ["scheduled", "queued", "processing", "completed"]
    scheduled, queued, processing, completed = seen
    for early in (scheduled, queued):
        assert "started_at" not in early and "completed_at" not in early, early
    assert "started_at" in processing and "completed_at" not in processing, processing
    assert processing["started_at"] == completed["started_at"]
    created, started, done = (moment(completed[key]) for key in ("created_at", "started_at", "completed_at"))
    assert created < fires_at.replace(microsecond=fires_at.microsecond // 1000 * 1000) <= started
    assert done - started >= timedelta(seconds=2), "the run waited on its delay, processing all along"
    assert completed["summary"] == {"total_contacts": 1, "sent": 1, "failed": 0, "filtered": 0}
    for status in ("scheduled", "queued", "processing", "completed"):
        assert trigger_id in listed_while[status], (status, listed_while)


def test_a_trigger_whose_every_run_failed_is_failed(running: RunningStack, http_sink: HttpSink) -> None:
    http_sink.answer("/refuse", 400)
    create_workflow(
        running,
        "track-refused",
        "track.refused",
        [{"id": "hook", "type": "webhook", "url": f"{http_sink.url}/refuse"}],
    )

    trigger_id = send(running, "track.refused", "refused-bob")

    failed = final(running, trigger_id)
    assert failed["status"] == "failed"
    assert failed["summary"] == {"total_contacts": 1, "sent": 0, "failed": 1, "filtered": 0}
    assert moment(failed["created_at"]) <= moment(failed["started_at"]) <= moment(failed["completed_at"])
    [run] = get(running, f"/api/v1/triggers/{trigger_id}/workflow")["workflows"]
    assert run["run_status"] == "failed"
    assert [(s["step_id"], s["status"]) for s in run["steps"]] == [("hook", "failed")]
    assert "400" in run["steps"][0]["detail"]


def test_a_cancelled_trigger_is_final_from_when_it_was_cancelled(running: RunningStack) -> None:
    headers = running.credentials.headers
    trigger_id = send(
        running, "track.flow", "flow-cy", trigger_at=instant(datetime.now(UTC) + timedelta(hours=1))
    )
    assert trigger_of(running, trigger_id)["status"] == "scheduled"

    answer = running.http.delete(f"/api/v1/triggers/{trigger_id}", headers=headers)
    assert answer.status_code == 200, answer.text

    cancelled = final(running, trigger_id)
    assert cancelled["status"] == "cancelled"
    assert "started_at" not in cancelled
    assert cancelled["completed_at"] == answer.json()["cancelled_at"]
    # The list shows what the tracker holds, once it has heard of the trigger (GET also asks ingest).
    [listed] = eventually(
        lambda: [
            t
            for t in get(running, "/api/v1/triggers", status="cancelled")["triggers"]
            if t["id"] == trigger_id
        ]
    )
    assert {key: listed[key] for key in cancelled} == cancelled


REASON_WORKFLOWS: list[tuple[str, dict[str, Any]]] = [
    ("why-cooldown", {"filters": {"cooldown": "PT1H"}}),
    (
        "why-condition",
        {"filters": {"condition": "event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro'"}},
    ),
    ("why-inactive", {"active": False}),
    ("why-segment", {"filters": {"segment": "why-pro"}}),
    ("why-tags", {"filters": {"tags_all": ["vip", "beta"]}}),
    ("why-topic", {"filters": {"topic": "why-news"}}),
]


def test_every_filter_reason_reads_in_the_triggers_workflow_detail(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    segment = {"key": "why-pro", "name": "Pro", "condition": "contact.custom_fields.plan == 'Pro'"}
    assert http.post("/api/v1/segments", json=segment, headers=headers).status_code == 201
    for key, fields in REASON_WORKFLOWS:
        note = {"type": "in_app", "title": key, "body": "x"}
        create_workflow(running, key, "track.why", [note], **fields)
    contact = {"email": "why@example.com", "tags": ["vip"], "custom_fields": {"plan": "Free"}}
    assert http.put("/api/v1/contacts/why-dee", json=contact, headers=headers).status_code == 200

    first = send(running, "track.why", "why-dee", event_data={"amount": 7})
    assert final(running, first)["summary"]["filtered"] == 5
    second = send(running, "track.why", "why-dee", event_data={"amount": 7})
    detail = eventually(
        lambda: (
            found
            if (found := get(running, f"/api/v1/triggers/{second}/workflow"))["trigger"]["status"]
            == "completed"
            else None
        )
    )

    reasons = {w["workflow_key"]: (w["outcome"], w["reason"]) for w in detail["workflows"]}
    cooldown_outcome, cooldown = reasons.pop("why-cooldown")
    assert reasons == {
        "why-condition": (
            "filtered",
            "condition was false: event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro' "
            '[event.data.amount = 7, contact.custom_fields.plan = "Free"]',
        ),
        "why-inactive": ("filtered", "workflow is inactive"),
        "why-segment": ("filtered", "contact is not in segment 'why-pro'"),
        "why-tags": ("filtered", "contact lacks the tags beta (tags_all)"),
        "why-topic": ("filtered", "contact is not subscribed to topic 'why-news'"),
    }
    assert cooldown_outcome == "filtered"
    prefix = "cooldown: ran for this contact within PT1H; it may run again after "
    assert cooldown.startswith(prefix), cooldown
    first_run = moment(get(running, f"/api/v1/triggers/{first}/workflow")["workflows"][0]["run_started_at"])
    until = datetime.fromisoformat(cooldown.removeprefix(prefix))
    assert abs(until - (first_run + timedelta(hours=1))) < timedelta(seconds=5), (until, first_run)
    assert detail["trigger"]["summary"] == {"total_contacts": 0, "sent": 0, "failed": 0, "filtered": 6}
    first_outcomes = get(running, f"/api/v1/triggers/{first}/workflow")["workflows"]
    assert next((w["workflow_key"], w["outcome"]) for w in first_outcomes) == ("why-cooldown", "matched")


def all_pages(running: RunningStack, path: str, key: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], ""
    while True:
        page = get(running, path, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page[key])
        cursor = page["next_cursor"]
        if not cursor:
            return pages


def test_triggers_are_listed_with_filters_in_pages_newest_first(running: RunningStack) -> None:
    for contact in ("list-ada", "list-bob"):  # created first: their herald.contact.created are older
        answer = running.http.put(f"/api/v1/contacts/{contact}", json={}, headers=running.credentials.headers)
        assert answer.status_code == 200, answer.text
    since = instant(datetime.now(UTC) + timedelta(milliseconds=2))
    time.sleep(0.01)
    sent = [send(running, "track.list_a", "list-ada") for _ in range(5)]
    sent += [send(running, "track.list_b", "list-bob") for _ in range(2)]
    for trigger_id in sent:
        final(running, trigger_id)
    newest_first = sent[::-1]

    pages = all_pages(running, "/api/v1/triggers", "triggers", created_after=since, limit=3)

    assert [[item["id"] for item in page] for page in pages] == [
        newest_first[:3],
        newest_first[3:6],
        newest_first[6:],
    ]
    item = pages[0][0]
    assert set(item) == SENDMATOR_KEYS | {"event_name", "contact_id"}
    assert (item["event_name"], item["status"], item["flow_type"]) == (
        "track.list_b",
        "completed",
        "workflow",
    )
    assert item["summary"] == {"total_contacts": 0, "sent": 0, "failed": 0, "filtered": 0}
    assert item["details_endpoint"] == f"/triggers/{item['id']}/workflow"
    bob = get(running, "/api/v1/contacts/list-bob")["id"]
    assert item["contact_id"] == bob

    def ids(**params: Any) -> list[str]:
        query = {"created_after": since, **params}
        return [t["id"] for t in get(running, "/api/v1/triggers", **query)["triggers"]]

    assert ids(event_name="track.list_b") == newest_first[:2]
    assert ids(contact="list-bob") == newest_first[:2]
    assert ids(contact_id=bob) == newest_first[:2]
    assert ids(contact="list-ada", limit=2) == newest_first[2:4]
    assert ids(status="completed") == newest_first
    assert ids(status="processing,failed") == []
    third = trigger_of(running, newest_first[2])["created_at"]
    assert ids(created_before=third) == newest_first[3:]
    assert ids(created_before=third, created_after=trigger_of(running, newest_first[4])["created_at"]) == [
        newest_first[3],
        newest_first[4],
    ]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"status": "done"}, 400, "status must be one or more of scheduled, queued, processing"),
        ({"event_name": "Track List"}, 400, "event_name: Invalid event name 'Track List'"),
        ({"contact_id": "ada"}, 400, "contact_id must be Herald's id of a contact (a UUID)"),
        ({"created_after": "yesterday"}, 400, "created_after must be an ISO 8601 date-time"),
        (
            {"created_before": "2024-01-01", "created_after": "2024-02-01"},
            400,
            "created_before must be later",
        ),
        ({"limit": "201"}, 400, "limit must be 1 to 200 (default 50); got 201"),
        ({"limit": "many"}, 400, "Query parameter 'limit' must be an integer"),
        ({"cursor": "not-a-cursor"}, 400, "cursor is not one this API gave"),
        ({"contact": "x", "contact_id": "00000000-0000-0000-0000-000000000000"}, 400, "not both"),
        ({"colour": "blue"}, 400, "Unknown query parameter 'colour'"),
        (
            {"contact": "nobody-at-all"},
            404,
            "Contact not found: no contact has the external id 'nobody-at-all'",
        ),
    ],
)
def test_a_bad_list_parameter_is_refused_naming_it(
    running: RunningStack, params: dict[str, str], status: int, words: str
) -> None:
    answer = running.http.get("/api/v1/triggers", params=params, headers=running.credentials.headers)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"]


def test_a_contacts_timeline_shows_its_events_runs_and_deliveries_newest_first(running: RunningStack) -> None:
    create_workflow(
        running, "track-tell", "track.told", [{"id": "say", "type": "in_app", "title": "Hi", "body": "x"}]
    )
    answer = running.http.put("/api/v1/contacts/told-eve", json={}, headers=running.credentials.headers)
    assert answer.status_code == 200, answer.text
    created = eventually(lambda: get(running, "/api/v1/triggers", contact="told-eve")["triggers"])
    first = send(running, "track.told", "told-eve")
    final(running, first)
    second = send(running, "track.told", "told-eve", event_data={"n": 2})
    final(running, second)
    send(running, "track.told", "told-someone-else")

    pages = all_pages(running, "/api/v1/contacts/told-eve/timeline", "entries", limit=3)

    assert [len(page) for page in pages] == [3, 3, 3]
    entries = [entry for page in pages for entry in page]
    assert [(e["kind"], e["trigger_id"]) for e in entries] == [
        (kind, trigger_id)
        for trigger_id in (second, first)
        for kind in ("run_finished", "delivery", "run_started", "event")
    ] + [("event", created[0]["id"])]
    assert entries[-1]["event_name"] == "herald.contact.created"  # system events are the contact's too
    times = [moment(e["at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    finished, delivered, started, event = entries[:4]
    assert (event["event_name"], event["outcome"], event["run_id"]) == ("track.told", "completed", "")
    assert started["run_id"] == delivered["run_id"] == finished["run_id"] != ""
    assert (started["workflow_key"], started["outcome"]) == ("track-tell", "started")
    assert (delivered["step_id"], delivered["channel"], delivered["outcome"]) == ("say", "in_app", "sent")
    assert finished["outcome"] == "completed"
    whole = get(running, "/api/v1/contacts/told-eve/timeline")
    assert whole["contact_id"] == get(running, "/api/v1/contacts/told-eve")["id"]
    assert (len(whole["entries"]), whole["next_cursor"]) == (9, "")

    headers = running.credentials.headers
    unknown = running.http.get("/api/v1/contacts/told-nobody/timeline", headers=headers)
    assert (unknown.status_code, unknown.json()["message"]) == (404, "Contact not found")
    bad = running.http.get("/api/v1/contacts/told-eve/timeline?limit=0&cursor=x", headers=headers)
    assert (bad.status_code, bad.json()["message"]) == (
        400,
        "cursor is not one this API gave: pass the next_cursor of the previous page",
    )
    feed = running.http.get("/api/v1/contacts/told-eve/feed", headers=headers)
    assert feed.status_code == 200 and len(feed.json()["items"]) == 2  # the feed route is still the feed


def test_stats_move_under_load_with_consistent_percentiles_and_queue_lag(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    create_workflow(
        running, "track-load", "track.load", [{"id": "say", "type": "in_app", "title": "Hi", "body": "x"}]
    )
    before = get(running, "/api/v1/stats")
    assert "track.load" not in [e["event_name"] for e in before["events"]]

    for batch in range(2):
        events = [
            {"event_name": "track.load", "user_info": {"contact_external_id": f"load-{batch}-{i}"}}
            for i in range(100)
        ]
        answer = http.post("/api/v1/events/batch", json={"events": events}, headers=headers)
        assert answer.status_code == 200 and answer.json()["accepted"] == 100, answer.text

    def settled() -> dict[str, Any] | None:
        stats = get(running, "/api/v1/stats", window="PT10M")
        [load] = [e for e in stats["events"] if e["event_name"] == "track.load"] or [None]
        return stats if load and load["first_step_done"] == 200 else None

    stats = eventually(settled, timeout=60)
    assert stats["window"] == "PT10M"
    assert moment(stats["until"]) - moment(stats["since"]) == timedelta(minutes=10)
    [load] = [e for e in stats["events"] if e["event_name"] == "track.load"]
    assert (load["count"], load["matched"], load["first_step_done"]) == (200, 200, 200)
    matched, first_step = load["accepted_to_matched"], load["accepted_to_first_step"]
    for figures in (matched, first_step):
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"], figures
        assert 0 < figures["avg_ms"] <= figures["max_ms"], figures
    for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "avg_ms"):
        assert matched[name] <= first_step[name], (name, matched, first_step)  # each trigger's order

    default_page = get(running, "/api/v1/triggers", event_name="track.load")
    assert (len(default_page["triggers"]), bool(default_page["next_cursor"])) == (50, True)

    queues = {(q["stream"], q["consumer"]): q for q in stats["queues"]}
    assert {"EVENTS", "RUNS", "STEPS", "TRACKING"} <= {stream for stream, _ in queues}
    assert ("TRACKING", "tracker") in queues
    for queue in queues.values():
        assert set(queue) == {
            "stream",
            "consumer",
            "pending",
            "ack_pending",
            "redelivered",
            "oldest_pending_age_seconds",
        }
        assert min(queue["pending"], queue["ack_pending"], queue["redelivered"]) >= 0, queue
        assert queue["oldest_pending_age_seconds"] >= 0, queue

    def tracker_caught_up() -> dict[str, Any] | None:
        [lag] = [
            q
            for q in get(running, "/api/v1/stats")["queues"]
            if (q["stream"], q["consumer"]) == ("TRACKING", "tracker")
        ]
        return lag if lag["pending"] == lag["ack_pending"] == 0 else None

    assert eventually(tracker_caught_up)["oldest_pending_age_seconds"] == 0


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ("P8D", "window must be longer than zero and at most P7D; got 'P8D'"),
        ("PT0S", "window must be longer than zero"),
        ("1h", "window: '1h' is not an ISO 8601 duration such as PT24H or P7D"),
        ("P1M", "window: 'P1M': years and months have no fixed length"),
    ],
)
def test_a_bad_stats_window_is_refused(running: RunningStack, window: str, words: str) -> None:
    answer = running.http.get("/api/v1/stats", params={"window": window}, headers=running.credentials.headers)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["message"]
    assert running.http.get("/api/v1/stats").status_code == 401
