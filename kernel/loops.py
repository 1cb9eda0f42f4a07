"""Background loops: periodic work that runs until the process stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def every(interval: float, name: str, work: Callable[[], Awaitable[int]], stop: asyncio.Event) -> None:
    """Run `work` until `stop`: again at once while it reports work done, else after `interval`.
    A failure is logged and retried on the next round."""
    while not stop.is_set():
        try:
            while await work() > 0 and not stop.is_set():
                pass
        except Exception:
            log.exception("loop.failed", loop=name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
