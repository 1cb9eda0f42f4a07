"""The gateway's coalescing of single sends: one caller's concurrent sends share SendEvents calls,
different callers never do, and a failed call answers each of its requests."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from gateway.coalesce import CALLS_IN_FLIGHT, Coalescer
from herald.ingest.v1 import ingest_pb2

ADA = (("x-api-key", "hk_ada"), ("x-team-id", "team-ada"))
BOB = (("x-api-key", "hk_bob"), ("x-team-id", "team-bob"))


class FakeIngest:
    """A channel whose SendEvents answers each item with its event name as trigger id."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], tuple[tuple[str, str], ...]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None
        self.drop_one = False

    def unary_unary(self, path: str, **_: Any) -> Any:
        assert path == "/herald.ingest.v1.IngestService/SendEvents"

        async def call(
            request: ingest_pb2.SendEventsRequest, *, metadata: tuple[tuple[str, str], ...], **_options: float
        ) -> ingest_pb2.SendEventsResponse:
            self.calls.append(([item.event.event_name for item in request.items], metadata))
            await self.release.wait()
            if self.fail is not None:
                raise self.fail
            results = [
                ingest_pb2.SendEventsResult(
                    response=ingest_pb2.SendEventResponse(success=True, trigger_id=item.event.event_name),
                    headers={"idempotent-replayed": "true"} if item.idempotency_key_header else {},
                )
                for item in request.items
            ]
            return ingest_pb2.SendEventsResponse(results=results[:-1] if self.drop_one else results)

        return call


def item(name: str, key: str = "") -> ingest_pb2.SendEventsItem:
    return ingest_pb2.SendEventsItem(
        event=ingest_pb2.SendEventRequest(event_name=name), idempotency_key_header=key
    )


def with_request(
    metadata: tuple[tuple[str, str], ...], request_id: str, key: str = ""
) -> tuple[tuple[str, str], ...]:
    extra = (("x-request-id", request_id),) + ((("idempotency-key", key),) if key else ())
    return metadata + extra


@pytest.fixture
def ingest() -> FakeIngest:
    return FakeIngest()


@pytest.fixture
def coalescer(ingest: FakeIngest) -> Coalescer:
    return Coalescer(ingest, timeout=5.0)  # type: ignore[arg-type]


async def test_concurrent_sends_of_one_caller_share_calls_and_keep_their_answers(
    ingest: FakeIngest, coalescer: Coalescer
) -> None:
    ingest.release.clear()
    sends = [
        asyncio.create_task(coalescer.send(with_request(ADA, f"r{i}"), item(f"e{i}"))) for i in range(40)
    ]
    await asyncio.sleep(0.01)
    ingest.release.set()
    results = await asyncio.gather(*sends)
    assert [r.response.trigger_id for r in results] == [f"e{i}" for i in range(40)]
    assert len(ingest.calls) <= CALLS_IN_FLIGHT + 1
    assert sorted(name for names, _ in ingest.calls for name in names) == sorted(f"e{i}" for i in range(40))


async def test_a_call_carries_the_caller_s_credentials_and_not_one_request_s_own_metadata(
    ingest: FakeIngest, coalescer: Coalescer
) -> None:
    result = await coalescer.send(with_request(ADA, "r1", key="k1"), item("e1", key="k1"))
    assert result.headers == {"idempotent-replayed": "true"}
    [(_, metadata)] = ingest.calls
    assert metadata == ADA


async def test_different_callers_never_share_a_call(ingest: FakeIngest, coalescer: Coalescer) -> None:
    ingest.release.clear()
    sends = [
        asyncio.create_task(coalescer.send(with_request(caller, f"r{i}"), item(f"{name}{i}")))
        for i in range(10)
        for caller, name in ((ADA, "ada"), (BOB, "bob"))
    ]
    await asyncio.sleep(0.01)
    ingest.release.set()
    await asyncio.gather(*sends)
    for names, metadata in ingest.calls:
        owner = "ada" if metadata == ADA else "bob"
        assert all(name.startswith(owner) for name in names)


async def test_a_failed_call_is_the_answer_of_each_of_its_requests(
    ingest: FakeIngest, coalescer: Coalescer
) -> None:
    ingest.fail = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    outcomes = await asyncio.gather(
        *(coalescer.send(with_request(ADA, f"r{i}"), item(f"e{i}")) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    ingest.fail = None
    assert (await coalescer.send(with_request(ADA, "r9"), item("e9"))).response.trigger_id == "e9"


async def test_an_answer_with_too_few_results_fails_its_requests_rather_than_hang(
    ingest: FakeIngest, coalescer: Coalescer
) -> None:
    ingest.drop_one = True
    with pytest.raises(RuntimeError, match="answered 0 of 1"):
        await asyncio.wait_for(coalescer.send(with_request(ADA, "r1"), item("e1")), timeout=2)


async def test_an_idle_caller_is_forgotten(ingest: FakeIngest, coalescer: Coalescer) -> None:
    await coalescer.send(with_request(ADA, "r1"), item("e1"))
    await asyncio.sleep(0)
    assert coalescer._callers == {}


@pytest.mark.parametrize("replicas", [1, 3])
async def test_a_caller_has_a_few_calls_in_flight_per_ingest_replica(
    ingest: FakeIngest, replicas: int
) -> None:
    coalescer = Coalescer(ingest, timeout=5.0, replicas=replicas)  # type: ignore[arg-type]
    ingest.release.clear()
    sends = []
    for i in range(40):  # one by one: each finds the calls before it on their way
        sends.append(asyncio.create_task(coalescer.send(with_request(ADA, f"r{i}"), item(f"e{i}"))))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    # While ingest holds every call, the rest of the requests wait for the next calls.
    assert [len(names) for names, _ in ingest.calls] == [1] * (CALLS_IN_FLIGHT * replicas)
    ingest.release.set()
    results = await asyncio.gather(*sends)
    assert [r.response.trigger_id for r in results] == [f"e{i}" for i in range(40)]
