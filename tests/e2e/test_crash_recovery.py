"""A service killed with SIGKILL mid-stream loses nothing and sends nothing twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack
from tests.e2e.support import WELCOME_WORKFLOW, eventually

EVENTS = 40


def send(running: RunningStack, index: int) -> str:
    event = {
        "event_name": "user_signup",
        "user_info": {
            "contact_external_id": f"crash_{index}",
            "email": f"crash.{index}@example.com",
            "name": f"N{index}",
        },
        "variables": {"user_name": f"user {index}"},
    }
    answer = running.http.post("/api/v1/events/send", json=event, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text
    trigger_id: str = answer.json()["trigger_id"]
    return trigger_id


def kill_and_restart_under_load(running: RunningStack, service: str) -> list[str]:
    """Send EVENTS events from four threads; SIGKILL `service` a third of the way in, restart it later."""
    sent_enough = threading.Event()
    trigger_ids: list[str] = []
    lock = threading.Lock()

    def sender(index: int) -> None:
        trigger_id = send(running, index)
        with lock:
            trigger_ids.append(trigger_id)
            if len(trigger_ids) == EVENTS // 3:
                sent_enough.set()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(sender, index) for index in range(EVENTS)]
        assert sent_enough.wait(60)
        running.stack.kill(service)
        for future in futures:
            future.result()
    running.stack.restart(service)
    return trigger_ids


def assert_each_trigger_completed_with_one_email(
    running: RunningStack, trigger_ids: list[str], *, same_message_id_allowed: bool = False
) -> None:
    """Every trigger completed with one delivery. With `same_message_id_allowed`, an email may
    arrive twice only as the same message (same Message-ID), which receivers deduplicate: the one
    window SMTP cannot close is a crash after the server accepted the mail and before the
    executor recorded it."""
    headers = running.credentials.headers

    def all_completed() -> bool:
        statuses = []
        for trigger_id in trigger_ids:
            answer = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers)
            if answer.status_code == 503:  # the gateway is reconnecting to the restarted service
                return False
            assert answer.status_code == 200, answer.text
            statuses.append(answer.json()["status"])
        return all(status == "completed" for status in statuses)

    eventually(all_completed, timeout=90, interval=0.5)
    for trigger_id in trigger_ids:
        trigger = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json()
        assert trigger["summary"] == {"total_contacts": 1, "sent": 1, "failed": 0, "filtered": 0}
    for trigger_id in trigger_ids:
        mails = running.sink.messages_with("X-Herald-Trigger", trigger_id)
        message_ids = Counter(mail.message["Message-ID"] for mail in mails)
        assert len(message_ids) == 1, (trigger_id, message_ids)
        if not same_message_id_allowed:
            assert len(mails) == 1, (trigger_id, len(mails))


def test_matcher_killed_with_sigkill_while_events_are_in_flight(running: RunningStack) -> None:
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=running.credentials.headers)
    trigger_ids = kill_and_restart_under_load(running, "matcher")
    assert len(set(trigger_ids)) == EVENTS
    assert_each_trigger_completed_with_one_email(running, trigger_ids)


def test_executor_killed_with_sigkill_while_events_are_in_flight(running: RunningStack) -> None:
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=running.credentials.headers)
    trigger_ids = kill_and_restart_under_load(running, "executor")
    assert_each_trigger_completed_with_one_email(running, trigger_ids, same_message_id_allowed=True)


def test_tracker_killed_with_sigkill_keeps_exact_counts(running: RunningStack) -> None:
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=running.credentials.headers)
    trigger_ids = kill_and_restart_under_load(running, "tracker")
    assert_each_trigger_completed_with_one_email(running, trigger_ids)


def test_a_scheduled_trigger_fires_once_after_ingest_is_killed_before_its_time(running: RunningStack) -> None:
    """Timers live in PostgreSQL: the event fires when ingest is back, exactly once."""
    headers = running.credentials.headers
    running.http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers)
    at = datetime.now(UTC) + timedelta(seconds=3)
    event = {
        "event_name": "user_signup",
        "user_info": {"contact_external_id": "timer_1", "email": "timer.1@example.com", "name": "Timer"},
        "trigger_at": at.isoformat(),
    }
    answer = running.http.post("/api/v1/events/send", json=event, headers=headers)
    assert answer.status_code == 201, answer.text
    trigger_id = answer.json()["trigger_id"]

    running.stack.kill("ingest")
    try:
        time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 1)  # its time passes, ingest down
        # Due, so queued (no longer scheduled), but not fired: nothing sent.
        status = running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json()["status"]
        assert status == "queued"
        assert running.sink.messages_with("X-Herald-Trigger", trigger_id) == []
    finally:  # the next tests need ingest, whatever happened here
        running.stack.restart("ingest")
        running.stack.wait_ready(["ingest"])

    eventually(
        lambda: (
            running.http.get(f"/api/v1/triggers/{trigger_id}", headers=headers).json()["status"]
            == "completed"
            or None
        ),
        timeout=30,
    )
    assert len(running.sink.messages_with("X-Herald-Trigger", trigger_id)) == 1


def test_executor_killed_during_500_runs_with_a_delay_finishes_every_run_without_sending_twice(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    headers, http = running.credentials.headers, running.http
    runs = 500
    workflow = {
        "key": "crash-flow",
        "name": "Crash flow",
        "trigger": {"event": "crash.flow"},
        "steps": [
            {"id": "first", "type": "email", "subject": "First {{contact.external_id}}", "body": "1"},
            {"id": "pause", "type": "delay", "duration": "PT1S"},
            {"id": "second", "type": "email", "subject": "Second {{contact.external_id}}", "body": "2"},
        ],
    }
    assert http.post("/api/v1/workflows", json=workflow, headers=headers).status_code == 201
    events = [
        {
            "event_name": "crash.flow",
            "user_info": {"contact_external_id": f"flow_{index}", "email": f"flow.{index}@example.com"},
        }
        for index in range(runs)
    ]
    for start in range(0, runs, 100):
        answer = http.post(
            "/api/v1/events/batch", json={"events": events[start : start + 100]}, headers=headers
        )
        assert answer.json()["accepted"] == 100, answer.text
        if start == 100:
            running.stack.kill("executor")
    running.stack.restart("executor")

    def finished() -> list[tuple[str, str]] | None:
        with psycopg.connect(infrastructure.database_url) as connection:
            rows = connection.execute(
                "SELECT status, count(*) FROM executor.runs "
                "WHERE team_id = %s AND workflow_key = 'crash-flow' GROUP BY status",
                (running.credentials.team_id,),
            ).fetchall()
        counts = {status: count for status, count in rows}
        return rows if counts.get("completed") == runs else None

    eventually(finished, timeout=240, interval=1.0)
    for index in range(runs):
        mails = running.sink.messages_for(f"flow.{index}@example.com")
        subjects = Counter(str(mail.message["Subject"]) for mail in mails)
        assert set(subjects) == {f"First flow_{index}", f"Second flow_{index}"}, (index, subjects)
        message_ids = {mail.message["Message-ID"] for mail in mails}
        assert len(message_ids) == 2, (index, message_ids)
