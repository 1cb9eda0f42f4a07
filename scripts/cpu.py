"""CPU time of a running stack's processes: what the benchmarks print as "where the CPU goes"."""

from __future__ import annotations

import httpx
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from stack.launcher import Stack


def stack_processes(stack: Stack) -> dict[str, psutil.Process]:
    """Every live process of `stack` by name: its services, and the embedded PostgreSQL and NATS
    (PostgreSQL's backends are children of its postmaster, counted with it)."""
    pids = {name: child.process.pid for name, child in stack.supervisor.children.items() if child.process}
    for name, server in (("postgres", stack.postgres), ("nats", stack.nats)):
        if server is not None and server.process is not None:
            pids[name] = server.process.pid
    processes = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                processes[name] = process
        except psutil.NoSuchProcess:
            continue
    return processes


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user + system) of a process and all its children."""
    total = 0.0
    for one in (process, *process.children(recursive=True)):
        try:
            total += sum(one.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_now(processes: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: cpu_seconds(process) for name, process in processes.items()}


def cpu_per_event(
    processes: dict[str, psutil.Process], before: dict[str, float], events: int
) -> dict[str, float]:
    """Milliseconds of CPU each process spent per event since `before`."""
    return {
        name: (cpu_seconds(process) - before[name]) * 1000 / max(1, events)
        for name, process in processes.items()
    }


def work_counters(stack: Stack) -> dict[str, float]:
    """What the database and the bus have done so far: PostgreSQL's commits and rows written
    (pg_stat_database) and, with the embedded NATS, the messages its server took in and sent
    out (its monitoring /varz) and those each stream stored (/jsz). The benchmarks print the
    difference per event."""
    counters: dict[str, float] = {}
    with psycopg.connect(stack.database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    if row is not None:
        for name, value in zip(
            ("commits", "rows inserted", "rows updated", "rows deleted"), row, strict=True
        ):
            counters[f"postgres {name}"] = float(value)
    if stack.nats is not None:
        varz = httpx.get(f"http://127.0.0.1:{stack.nats.monitor_port}/varz", timeout=5).json()
        counters["nats messages in"] = float(varz["in_msgs"])
        counters["nats messages out"] = float(varz["out_msgs"])
        jsz = httpx.get(f"http://127.0.0.1:{stack.nats.monitor_port}/jsz?streams=true", timeout=5).json()
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                counters[f"stored on {stream['name']}"] = float(stream["state"]["last_seq"])
    return counters


def work_per_event(stack: Stack, before: dict[str, float], events: int) -> dict[str, float]:
    """`work_counters` since `before`, per event."""
    return {
        name: (value - before.get(name, 0.0)) / max(1, events) for name, value in work_counters(stack).items()
    }


def fetch_sizes(stack: Stack) -> dict[str, tuple[float, float]]:
    """Each durable consumer's fetches so far, from the services' /metrics: (messages, fetches)."""
    totals: dict[str, tuple[float, float]] = {}
    for name in stack.supervisor.children:
        if name == "gateway":
            continue
        try:
            text = httpx.get(f"http://{stack.metrics_address(name)}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name != "herald_bus_fetch_size":
                continue
            for sample in family.samples:
                key = f"{sample.labels['stream']} {sample.labels['durable']}"
                messages, fetches = totals.get(key, (0.0, 0.0))
                if sample.name.endswith("_sum"):
                    totals[key] = (messages + sample.value, fetches)
                elif sample.name.endswith("_count"):
                    totals[key] = (messages, fetches + sample.value)
    return totals


def mean_fetch_sizes(stack: Stack, before: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Messages per fetch of each durable consumer since `before` (those that fetched anything)."""
    means = {}
    for key, (messages, fetches) in sorted(fetch_sizes(stack).items()):
        earlier_messages, earlier_fetches = before.get(key, (0.0, 0.0))
        if fetches > earlier_fetches:
            means[key] = (messages - earlier_messages) / (fetches - earlier_fetches)
    return means
