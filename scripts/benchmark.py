"""Herald's benchmark: start the whole platform, push events through it, print the figures.

    make benchmark   (or: .venv/bin/python -m scripts.benchmark [--events 2000] [--concurrency 32]
                      [--rate 200] [--channel email|webhook|sms|push|in_app])

It starts the same stack as `herald run` (embedded PostgreSQL and NATS in a temporary directory,
every service as its own process) with email going to a real local SMTP sink, creates one
one-step workflow (an email by default; `--channel` picks a webhook to a local HTTP sink, an SMS
or a push notification to the development provider, or an in-app message), then sends events over HTTP from
`--concurrency` clients — as fast as they can, or at `--rate` events per second (open loop: each
event leaves at its scheduled time whatever the answers do) — and reports:
- ingest: accepted events per second and the latency of POST /api/v1/events/send;
- end to end: from sending the event to the SMTP sink receiving the email (other channels: to the
  step being recorded as sent);
- delivery throughput of the channel;
- memory: resident set size of every process after the run.
Figures depend on the machine; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import httpx
import psutil
import psycopg

from scripts.bench_stack import running_stack
from scripts.cpu import (
    cpu_now,
    cpu_per_event,
    fetch_sizes,
    mean_fetch_sizes,
    stack_processes,
    work_counters,
    work_per_event,
)
from tests.e2e.support import WELCOME_WORKFLOW, start_http_sink


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def describe(name: str, milliseconds: list[float]) -> str:
    figures = [f"p{share}" + f" {percentile(milliseconds, share / 100):7.1f} ms" for share in (50, 95, 99)]
    figures.append(f"mean {statistics.fmean(milliseconds):7.1f} ms")
    return f"{name:<34} " + "   ".join(figures)


async def send_events(
    gateway: str,
    headers: dict[str, str],
    count: int,
    concurrency: int,
    pause: float = 0.0,
    rate: float = 0.0,
    with_phone: bool = False,
) -> tuple[dict[str, float], list[float], float]:
    """Send `count` events (at `rate` per second when given), each about a new contact (with a
    phone number when `with_phone`); returns send time per trigger id (time.time()), request
    latencies (ms), wall time (s)."""
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            if rate:
                await asyncio.sleep(max(0.0, began + index / rate - time.perf_counter()))
            event = {
                "event_name": "user_signup",
                "user_info": {"contact_external_id": f"bench_{index}", "email": f"bench.{index}@example.com",
                              "name": f"Bench {index}"},
                "variables": {"user_name": f"bench {index}"},
            }  # fmt: skip
            if with_phone:
                event["user_info"]["phone"] = f"+1202555{index % 10000:04d}"  # type: ignore[index]
            started, wall_clock = time.perf_counter(), time.time()
            async with http.post("/api/v1/events/send", json=event) as answer:
                answer.raise_for_status()
                body = await answer.json()
            latencies.append((time.perf_counter() - started) * 1000)
            sent_at[body["trigger_id"]] = wall_clock
            if pause:
                await asyncio.sleep(pause)

    # aiohttp rather than httpx: a client that costs the shared CPU less leaves more to the platform.
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    began = time.perf_counter()
    async with aiohttp.ClientSession(
        base_url=gateway, headers=headers, connector=connector, timeout=timeout
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return sent_at, latencies, wall


def workflow_for(channel: str, hook_url: str) -> dict[str, object]:
    steps = {
        "email": WELCOME_WORKFLOW["steps"],
        "webhook": [{"type": "webhook", "url": hook_url, "body": {"who": "{{contact.external_id}}"}}],
        "in_app": [{"type": "in_app", "title": "Hi", "body": "Hello {{contact.name}}"}],
        # No provider configured: the development provider keeps them (docs/decisions.md).
        "sms": [{"type": "sms", "body": "Hello {{contact.name}}"}],
        "push": [{"type": "push", "title": "Hi", "body": "Hello {{contact.name}}"}],
    }[channel]
    return {**WELCOME_WORKFLOW, "key": f"bench-{channel}", "steps": steps}


def recorded_sends(database_url: str, team_id: str) -> dict[str, float]:
    """When each run's step was recorded as sent (epoch seconds), by trigger id."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT r.trigger_id::text, extract(epoch FROM s.finished_at)::float8 FROM executor.runs r "
            "JOIN executor.run_steps s ON s.run_id = r.id WHERE r.team_id = %s AND s.status = 'sent'",
            (team_id,),
        ).fetchall()
    return {trigger: float(at) for trigger, at in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds each client waits between events (isolated latency)"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="events per second, open loop (0: flat out)")
    parser.add_argument("--channel", choices=("email", "webhook", "sms", "push", "in_app"), default="email")
    options = parser.parse_args()

    hooks = start_http_sink()
    with running_stack() as (stack, sink, headers):
        try:
            httpx.post(
                f"{stack.gateway_url}/api/v1/workflows",
                json=workflow_for(options.channel, f"{hooks.url}/hook"),
                headers=headers,
            ).raise_for_status()
            processes = stack_processes(stack)
            own_before = time.process_time() + sink.cpu_seconds()
            cpu_before = cpu_now(processes)
            work_before = work_counters(stack)
            fetches_before = fetch_sizes(stack)
            sent_at, latencies, wall = asyncio.run(
                send_events(
                    stack.gateway_url,
                    headers,
                    options.events,
                    options.concurrency,
                    options.pause,
                    options.rate,
                    with_phone=options.channel == "sms",
                )
            )
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if options.channel == "email":
                    received_at = sink.received_at
                else:
                    received_at = recorded_sends(stack.database_url, headers["X-Team-ID"])
                if len(received_at) >= len(sent_at):
                    break
                time.sleep(0.5)
            drained = max(received_at.values()) - min(sent_at.values()) if received_at else float("nan")
            end_to_end = [(received_at[t] - sent_at[t]) * 1000 for t in sent_at if t in received_at]
            pace = f"at {options.rate:g}/s" if options.rate else f"concurrency {options.concurrency}"
            print(f"events sent: {len(sent_at)}, {pace}, channel {options.channel}")
            print(f"ingest throughput: {len(sent_at) / wall:8.1f} events/s accepted ({wall:.1f} s)")
            print(
                f"delivery throughput: {len(received_at) / drained:6.1f} {options.channel} deliveries/s"
                f" (all sent in {drained:.1f} s)"
            )
            print(describe("POST /api/v1/events/send", latencies))
            print(describe(f"event sent -> {options.channel} delivered", end_to_end))
            print(f"delivered: {len(received_at)} of {len(sent_at)}")
            own = (time.process_time() + sink.cpu_seconds() - own_before) * 1000 / max(1, len(sent_at))
            print("CPU time per event (ms), by process:")
            for name, spent in cpu_per_event(processes, cpu_before, len(sent_at)).items():
                print(f"  {name:<10} {spent:7.2f}")
            # The HTTP clients and the SMTP and webhook sinks share the machine with the platform.
            print(f"  {'(benchmark: clients and sinks)':<10} {own:7.2f}")
            print("database and bus work per event:")
            for name, amount in work_per_event(stack, work_before, len(sent_at)).items():
                print(f"  {name:<22} {amount:7.2f}")
            print("messages per fetch, by consumer:")
            for name, size in mean_fetch_sizes(stack, fetches_before).items():
                print(f"  {name:<32} {size:7.1f}")
            print("resident memory after the run:")
            for name, child in stack.supervisor.children.items():
                if child.process is not None:
                    rss = psutil.Process(child.process.pid).memory_info().rss / 2**20
                    print(f"  {name:<10} {rss:7.1f} MiB")
        finally:
            hooks.server.shutdown()


if __name__ == "__main__":
    main()
