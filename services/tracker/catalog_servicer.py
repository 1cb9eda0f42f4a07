"""The catalog's RPCs of TrackerService: translate requests to handler calls and answers back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from herald.tracker.v1 import tracker_pb2
from kernel.auth import Authenticator
from kernel.clock import isoformat_ms, utcnow
from kernel.structs import to_struct
from services.tracker import catalog_handlers, handlers
from services.tracker.catalog import CatalogDetail, CatalogEntry
from services.tracker.catalog_handlers import CatalogUnitOfWork
from services.tracker.domain import EventLatency, Latency

Context = grpc.aio.ServicerContext[Any, Any]
# Counts are int32 on the wire: a larger one shows as the largest.
MAX_COUNT = 2**31 - 1


def _count(value: int) -> int:
    return min(value, MAX_COUNT)


def _sources(entry: CatalogEntry) -> list[tracker_pb2.CatalogSource]:
    return [tracker_pb2.CatalogSource(type=s.type, count=_count(s.count)) for s in entry.sources]


def _latency_to_proto(latency: Latency | None) -> tracker_pb2.Latency | None:
    if latency is None:
        return None
    return tracker_pb2.Latency(
        avg_ms=round(latency.avg_ms, 3),
        p50_ms=round(latency.p50_ms, 3),
        p95_ms=round(latency.p95_ms, 3),
        p99_ms=round(latency.p99_ms, 3),
        max_ms=round(latency.max_ms, 3),
    )


def event_latency_to_proto(event: EventLatency) -> tracker_pb2.EventLatency:
    return tracker_pb2.EventLatency(
        event_name=event.event_name,
        count=event.count,
        matched=event.matched,
        first_step_done=event.first_step_done,
        accepted_to_matched=_latency_to_proto(event.accepted_to_matched),
        accepted_to_first_step=_latency_to_proto(event.accepted_to_first_step),
    )


def summary_to_proto(entry: CatalogEntry) -> tracker_pb2.CatalogEventSummary:
    return tracker_pb2.CatalogEventSummary(
        name=entry.name,
        first_seen=isoformat_ms(entry.first_seen),
        last_seen=isoformat_ms(entry.last_seen),
        count=_count(entry.count),
        sources=_sources(entry),
        pii_paths=entry.pii_paths,
        drift=entry.drift,
    )


def detail_to_proto(detail: CatalogDetail) -> tracker_pb2.CatalogEvent:
    entry = detail.entry
    return tracker_pb2.CatalogEvent(
        name=entry.name,
        first_seen=isoformat_ms(entry.first_seen),
        last_seen=isoformat_ms(entry.last_seen),
        count=_count(entry.count),
        sources=_sources(entry),
        pii_paths=entry.pii_paths,
        drift=entry.drift,
        schema=[
            tracker_pb2.SchemaPath(
                path=hint.path,
                count=_count(hint.count),
                first_seen=isoformat_ms(hint.first_seen),
                last_seen=isoformat_ms(hint.last_seen),
                drift=hint.drift,
                types=[
                    tracker_pb2.PathType(
                        type=t.type,
                        count=_count(t.count),
                        first_seen=isoformat_ms(t.first_seen),
                        last_seen=isoformat_ms(t.last_seen),
                        drift=t.drift,
                    )
                    for t in hint.types
                ],
            )
            for hint in detail.paths
        ],
        pii=[
            tracker_pb2.PiiFlag(
                path=flag.path,
                kinds=list(flag.kinds),
                status=flag.status,
                reviewed_at=isoformat_ms(flag.reviewed_at) if flag.reviewed_at else None,
            )
            for flag in detail.pii
        ],
        examples=[
            tracker_pb2.CatalogExample(
                event_id=example.event_id,
                accepted_at=isoformat_ms(example.accepted_at),
                source=example.source,
                payload=to_struct(dict(example.payload)),
            )
            for example in detail.examples
        ],
        truncated=detail.truncated,
    )


class CatalogRpcs:
    """Mixed into TrackerServicer: the event catalog's RPCs."""

    _auth: Authenticator
    _catalog: Callable[[], CatalogUnitOfWork]
    _uow: Callable[[], handlers.TrackerUnitOfWork]

    async def ListCatalogEvents(
        self, request: tracker_pb2.ListCatalogEventsRequest, context: Context
    ) -> tracker_pb2.ListCatalogEventsResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        entries, cursor = await catalog_handlers.list_catalog(
            team.id,
            self._catalog(),
            name=request.name,
            source=request.source,
            pii=request.pii if request.HasField("pii") else None,
            limit=request.limit,
            cursor=request.cursor,
        )
        return tracker_pb2.ListCatalogEventsResponse(
            events=[summary_to_proto(entry) for entry in entries], next_cursor=cursor
        )

    async def GetCatalogEvent(
        self, request: tracker_pb2.GetCatalogEventRequest, context: Context
    ) -> tracker_pb2.GetCatalogEventResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        detail = await catalog_handlers.get_catalog_event(team.id, request.name, self._catalog())
        window, latency = await handlers.event_latency(
            team.id, detail.entry.name, request.window, self._uow()
        )
        event = detail_to_proto(detail)
        event.latency_window = window
        if latency is not None:
            event.latency.CopyFrom(event_latency_to_proto(latency))
        return tracker_pb2.GetCatalogEventResponse(event=event)

    async def ReviewCatalogPii(
        self, request: tracker_pb2.ReviewCatalogPiiRequest, context: Context
    ) -> tracker_pb2.ReviewCatalogPiiResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        detail = await catalog_handlers.review_pii(
            team.id, request.name, request.path, request.action, utcnow(), self._catalog()
        )
        return tracker_pb2.ReviewCatalogPiiResponse(event=detail_to_proto(detail))
