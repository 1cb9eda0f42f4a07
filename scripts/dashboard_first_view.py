"""How long the dashboard's overview takes to show with a busy project behind it.

    .venv/bin/python -m scripts.dashboard_first_view [--events 100000]

Starts the platform as `herald run` does (embedded PostgreSQL and NATS in a temporary directory),
sends `--events` events in batches of 500 through the REST API (one event name in ten has an
email workflow, contacts repeat), waits until the tracker has every trigger, then opens
/dashboard#/overview in headless Chromium (Debian's chromium) and prints, for a first load and
for later ones, the time from navigation to the page shown (the sign-in check skipped: the key
is in the tab's session already), to the charts and tiles drawn (the first view), and to the
per-event latency table drawn (asked for after the charts). It also prints how long
each API call of the overview takes on its own. Figures depend on the machine; nothing here
asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import httpx
from playwright.sync_api import sync_playwright

from scripts.bench_stack import running_stack

BATCH = 500
CHROMIUM = "/usr/bin/chromium"
OVERVIEW_CALLS = (
    "/api/v1/stats/timeline?window=PT1H&step=PT1M",
    "/api/v1/stats?window=PT1H",
    "/api/v1/dlq?limit=1",
)
# The overview is drawn when both panels are filled: its seven charts and the latency table.
CHARTS = 7
LATENCY_TABLE = "Processing latency per event name over the window"


def event(index: int) -> dict[str, Any]:
    name = "order.completed" if index % 10 == 0 else f"page.viewed_{index % 7}"
    return {
        "event_name": name,
        "user_info": {
            "contact_external_id": f"viewer_{index % 1000}",
            "email": f"viewer.{index % 1000}@example.com",
        },
        "source": {"type": "benchmark"},
        "event_data": {"index": index, "path": f"/products/{index % 250}", "amount": index % 97},
    }


async def send_all(gateway: str, headers: dict[str, str], count: int, concurrency: int = 4) -> float:
    batches: asyncio.Queue[int] = asyncio.Queue()
    for start in range(0, count, BATCH):
        batches.put_nowait(start)
    started = time.perf_counter()

    async def client(http: aiohttp.ClientSession) -> None:
        while not batches.empty():
            start = batches.get_nowait()
            body = {"events": [event(i) for i in range(start, min(count, start + BATCH))]}
            async with http.post("/api/v1/events/batch", json=body) as answer:
                answer.raise_for_status()
                result = await answer.json()
                assert result["rejected"] == 0, result

    async with aiohttp.ClientSession(gateway, headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return time.perf_counter() - started


def wait_until_tracked(http: httpx.Client, count: int) -> None:
    """Until the overview counts at least `count` events and no trigger is queued or processing."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        timeline = http.get("/api/v1/stats/timeline", params={"window": "PT1H"}).json()
        seen = sum(bucket["events"] for bucket in timeline["buckets"])
        busy = timeline["triggers_by_status"]["queued"] + timeline["triggers_by_status"]["processing"]
        print(f"  tracked {seen} triggers, {busy} queued or processing", flush=True)
        if seen >= count and busy == 0:
            return
        time.sleep(10)
    raise SystemExit("the platform did not track every event within 30 minutes")


def api_timings(http: httpx.Client, rounds: int = 5) -> None:
    for path in OVERVIEW_CALLS:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            answer = http.get(path)
            times.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
        print(f"  GET {path:<48} median {statistics.median(times):7.1f} ms  (max {max(times):.1f})")


def first_view(gateway: str, api_key: str, rounds: int = 6) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        # Signed in already: the key in the tab's session, as after the sign-in form.
        context.add_init_script(f"sessionStorage.setItem('herald.dashboard.apiKey', {json.dumps(api_key)})")
        figures: list[tuple[float, float]] = []
        for round_ in range(rounds):
            page = context.new_page()
            page.goto(f"{gateway}/dashboard#/overview")
            # Locator waits: the page's content security policy forbids the eval that a
            # wait_for_function would need.
            page.locator(".charts figure").nth(CHARTS - 1).wait_for(timeout=30_000)
            page.get_by_role("table", name=LATENCY_TABLE).wait_for(timeout=30_000)
            # The overview marks when each panel is drawn (User Timing), from the navigation's start.
            shown, charts, latency = page.evaluate(
                "[performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
                " performance.getEntriesByName('herald:overview:charts')[0].startTime,"
                " performance.getEntriesByName('herald:overview:latency')[0].startTime]"
            )
            figures.append((charts, latency))
            label = "first load (empty cache)" if round_ == 0 else f"load {round_ + 1} (cached files)"
            print(
                f"  {label:<26} page shown {shown:5.0f} ms, charts and tiles drawn {charts:5.0f} ms,"
                f" latency table drawn {latency:5.0f} ms"
            )
            page.close()
        print(
            f"  median over the {rounds} loads: charts and tiles drawn in"
            f" {statistics.median(c for c, _ in figures):.0f} ms, latency table in"
            f" {statistics.median(la for _, la in figures):.0f} ms"
        )
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with running_stack() as (stack, _sink, headers):
        assert stack.credentials is not None
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as http:
            workflow = {
                "key": "receipt",
                "name": "Receipt",
                "trigger": {"event": "order.completed"},
                "steps": [{"type": "email", "subject": "Thanks", "body": "Order {{event.data.index}}"}],
            }
            http.post("/api/v1/workflows", json=workflow).raise_for_status()
            seconds = asyncio.run(send_all(stack.gateway_url, headers, args.events))
            print(f"sent {args.events} events in {seconds:.1f} s")
            wait_until_tracked(http, args.events)
            print("the overview's API calls:")
            api_timings(http)
        print("the overview in headless Chromium:")
        first_view(stack.gateway_url, stack.credentials.api_key)


if __name__ == "__main__":
    main()
