"""Calls from one Herald service to another, carrying the caller's credentials along."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import TypeVar

import grpc

from kernel.errors import from_rpc_error

T = TypeVar("T")

FORWARDED_METADATA = ("x-api-key", "x-team-id", "authorization", "x-request-id")
CALL_TIMEOUT_SECONDS = 3.0


def forwarded_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str], ...]:
    """The part of an incoming call's metadata that the next call needs: who is asking."""
    return tuple(
        (key.lower(), value.decode() if isinstance(value, bytes) else value)
        for key, value in (metadata or ())
        if key.lower() in FORWARDED_METADATA
    )


def channel(target: str) -> grpc.aio.Channel:
    """A channel to `target` (Settings.target): calls spread round-robin over its addresses
    when it lists several (a service's replicas)."""
    several = "," in target
    return grpc.aio.insecure_channel(
        target, options=[("grpc.lb_policy_name", "round_robin")] if several else []
    )


async def found_or_none(call: Awaitable[T]) -> T | None:
    """The answer of a call to another service; None when it answers NOT_FOUND, and any other
    failure as the HeraldError its status says."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise from_rpc_error(error) from error
