"""Ingest's DeleteContact over real gRPC and PostgreSQL, with another service's EraseContact served
by a stand-in tracker on a real port: the other service erases first (with the caller's
credentials), a failure there is a 503 that leaves the contact in place, and the other service
is asked again after the erasure for what messages in flight wrote meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from herald.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from kernel.auth import Authenticator, metadata_dict
from kernel.bus import BusPublisher
from kernel.errors import error_info
from kernel.grpc_server import ServiceRegistration, create_server
from kernel.outbox import Outbox
from services.ingest.adapters import OUTBOX
from services.ingest.main import registrations
from services.ingest.servicer import EraseRpc
from tests.conftest import TeamCredentials

TRACKER = tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name


@dataclass
class StandInTracker(tracker_pb2_grpc.TrackerServiceServicer):
    """Answers EraseContact with a fixed count and remembers who asked about whom."""

    asked: list[tuple[tracker_pb2.EraseContactRequest, dict[str, str]]] = field(default_factory=list)

    async def EraseContact(
        self, request: tracker_pb2.EraseContactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tracker_pb2.EraseContactResponse:
        self.asked.append((request, metadata_dict(context.invocation_metadata())))
        return tracker_pb2.EraseContactResponse(erased={"tracker.triggers": 2})


@dataclass
class Stack:
    contacts: ingest_pb2_grpc.ContactServiceAsyncStub
    tracker: StandInTracker
    tracker_server: grpc.aio.Server


@pytest.fixture
async def stack(
    sessions: async_sessionmaker[AsyncSession], nats_client: NatsClient, team: TeamCredentials
) -> AsyncIterator[Stack]:
    tracker = StandInTracker()  # type: ignore[abstract]  # it serves EraseContact alone
    tracker_server, tracker_port, _ = await create_server(
        "127.0.0.1:0",
        [ServiceRegistration(TRACKER, tracker, tracker_pb2_grpc.add_TrackerServiceServicer_to_server)],
    )
    await tracker_server.start()
    outbox = Outbox(OUTBOX, sessions, BusPublisher(nats_client))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tracker_port}") as tracker_channel:
        stub = tracker_pb2_grpc.TrackerServiceStub(tracker_channel)
        rpcs = [EraseRpc("tracker", stub.EraseContact, tracker_pb2.EraseContactRequest)]
        services, _ = registrations(
            Authenticator(sessions), sessions, outbox, erase_rpcs=rpcs, resweep_seconds=(0.3,)
        )
        server, port, _ = await create_server("127.0.0.1:0", services)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Stack(ingest_pb2_grpc.ContactServiceStub(channel), tracker, tracker_server)
        finally:
            await server.stop(None)
            await tracker_server.stop(None)
            await outbox.settled()
            async with sessions() as session, session.begin():
                await session.execute(delete(OUTBOX).where(OUTBOX.c.project_id == team.team_id))


async def put(stack: Stack, team: TeamCredentials) -> ingest_pb2.Contact:
    answer = await stack.contacts.PutContact(
        ingest_pb2.PutContactRequest(external_id="ada", email="ada@example.com", phone="+14155550100"),
        metadata=team.metadata,
        timeout=10,
    )
    return answer.contact


async def test_delete_erases_in_the_other_service_first_with_the_callers_credentials_then_again(
    stack: Stack, team: TeamCredentials
) -> None:
    contact = await put(stack, team)

    deleted = await stack.contacts.DeleteContact(
        ingest_pb2.DeleteContactRequest(external_id="ada"), metadata=team.metadata, timeout=10
    )

    assert deleted.erased["tracker.triggers"] == 2
    assert (deleted.erased["ingest.contacts"], deleted.erased["ingest.events"]) == (1, 1)  # contact.created
    [(request, metadata)] = stack.tracker.asked
    assert (request.contact_id, request.external_id, request.email, request.phone) == (
        contact.id,
        "ada",
        "ada@example.com",
        "+14155550100",
    )
    assert (metadata["x-api-key"], metadata["x-team-id"]) == (team.api_key, team.team_id)
    # Asked once more after the erasure, for what messages in flight wrote meanwhile.
    for _ in range(50):
        if len(stack.tracker.asked) == 2:
            break
        await asyncio.sleep(0.05)
    assert [asked.contact_id for asked, _ in stack.tracker.asked] == [contact.id, contact.id]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.contacts.DeleteContact(
            ingest_pb2.DeleteContactRequest(external_id="ada"), metadata=team.metadata, timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_when_the_other_service_is_down_the_answer_is_503_and_the_contact_stays(
    stack: Stack, team: TeamCredentials
) -> None:
    await put(stack, team)
    await stack.tracker_server.stop(None)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.contacts.DeleteContact(
            ingest_pb2.DeleteContactRequest(external_id="ada"), metadata=team.metadata, timeout=10
        )

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(raised.value)
    assert info is not None
    assert (info.reason, dict(info.metadata)) == ("ERASURE_INCOMPLETE", {"service": "tracker"})
    assert "try again" in (raised.value.details() or "")
    got = await stack.contacts.GetContact(
        ingest_pb2.GetContactRequest(external_id="ada"), metadata=team.metadata, timeout=10
    )
    assert got.contact.email == "ada@example.com"
