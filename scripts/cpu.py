"""CPU time of a running stack's processes: what the benchmarks print as "where the CPU goes"."""

from __future__ import annotations

import psutil

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
