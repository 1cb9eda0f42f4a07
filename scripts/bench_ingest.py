"""Ingest benchmark: how many events per second Herald accepts durably, and how fast it answers.

    make bench-ingest   (or: .venv/bin/python -m scripts.bench_ingest [--seconds 10] [--clients 64])

It starts the platform as `herald run` does (embedded PostgreSQL and NATS in a temporary
directory, every service its own process), then stops the matcher, executor and tracker so that
the figures are those of intake alone (gateway + ingest; every accepted event stays queued,
durable, in JetStream). It measures, in the same run:
- reference 1: one process looping "INSERT one row into PostgreSQL, await one JetStream publish";
- reference 2: one process publishing to JetStream asynchronously, acks awaited together;
- REST single sends from `wrk` (a C load generator; Debian package `wrk`), closed loop, when it
  is installed (the phase is left out, with a note, when it is not);
- REST single sends (POST /api/v1/events/send) from Python load-generator processes, closed loop;
- REST single sends at a fixed rate (open loop, --rate events/s): latency when not saturated;
- REST batches (POST /api/v1/events/batch, --batch events each);
- gRPC single sends (IngestService/SendEvent) straight to ingest.
Each line gives accepted events/s and request latency p50/p99; then, for the `wrk` and batch
phases, the CPU each platform process spent per accepted event (what limits the figures). The
load generators run on the same cores as the platform. Figures depend on the machine; nothing
here asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import psycopg

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.clients import channel as channel_to
from scripts.cpu import cpu_now, cpu_per_event, stack_processes
from stack.embedded import free_port
from stack.launcher import Stack
from tests.e2e.support import stack_settings

DOWNSTREAM = ("matcher", "executor", "tracker")
# Distinct contacts per load generator: the first event of each creates it (and emits
# herald.contact.created); later ones update a known contact.
CONTACTS = 100
# Open loop: requests outstanding per load generator beyond which a send is counted as failed.
MAX_IN_FLIGHT = 256


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0

    def line(self) -> str:
        ordered = sorted(self.latencies_ms) or [float("nan")]

        def pick(share: float) -> float:
            return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

        rate = self.events / self.seconds if self.seconds else 0.0
        errors = f"   errors {self.errors}" if self.errors else ""
        return (
            f"{self.name:<44} {rate:9.0f} events/s   p50 {pick(0.5):7.1f} ms   p99 {pick(0.99):7.1f} ms"
            f"{errors}"
        )


def event_body(index: int, tag: str) -> dict[str, Any]:
    return {
        "event_name": "bench.event",
        "user_info": {
            "contact_external_id": f"{tag}_{index % CONTACTS}",
            "email": f"{tag}.{index % CONTACTS}@example.com",
        },
        "event_data": {"index": index, "amount": 149.99},
        "variables": {"user_name": f"user {index}"},
    }  # fmt: skip


async def reference_insert_and_publish(database_url: str, nats_url: str, count: int) -> Result:
    """One process: INSERT one row, await one JetStream publish, sequentially."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await js.add_stream(name="BENCH_REF", subjects=["benchref.>"])
    latencies = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_reference (id uuid PRIMARY KEY, body text)"
        )
        started = time.perf_counter()
        for index in range(count):
            began = time.perf_counter()
            event_id = uuid.uuid4()
            await connection.execute(
                "INSERT INTO bench_reference VALUES (%s, %s)", (event_id, f"index {index}")
            )
            await js.publish("benchref.one", b"x" * 200, headers={"Nats-Msg-Id": str(event_id)})
            latencies.append((time.perf_counter() - began) * 1000)
        seconds = time.perf_counter() - started
        await connection.execute("DROP TABLE bench_reference")
    await js.delete_stream("BENCH_REF")
    await client.close()
    return Result("reference: INSERT + await publish loop", count, seconds, latencies)


async def reference_async_publish(nats_url: str, count: int) -> Result:
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await js.add_stream(name="BENCH_ASYNC", subjects=["benchasync.>"])
    started = time.perf_counter()
    futures = [await js.publish_async("benchasync.one", b"x" * 200) for _ in range(count)]
    await asyncio.gather(*futures)
    seconds = time.perf_counter() - started
    await js.delete_stream("BENCH_ASYNC")
    await client.close()
    return Result("reference: JetStream async publish", count, seconds, [])


async def _http_worker(
    url: str, headers: dict[str, str], seconds: float, clients: int, batch: int, rate: float, tag: str
) -> tuple[int, list[float], int, float]:
    """Closed loop with `clients` connections (or open loop at `rate` events/s when rate > 0)."""
    accepted = 0
    errors = 0
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    counter = iter(range(10**9))
    path = "/api/v1/events/batch" if batch > 1 else "/api/v1/events/send"

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal accepted, errors
        if batch > 1:
            body: dict[str, Any] = {"events": [event_body(next(counter), tag) for _ in range(batch)]}
        else:
            body = event_body(next(counter), tag)
        began = time.perf_counter()
        async with session.post(url + path, json=body, headers=headers) as answer:
            payload = await answer.json()
            ok = answer.status in (200, 201)
        latencies.append((time.perf_counter() - began) * 1000)
        if ok:
            accepted += payload.get("accepted", 0) if batch > 1 else 1
        else:
            errors += 1

    connector = aiohttp.TCPConnector(limit=max(clients, 1) * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        if rate > 0:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / rate
            next_at = time.perf_counter()
            while next_at < deadline:
                if len(tasks) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(one(session))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:  # the platform is not keeping up: count the send as failed, do not queue it
                    errors += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks, return_exceptions=True)
        else:

            async def loop() -> None:
                while time.perf_counter() < deadline:
                    await one(session)

            await asyncio.gather(*(loop() for _ in range(clients)))
    return accepted, latencies, errors, time.perf_counter() - started


def _http_process(arguments: tuple[Any, ...]) -> tuple[int, list[float], int, float]:
    return asyncio.run(_http_worker(*arguments))


def http_load(
    name: str, url: str, headers: dict[str, str], seconds: float, clients: int, *, batch: int = 1,
    rate: float = 0.0, processes: int = 2,
) -> Result:  # fmt: skip
    """Run the HTTP load from `processes` load-generator processes."""
    tag = uuid.uuid4().hex[:6]
    jobs = [
        (url, headers, seconds, max(1, clients // processes), batch, rate / processes, f"{tag}{n}")
        for n in range(processes)
    ]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        outcomes = pool.map(_http_process, jobs)
    return Result(
        name,
        sum(o[0] for o in outcomes),
        max(o[3] for o in outcomes),
        [latency for o in outcomes for latency in o[1]],
        sum(o[2] for o in outcomes),
    )


WRK_SCRIPT = """
counter = 0
tag = "%s" .. math.random(1000000)
request = function()
  counter = counter + 1
  local who = counter %% %d
  local body = '{"event_name":"bench.event","user_info":{"contact_external_id":"' .. tag .. '_' .. who ..
    '","email":"' .. tag .. '.' .. who .. '@example.com"},"event_data":{"index":' .. counter ..
    ',"amount":149.99},"variables":{"user_name":"user ' .. counter .. '"}}'
  return wrk.format("POST", "/api/v1/events/send", nil, body)
end
"""


def wrk_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> Result | None:
    """Single sends from `wrk` (a C load generator, Debian package `wrk`), when it is installed:
    the Python load generators cost the platform CPU on the same cores."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (Debian: apt-get install wrk): its phase is left out")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (uuid.uuid4().hex[:6], CONTACTS))
    command = [wrk, "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script.name]
    for name, value in {**headers, "Content-Type": "application/json"}.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(failed.group(1)) if failed else 0

    def percentile(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)", output, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    p50, p99 = percentile("50"), percentile("99")
    # Result keeps latencies as a list: these 100 points give back wrk's p50 and p99 in `line()`.
    latencies = [p50] * 51 + [p99] * 49
    return Result(
        f"REST /api/v1/events/send via wrk ({connections} conn.)", total - errors, seconds, latencies, errors
    )


async def grpc_load(
    address: str, metadata: tuple[tuple[str, str], ...], seconds: float, clients: int
) -> Result:
    accepted = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    tag = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))
    async with channel_to(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def loop() -> None:
            nonlocal accepted
            while time.perf_counter() < deadline:
                index = next(counter)
                request = ingest_pb2.SendEventRequest(
                    event_name="bench.event",
                    user_info=ingest_pb2.UserInfo(
                        contact_external_id=f"{tag}_{index % CONTACTS}",
                        email=f"{tag}.{index % CONTACTS}@example.com",
                    ),
                )
                request.event_data.update({"index": index})
                began = time.perf_counter()
                await stub.SendEvent(request, metadata=metadata)
                latencies.append((time.perf_counter() - began) * 1000)
                accepted += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return Result("gRPC IngestService/SendEvent (closed loop)", accepted, elapsed, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients in closed-loop phases")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the open-loop phase")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--batch-clients", type=int, default=8, help="batch requests in flight in the batch phase"
    )
    parser.add_argument("--reference-events", type=int, default=5000)
    parser.add_argument("--ingest-replicas", type=int, default=1, help="ingest processes (replicas)")
    options = parser.parse_args()
    if options.ingest_replicas < 1:
        parser.error("--ingest-replicas must be 1 or more")
    if options.batch_clients < 2:
        parser.error("--batch-clients must be 2 or more (one per load-generator process)")

    with tempfile.TemporaryDirectory() as scratch:
        settings = stack_settings(
            Path(scratch), log_level="warning", dev_team_id=f"bench-{uuid.uuid4().hex[:6]}"
        )
        ingest = ",".join(f"127.0.0.1:{free_port()}" for _ in range(options.ingest_replicas))
        metrics = ",".join(f"127.0.0.1:{free_port()}" for _ in range(options.ingest_replicas))
        settings = settings.with_changes(
            service_addresses={**settings.service_addresses, "ingest": ingest},
            metrics_addresses={**settings.metrics_addresses, "ingest": metrics},
        )
        stack = Stack(settings, restart_crashed=False, log_directory=Path(scratch) / "logs")
        stack.start()
        try:
            assert stack.credentials is not None
            for name in DOWNSTREAM:
                stack.kill(name)
            headers = {"X-API-Key": stack.credentials.api_key, "X-Team-ID": stack.credentials.team_id}
            metadata = (("x-api-key", stack.credentials.api_key), ("x-team-id", stack.credentials.team_id))
            url, seconds, clients = stack.gateway_url, options.seconds, options.clients
            references = options.reference_events
            processes = stack_processes(stack)
            cpu: dict[str, dict[str, float]] = {}

            def measured(label: str, run: Callable[[], Result | None]) -> Result | None:
                """`run`, and the CPU each platform process spent per event accepted in it."""
                before = cpu_now(processes)
                result = run()
                if result is not None:
                    cpu[label] = cpu_per_event(processes, before, result.events)
                return result

            results = [
                asyncio.run(reference_insert_and_publish(stack.database_url, stack.nats_url, references)),
                asyncio.run(reference_async_publish(stack.nats_url, references * 4)),
                measured("single sends (wrk)", lambda: wrk_load(url, headers, seconds, clients)),
                http_load("REST /api/v1/events/send (closed loop)", url, headers, seconds, clients),
                http_load(
                    f"REST /api/v1/events/send at {options.rate:.0f}/s (open loop)",
                    url, headers, seconds, clients, rate=options.rate,
                ),
                measured(
                    f"batches of {options.batch}",
                    lambda: http_load(
                        f"REST /api/v1/events/batch ({options.batch} per request)",
                        url, headers, seconds, options.batch_clients, batch=options.batch,
                    ),
                ),
                asyncio.run(grpc_load(stack.settings.target("ingest"), metadata, seconds, clients)),
            ]  # fmt: skip
            print(f"\n{'phase':<44} {'accepted':>16}")
            for result in results:
                if result is not None:
                    print(result.line())
            assert results[0] is not None
            reference = results[0].events / results[0].seconds
            single = max(r.events / r.seconds for r in results[2:4] if r is not None)
            print(f"\nREST single sends / reference loop: {single / reference:.2f}")
            print("\nCPU per accepted event (ms), by process (load generators not counted):")
            for label, spent in cpu.items():
                shares = ", ".join(f"{name} {ms:.2f}" for name, ms in spent.items())
                print(f"  {label:<20} {shares}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
