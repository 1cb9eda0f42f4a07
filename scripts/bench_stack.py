"""What every benchmark starts: the whole platform, with email to a local SMTP sink that notes
when each trigger's first email arrived."""

from __future__ import annotations

import multiprocessing
import queue
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import psutil
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from stack.embedded import free_port
from stack.launcher import Stack
from tests.e2e.support import stack_settings


class _Receipts:
    """The sink process's aiosmtpd handler: for each email, its trigger (from the X-Herald-Trigger
    header alone: parsing every message would take CPU from the platform) and when it arrived."""

    TRIGGER = re.compile(rb"^X-Herald-Trigger: *([0-9a-f-]+)", re.MULTILINE | re.IGNORECASE)

    def __init__(self, receipts: multiprocessing.Queue[tuple[str, float]]) -> None:
        self._receipts = receipts

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        found = self.TRIGGER.search(envelope.original_content or b"")
        self._receipts.put((found.group(1).decode() if found else "", time.time()))
        return "250 Message accepted"


def _serve_sink(port: int, receipts: multiprocessing.Queue[tuple[str, float]], stop: EventType) -> None:
    controller = Controller(_Receipts(receipts), hostname="127.0.0.1", port=port)
    controller.start()
    receipts.put(("", 0.0))  # listening
    stop.wait()
    controller.stop()


class TimingSink:
    """A real SMTP sink in a process of its own, as a mail server would be (in the benchmark's
    process it shared the GIL with the load generator and answered SMTP commands up to a switch
    interval late, a delay the platform's figures then carried): when the first email of each
    trigger arrived, how many emails came, and when the last did."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.port = free_port()
        self._receipts: multiprocessing.Queue[tuple[str, float]] = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(
            target=_serve_sink, args=(self.port, self._receipts, self._stop), daemon=True
        )
        self._received_at: dict[str, float] = {}
        self._count = 0
        self._last_at = 0.0

    def start(self) -> None:
        self._process.start()
        self._receipts.get(timeout=30)  # listening

    def stop(self) -> None:
        self._stop.set()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sink's process has used."""
        if self._process.pid is None:
            return 0.0
        return float(sum(psutil.Process(self._process.pid).cpu_times()[:2]))

    def _drain(self) -> None:
        while True:
            try:
                trigger, at = self._receipts.get_nowait()
            except queue.Empty:
                return
            self._count, self._last_at = self._count + 1, max(self._last_at, at)
            if trigger:
                self._received_at.setdefault(trigger, at)

    @property
    def received_at(self) -> dict[str, float]:
        self._drain()
        return self._received_at

    @property
    def count(self) -> int:
        self._drain()
        return self._count

    @property
    def last_at(self) -> float:
        self._drain()
        return self._last_at


@contextmanager
def running_stack() -> Iterator[tuple[Stack, TimingSink, dict[str, str]]]:
    """The platform as `herald run` starts it (embedded PostgreSQL with fsync on, embedded NATS,
    every service its own process) in a temporary directory; its sink; API headers."""
    sink = TimingSink()
    sink.start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            settings = stack_settings(
                Path(scratch),
                smtp_url=f"smtp://127.0.0.1:{sink.port}",
                log_level="warning",
                dev_team_id=f"bench-{uuid.uuid4().hex[:6]}",
            )
            stack = Stack(settings, restart_crashed=False, log_directory=Path(scratch) / "logs")
            started = time.perf_counter()
            stack.start()
            print(f"stack started in {time.perf_counter() - started:.1f} s")
            try:
                assert stack.credentials is not None
                headers = {"X-API-Key": stack.credentials.api_key, "X-Team-ID": stack.credentials.team_id}
                yield stack, sink, headers
            finally:
                stack.stop()
    finally:
        sink.stop()
