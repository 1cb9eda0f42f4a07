"""What every benchmark starts: the whole platform, with email to a local SMTP sink that notes
when each trigger's first email arrived."""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from stack.embedded import free_port
from stack.launcher import Stack
from tests.e2e.support import stack_settings


class TimingSink:
    """An SMTP sink (aiosmtpd handler) that notes when the first email of each trigger arrived,
    reading only the X-Herald-Trigger header (the tests' sink parses every message, which would
    take CPU from the platform here)."""

    TRIGGER = re.compile(rb"^X-Herald-Trigger: *([0-9a-f-]+)", re.MULTILINE | re.IGNORECASE)

    def __init__(self) -> None:
        self.received_at: dict[str, float] = {}
        self.count = 0
        self.last_at = 0.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        found = self.TRIGGER.search(envelope.original_content or b"")
        now = time.time()
        self.count, self.last_at = self.count + 1, now
        if found:
            self.received_at.setdefault(found.group(1).decode(), now)
        return "250 Message accepted"


@contextmanager
def running_stack() -> Iterator[tuple[Stack, TimingSink, dict[str, str]]]:
    """The platform as `herald run` starts it (embedded PostgreSQL with fsync on, embedded NATS,
    every service its own process) in a temporary directory; its sink; API headers."""
    sink = TimingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            settings = stack_settings(
                Path(scratch),
                smtp_url=f"smtp://127.0.0.1:{controller.port}",
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
        controller.stop()
