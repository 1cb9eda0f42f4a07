"""The per-process TTL cache: answers kept for a while, one load per key at a time."""

from __future__ import annotations

import asyncio

import pytest

from kernel.cache import TtlCache


class Loader:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, key: str) -> str:
        self.calls.append(key)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("store unreachable")
        return f"value of {key} #{len(self.calls)}"


async def test_concurrent_callers_share_one_load() -> None:
    loader = Loader()
    cache: TtlCache[str, str] = TtlCache(60, loader)
    waiting = [asyncio.create_task(cache.get("a")) for _ in range(20)]
    await asyncio.sleep(0)
    loader.release.set()
    assert set(await asyncio.gather(*waiting)) == {"value of a #1"}
    assert loader.calls == ["a"]
    assert await cache.get("a") == "value of a #1"
    assert loader.calls == ["a"]


async def test_an_answer_expires() -> None:
    loader = Loader()
    loader.release.set()
    cache: TtlCache[str, str] = TtlCache(0, loader)
    assert await cache.get("a") == "value of a #1"
    assert await cache.get("a") == "value of a #2"


async def test_a_failed_load_is_not_kept_and_every_waiter_sees_the_error() -> None:
    loader = Loader()
    loader.fail = True
    cache: TtlCache[str, str] = TtlCache(60, loader)
    waiting = [asyncio.create_task(cache.get("a")) for _ in range(3)]
    await asyncio.sleep(0)
    loader.release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    loader.fail = False
    assert await cache.get("a") == "value of a #2"


async def test_a_cancelled_caller_does_not_cancel_the_load_for_the_others() -> None:
    loader = Loader()
    cache: TtlCache[str, str] = TtlCache(60, loader)
    first = asyncio.create_task(cache.get("a"))
    second = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)
    first.cancel()
    loader.release.set()
    assert await second == "value of a #1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await cache.get("a") == "value of a #1"


async def test_forget_drops_the_answer_and_a_load_in_flight() -> None:
    loader = Loader()
    cache: TtlCache[str, str] = TtlCache(60, loader)
    stale = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)
    cache.forget("a")
    loader.release.set()
    assert await stale == "value of a #1"
    assert await cache.get("a") == "value of a #2"
