"""Herald's direct-trigger benchmark: one POST /api/v1/workflows/trigger for many contacts.

    .venv/bin/python -m scripts.bench_trigger [--contacts 10000] [--channel in_app|email]
                                              [--audience listed|segment]

It starts the same stack as `herald run` (see scripts.benchmark), creates the contacts (by
sending one event for each, 500 to a batch), a one-step workflow of the channel and, for
`--audience segment`, a segment they are all in; then triggers the workflow once for all of
them and reports:
- how long the trigger request took to answer;
- deliveries: when the first and the last arrived (email: at the SMTP sink; in_app: recorded
  by the executor) and their rate;
- when the trigger was seen `completed` by GET /api/v1/triggers/{id} (polled every 0.5 s), and
  its summary;
- CPU time of every process over the whole trigger.
Figures depend on the machine; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import time

import httpx
import psycopg

from scripts.bench_stack import running_stack
from scripts.cpu import cpu_now, cpu_per_event, stack_processes

BATCH = 500


def seed_contacts(http: httpx.Client, count: int) -> None:
    for start in range(0, count, BATCH):
        events = [seed_event(index) for index in range(start, min(count, start + BATCH))]
        answer = http.post("/api/v1/events/batch", json={"events": events})
        answer.raise_for_status()
        if answer.json()["rejected"]:
            raise SystemExit(f"seeding refused events: {answer.text[:500]}")


def seed_event(index: int) -> dict[str, object]:
    return {
        "event_name": "bench.seeded",
        "user_info": {"contact_external_id": f"bench_{index}", "email": f"bench.{index}@example.com",
                      "name": f"Bench {index}", "custom_fields": {"plan": "pro"}},
    }  # fmt: skip


def prepare(http: httpx.Client, options: argparse.Namespace) -> dict[str, object]:
    """Contacts, the workflow and (for a segment) the segment; the trigger request's body."""
    started = time.perf_counter()
    seed_contacts(http, options.contacts)
    print(f"{options.contacts} contacts created in {time.perf_counter() - started:.1f} s")
    step = (
        {"type": "in_app", "title": "Hi", "body": "Hello {{contact.name}}"}
        if options.channel == "in_app"
        else {"type": "email", "subject": "Hi {{contact.name}}", "body": "Hello"}
    )
    workflow = {"key": "bench-trigger", "name": "Bench", "trigger": {"event": "bench.never"}, "steps": [step]}
    http.post("/api/v1/workflows", json=workflow).raise_for_status()
    if options.audience == "segment":
        segment = {"key": "bench-pro", "name": "Pro", "condition": "contact.custom_fields.plan == 'pro'"}
        http.post("/api/v1/segments", json=segment).raise_for_status()
        return {"workflow_key": "bench-trigger", "segment": "bench-pro"}
    contacts = [{"external_id": f"bench_{index}"} for index in range(options.contacts)]
    return {"workflow_key": "bench-trigger", "contacts": contacts}


def sent_steps(database_url: str, trigger_id: str) -> tuple[int, float, float]:
    """How many of the trigger's steps were recorded as sent, the first and the last when."""
    with psycopg.connect(database_url) as connection:
        count, first, last = connection.execute(
            "SELECT count(*), extract(epoch FROM min(s.finished_at))::float8, "
            "extract(epoch FROM max(s.finished_at))::float8 FROM executor.runs r "
            "JOIN executor.run_steps s ON s.run_id = r.id WHERE r.trigger_id = %s AND s.status = 'sent'",
            (trigger_id,),
        ).fetchone() or (0, None, None)
    return int(count), float(first or 0), float(last or 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--channel", choices=("in_app", "email"), default="in_app")
    parser.add_argument("--audience", choices=("listed", "segment"), default="listed")
    options = parser.parse_args()

    with (
        running_stack() as (stack, sink, headers),
        httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=120) as http,
    ):
        body = prepare(http, options)
        time.sleep(2)  # let the seeding events drain before the clock starts
        processes = stack_processes(stack)
        cpu_before = cpu_now(processes)
        began, wall_began = time.perf_counter(), time.time()
        answer = http.post("/api/v1/workflows/trigger", json=body)
        answered = time.perf_counter() - began
        answer.raise_for_status()
        trigger_id = answer.json()["trigger_id"]
        print(f"trigger answered in {answered:.2f} s: {answer.json()['message']}")
        status: dict[str, object] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            status = http.get(f"/api/v1/triggers/{trigger_id}").json()
            if status.get("status") in ("completed", "failed"):
                break
            time.sleep(0.5)
        seen_final = time.time() - wall_began
        if options.channel == "email":
            count, first, last = sink.count, min(sink.received_at.values(), default=0.0), sink.last_at
        else:
            count, first, last = sent_steps(stack.database_url, trigger_id)
        print(f"delivered: {count} of {options.contacts} ({options.channel})")
        if count:
            print(
                f"first delivery after {first - wall_began:.1f} s, last after {last - wall_began:.1f} s "
                f"({count / max(last - first, 1e-9):.1f} deliveries/s)"
            )
        print(f"trigger seen {status.get('status')} after {seen_final:.1f} s: {status.get('summary')}")
        print("CPU time per contact (ms), by process:")
        for name, spent in cpu_per_event(processes, cpu_before, options.contacts).items():
            print(f"  {name:<10} {spent:7.2f}")


if __name__ == "__main__":
    main()
