"""Concurrent single sends of one caller travel to ingest together, in one SendEvents call.

A unary RPC costs both the gateway and ingest CPU of its own, whatever it carries. So the
requests of `POST /api/v1/events/send` that arrive while a caller's earlier ones are on their
way to ingest wait, and go together in the next call (up to MAX_ITEMS). A caller is one set of
credentials: only requests with the same credentials share a call, since a call is
authenticated once. Under light load a call carries one request and nothing waits; each caller
has at most CALLS_IN_FLIGHT calls on their way per ingest replica: one. At 200 requests/s, eight
calls in flight meant one request per call, two about two, one about three; each call costs
gRPC CPU on both sides and ingest a group commit, and with one the requests also wait less
(docs/benchmarks.md).
Each request gets exactly the answer SendEvent would have given it (ingest answers each item as
SendEvent would, headers included); when the whole call fails (credentials refused, ingest
away), every request of it gets that error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from herald.ingest.v1 import ingest_pb2

MAX_ITEMS = 500
CALLS_IN_FLIGHT = 1
SEND_EVENTS = "/herald.ingest.v1.IngestService/SendEvents"
# Metadata that belongs to one request rather than to its caller.
PER_REQUEST = frozenset({"x-request-id", "idempotency-key", "x-forwarded-for"})

Metadata = tuple[tuple[str, str], ...]


@dataclass
class _Caller:
    waiting: list[tuple[ingest_pb2.SendEventsItem, asyncio.Future[ingest_pb2.SendEventsResult]]] = field(
        default_factory=list
    )
    calls: int = 0


class Coalescer:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, replicas: int = 1):
        self._call = channel.unary_unary(
            SEND_EVENTS,
            request_serializer=ingest_pb2.SendEventsRequest.SerializeToString,
            response_deserializer=ingest_pb2.SendEventsResponse.FromString,
        )
        self._timeout = timeout
        self._in_flight = CALLS_IN_FLIGHT * max(1, replicas)
        self._callers: dict[Metadata, _Caller] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, metadata: Metadata, item: ingest_pb2.SendEventsItem) -> ingest_pb2.SendEventsResult:
        """Ingest's answer to `item`; raises grpc.aio.AioRpcError when the whole call failed."""
        caller_key = tuple(entry for entry in metadata if entry[0] not in PER_REQUEST)
        caller = self._callers.setdefault(caller_key, _Caller())
        answer: asyncio.Future[ingest_pb2.SendEventsResult] = asyncio.get_running_loop().create_future()
        caller.waiting.append((item, answer))
        if caller.calls < self._in_flight:
            caller.calls += 1
            task = asyncio.create_task(self._calls(caller_key, caller))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await answer

    async def _calls(self, caller_key: Metadata, caller: _Caller) -> None:
        """Call ingest with whatever the caller has waiting, until nothing waits."""
        try:
            while caller.waiting:
                group, caller.waiting = caller.waiting[:MAX_ITEMS], caller.waiting[MAX_ITEMS:]
                request = ingest_pb2.SendEventsRequest(items=[item for item, _ in group])
                try:
                    response = await self._call(request, metadata=caller_key, timeout=self._timeout)
                    if len(response.results) != len(group):
                        raise RuntimeError(f"ingest answered {len(response.results)} of {len(group)} events")
                except Exception as error:
                    for _, answer in group:
                        if not answer.done():
                            answer.set_exception(error)
                    continue
                for (_, answer), result in zip(group, response.results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            caller.calls -= 1
            if caller.calls == 0 and not caller.waiting:
                self._callers.pop(caller_key, None)
