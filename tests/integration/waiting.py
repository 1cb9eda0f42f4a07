"""Waiting in integration tests: poll with a deadline, and see a transaction wait on a lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """The first truthy value `probe` returns within `within` seconds; AssertionError otherwise."""
    deadline = time.monotonic() + within
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {within}s; last value: {last!r}")
        await asyncio.sleep(interval)


async def backend_pid(session: AsyncSession) -> int:
    """The PostgreSQL backend serving `session` (this also begins its transaction)."""
    pid = await session.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


async def until_waiting_on_lock(sessions: async_sessionmaker[AsyncSession], pid: int) -> None:
    """Return once backend `pid` is blocked on a lock held by another transaction."""

    async def waiting() -> bool:
        async with sessions() as observer:
            wait_type = await observer.scalar(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        return bool(wait_type == "Lock")

    await eventually(waiting, what=f"backend {pid} waiting on a lock")
