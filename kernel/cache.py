"""A small per-process cache whose answers live a fixed time (credentials, project policy)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

MAX_ENTRIES = 10_000
K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Answers of `load(key)`, each kept `seconds`; bounded, cleared when full."""

    def __init__(self, seconds: float, load: Callable[[K], Awaitable[V]]):
        self._seconds = seconds
        self._load = load
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K) -> V:
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        value = await self._load(key)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now + self._seconds, value)
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
