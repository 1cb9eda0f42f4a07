"""IngestService in-process on a real port, with real credentials, PostgreSQL and JetStream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import event_pb2, tracking_pb2
from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.auth import Authenticator
from kernel.bus import MSG_ID, PROJECT_HEADER, BusPublisher
from kernel.errors import error_info
from kernel.grpc_server import ServiceRegistration, create_server
from kernel.outbox import Outbox
from kernel.structs import from_struct, to_struct
from kernel.tenancy import ensure_team, issue_key
from services.ingest.adapters import OUTBOX, ContactRow, EventRow, IngestSqlUnitOfWork, TriggerRow
from services.ingest.main import SERVICE_NAME
from services.ingest.servicer import IngestServicer
from tests.conftest import TeamCredentials


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
async def ingest(
    sessions: async_sessionmaker[AsyncSession], js: JetStreamContext
) -> AsyncIterator[ingest_pb2_grpc.IngestServiceAsyncStub]:
    outbox = Outbox(OUTBOX, sessions, BusPublisher(js))
    servicer = IngestServicer(Authenticator(sessions), lambda: IngestSqlUnitOfWork(sessions, outbox))
    registration = ServiceRegistration(
        SERVICE_NAME, servicer, ingest_pb2_grpc.add_IngestServiceServicer_to_server
    )
    server, port, _health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ingest_pb2_grpc.IngestServiceStub(channel)
    finally:
        await server.stop(None)


@pytest.fixture
async def team_outbox_cleanup(
    sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> AsyncIterator[None]:
    """Whatever a test leaves in ingest's outbox for its team is removed, so no relay trips on it."""
    yield
    async with sessions() as session, session.begin():
        await session.execute(delete(OUTBOX).where(OUTBOX.c.project_id == team.team_id))


def signup_request(event_name: str = "user_signup") -> ingest_pb2.SendEventRequest:
    return ingest_pb2.SendEventRequest(
        event_name=event_name,
        user_info=ingest_pb2.UserInfo(
            contact_external_id="user_12345", email=" John.Doe@Example.com ", name="John Doe"
        ),
        source=ingest_pb2.EventSource(type="web_signup", ip="192.168.1.1"),
        event_data=to_struct({"signup_method": "google_oauth", "referral_code": "FRIEND2024", "seats": 3}),
        variables=to_struct({"user_name": "John"}),
    )


async def stored_count(sessions: async_sessionmaker[AsyncSession], team_id: str) -> dict[str, int]:
    async with sessions() as session:
        counts = {}
        for name, table in (("events", EventRow), ("triggers", TriggerRow), ("contacts", ContactRow)):
            counts[name] = int(
                await session.scalar(select(func.count()).select_from(table).where(table.team_id == team_id))
                or 0
            )
        counts["outbox"] = int(
            await session.scalar(
                select(func.count()).select_from(OUTBOX).where(OUTBOX.c.project_id == team_id)
            )
            or 0
        )
    return counts


async def published_count(js: JetStreamContext, stream: str, subjects: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def rejected(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    request: ingest_pb2.SendEventRequest,
    metadata: tuple[tuple[str, str], ...],
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.SendEvent(request, metadata=metadata, timeout=10)
    return raised.value


async def test_send_event_publishes_the_event_and_answers_its_stream_sequence(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    team: TeamCredentials,
) -> None:
    response = await ingest.SendEvent(signup_request(), metadata=team.metadata, timeout=10)

    assert response.success is True
    assert response.message == "Event queued successfully"
    trigger_id = str(uuid.UUID(response.trigger_id))
    stored = await js.get_last_msg("EVENTS", f"events.{team.team_id}.user_signup")
    assert response.job_id == str(stored.seq)
    assert stored.data is not None
    event = event_pb2.Event.FromString(stored.data)
    assert (event.trigger_id, event.project_id, event.name) == (trigger_id, team.team_id, "user_signup")
    assert (event.contact.external_id, event.contact.email, event.contact.name) == (
        "user_12345",
        "john.doe@example.com",
        "John Doe",
    )
    assert from_struct(event.data) == {
        "signup_method": "google_oauth",
        "referral_code": "FRIEND2024",
        "seats": 3,
    }
    assert from_struct(event.variables) == {"user_name": "John"}
    assert (event.source.type, event.source.ip) == ("web_signup", "192.168.1.1")
    assert stored.headers is not None
    assert stored.headers[MSG_ID] == event.event_id
    assert stored.headers[PROJECT_HEADER] == team.team_id

    tracked = await js.get_last_msg("TRACKING", f"tracking.{team.team_id}.trigger_accepted")
    assert tracked.data is not None
    record = tracking_pb2.TrackingRecord.FromString(tracked.data)
    assert record.trigger_id == trigger_id
    assert record.trigger_accepted.event_id == event.event_id

    assert await stored_count(sessions, team.team_id) == {
        "events": 1,
        "triggers": 1,
        "contacts": 1,
        "outbox": 0,
    }


async def test_bearer_credentials_are_accepted_and_the_trigger_can_be_read_back(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    bearer = (("authorization", f"Bearer {team.api_key}"),)
    sent = await ingest.SendEvent(signup_request("order.completed"), metadata=bearer, timeout=10)

    record = await ingest.GetTriggerRecord(
        ingest_pb2.GetTriggerRecordRequest(trigger_id=sent.trigger_id), metadata=bearer, timeout=10
    )

    assert record.trigger_id == sent.trigger_id
    assert record.event_name == "order.completed"
    assert record.status == "queued"
    assert record.created_at.endswith("Z")
    assert not record.HasField("scheduled_for")


async def test_a_trigger_is_not_found_by_another_team(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    sent = await ingest.SendEvent(signup_request(), metadata=team.metadata, timeout=10)
    other_id = f"team-{uuid.uuid4().hex[:12]}"
    async with sessions() as session, session.begin():
        await ensure_team(session, other_id)
        other = TeamCredentials(other_id, (await issue_key(session, other_id)).secret)

    for trigger_id in (sent.trigger_id, "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ingest.GetTriggerRecord(
                ingest_pb2.GetTriggerRecordRequest(trigger_id=trigger_id), metadata=other.metadata, timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(raised.value)
        assert info is not None and info.reason == "TRIGGER_NOT_FOUND"


@pytest.mark.parametrize(
    ("metadata", "message", "reason"),
    [
        ((("x-api-key", "hk_wrong"), ("x-team-id", "{team}")), "Unauthorized", "INVALID_API_KEY"),
        ((("x-team-id", "{team}"),), "Unauthorized", "MISSING_API_KEY"),
        (
            (("x-api-key", "{key}"), ("x-team-id", "someone-else")),
            "Invalid team context",
            "INVALID_TEAM_CONTEXT",
        ),
    ],
    ids=["unknown-key", "no-key", "wrong-team"],
)
async def test_bad_credentials_are_unauthenticated_and_store_nothing(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    team: TeamCredentials,
    metadata: tuple[tuple[str, str], ...],
    message: str,
    reason: str,
) -> None:
    filled = tuple((key, value.format(team=team.team_id, key=team.api_key)) for key, value in metadata)

    error = await rejected(ingest, signup_request(), filled)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == message
    info = error_info(error)
    assert info is not None and info.reason == reason
    assert await stored_count(sessions, team.team_id) == {
        "events": 0,
        "triggers": 0,
        "contacts": 0,
        "outbox": 0,
    }
    assert await published_count(js, "EVENTS", f"events.{team.team_id}.>") == 0


@pytest.mark.parametrize(
    ("event_name", "reason"),
    [
        ("", "EVENT_NAME_REQUIRED"),
        ("UserSignup", "INVALID_EVENT_NAME"),
        ("purchase-completed", "INVALID_EVENT_NAME"),
        ("herald.run_finished", "RESERVED_EVENT_NAME"),
        ("a" * 129, "EVENT_NAME_TOO_LONG"),
    ],
    ids=["missing", "camel-case", "dash", "reserved", "too-long"],
)
async def test_bad_event_name_is_invalid_argument_and_stores_nothing(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    team: TeamCredentials,
    event_name: str,
    reason: str,
) -> None:
    before = await stored_count(sessions, team.team_id)

    error = await rejected(ingest, signup_request(event_name), team.metadata)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None and info.reason == reason
    assert (
        before
        == await stored_count(sessions, team.team_id)
        == {
            "events": 0,
            "triggers": 0,
            "contacts": 0,
            "outbox": 0,
        }
    )
    assert await published_count(js, "EVENTS", f"events.{team.team_id}.>") == 0


@pytest.mark.usefixtures("team_outbox_cleanup")
async def test_an_event_name_with_a_trailing_newline_is_invalid(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials
) -> None:
    error = await rejected(ingest, signup_request("user_signup\n"), team.metadata)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
