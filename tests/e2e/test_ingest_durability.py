"""An acknowledged event is never lost and never matched twice: 2,000 events sent while ingest
(and with it its outbox relay), the matcher and the NATS server itself are each killed with
SIGKILL and restarted.

The platform here has a NATS server of its own, so the test can kill it. Senders retry what
the outage refused (503, connection errors) with the same idempotency key, as a client should;
the key guarantees a retry never makes a second event.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from stack.embedded import EmbeddedNats
from stack.launcher import Stack
from tests.conftest import Infrastructure
from tests.e2e.conftest import stack_on_own_nats
from tests.e2e.support import WELCOME_WORKFLOW, SmtpSink

EVENTS = 2000
SENDERS = 8
CONTACTS = 50


class Chaos:
    """Kills one part of the platform when the senders have had that many events accepted."""

    def __init__(self, stack: Stack, nats: EmbeddedNats) -> None:
        self.stack = stack
        self.nats = nats
        self.accepted = 0
        self.lock = threading.Lock()
        self.plan: list[tuple[int, str]] = [(300, "ingest"), (800, "matcher"), (1300, "nats")]
        self.done: list[str] = []

    def note_accepted(self) -> None:
        with self.lock:
            self.accepted += 1

    def run(self, finished: threading.Event) -> None:
        for threshold, target in self.plan:
            while not finished.is_set():
                with self.lock:
                    if self.accepted >= threshold:
                        break
                time.sleep(0.02)
            if finished.is_set():
                return
            self.kill_and_restart(target)
            self.done.append(target)

    def kill_and_restart(self, target: str) -> None:
        if target == "nats":
            self.nats.kill()
            time.sleep(2)
            self.nats.start()
            return
        self.stack.kill(target)
        time.sleep(1.5)
        self.stack.restart(target)
        self.stack.wait_ready([target])


@pytest.fixture(scope="module")
def platform(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, EmbeddedNats]]:
    with stack_on_own_nats(infrastructure, smtp_sink, tmp_path_factory.mktemp("durability")) as platform:
        yield platform


def send_until_accepted(http: httpx.Client, headers: dict[str, str], index: int) -> str:
    """Send event `index`, retrying what an outage refused; the trigger id it was accepted with."""
    event = {
        "event_name": "user_signup",
        "idempotency_key": f"durability-{index}",
        "user_info": {
            "contact_external_id": f"durable_{index % CONTACTS}",
            "email": f"durable.{index % CONTACTS}@example.com",
            "name": f"D{index % CONTACTS}",
        },
        "variables": {"user_name": f"user {index}"},
    }
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = http.post("/api/v1/events/send", json=event, headers=headers)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 201:
            trigger_id: str = answer.json()["trigger_id"]
            return trigger_id
        if answer is not None and answer.status_code not in (409, 500, 502, 503, 504):
            raise AssertionError(f"event {index} refused for good: {answer.status_code} {answer.text}")
        assert time.monotonic() < deadline, f"event {index} was never accepted"
        time.sleep(0.2)


def run_query(database_url: str, sql: str, **values: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return [tuple(row) for row in connection.execute(sql, values).fetchall()]


def eventually_true(probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


def test_two_thousand_events_survive_sigkill_of_ingest_matcher_and_nats(
    platform: tuple[Stack, EmbeddedNats], smtp_sink: SmtpSink, infrastructure: Infrastructure
) -> None:
    stack, nats = platform
    assert stack.credentials is not None
    team_id = stack.credentials.team_id
    headers = {"X-API-Key": stack.credentials.api_key, "X-Team-ID": team_id}
    chaos = Chaos(stack, nats)
    finished = threading.Event()
    counter = itertools.count()
    trigger_of: dict[int, str] = {}

    with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
        created = http.post("/api/v1/workflows", json=WELCOME_WORKFLOW, headers=headers)
        assert created.status_code == 201, created.text

        def sender() -> None:
            while (index := next(counter)) < EVENTS:
                trigger_of[index] = send_until_accepted(http, headers, index)
                chaos.note_accepted()

        # Outages are caused from this thread: processes started from a short-lived thread would
        # be stopped with it (their parent-death signal follows the thread that started them).
        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            futures = [pool.submit(sender) for _ in range(SENDERS)]
            try:
                chaos.run(finished)
                for future in futures:
                    future.result()
            finally:
                finished.set()
        assert chaos.done == ["ingest", "matcher", "nats"], "every outage happened while events flowed"
        assert len(trigger_of) == EVENTS
        assert len(set(trigger_of.values())) == EVENTS, "every event has its own trigger"

    database = infrastructure.database_url

    def statuses() -> Counter[str]:
        rows = run_query(
            database,
            "SELECT status, count(*) FROM tracker.triggers"
            " WHERE team_id = %(team)s AND event_name = 'user_signup' GROUP BY status",
            team=team_id,
        )
        return Counter({str(status): int(str(count)) for status, count in rows})

    eventually_true(lambda: statuses()["completed"] == EVENTS, timeout=600)
    assert statuses() == Counter({"completed": EVENTS})

    stored = run_query(
        database,
        "SELECT count(*) FROM ingest.triggers WHERE team_id = %(team)s AND event_name = 'user_signup'",
        team=team_id,
    )
    assert stored == [(EVENTS,)], "exactly one stored trigger per event, retries included"
    decided = run_query(
        database,
        "SELECT count(*), count(DISTINCT d.event_id) FROM matcher.match_decisions d"
        " JOIN ingest.events e ON e.id = d.event_id WHERE e.team_id = %(team)s AND e.name = 'user_signup'",
        team=team_id,
    )
    assert decided == [(EVENTS, EVENTS)], "each event matched once"
    runs = run_query(
        database,
        "SELECT r.trigger_id::text, count(*) FROM tracker.trigger_runs r"
        " JOIN tracker.triggers t ON t.id = r.trigger_id WHERE t.team_id = %(team)s"
        " AND t.event_name = 'user_signup' GROUP BY r.trigger_id",
        team=team_id,
    )
    assert sorted(str(trigger) for trigger, _ in runs) == sorted(trigger_of.values())
    assert all(count == 1 for _, count in runs), "one run per trigger"
    message_ids = Counter(
        mail.message["Message-ID"]
        for trigger_id in trigger_of.values()
        for mail in smtp_sink.messages_with("X-Herald-Trigger", trigger_id)
    )
    assert len(message_ids) == EVENTS, "one email per trigger"
