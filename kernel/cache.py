"""A small per-process cache whose answers live a fixed time (credentials, project policy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

MAX_ENTRIES = 10_000
K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Answers of `load(key)`, each kept `seconds`; bounded, cleared when full. Callers asking
    for a key while it is being loaded wait for that one load rather than start their own."""

    def __init__(self, seconds: float, load: Callable[[K], Awaitable[V]]):
        self._seconds = seconds
        self._load = load
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done, now))
        return await asyncio.shield(loading)

    def _loaded(self, key: K, done: asyncio.Future[V], started: float) -> None:
        if self._loading.get(key) is not done:
            return  # forgotten while it loaded: keep nothing
        del self._loading[key]
        if done.cancelled() or done.exception() is not None:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (started + self._seconds, done.result())

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        self._loading.pop(key, None)
