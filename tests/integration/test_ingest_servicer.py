"""Ingest's gRPC services in-process on a real port, with real credentials, PostgreSQL and JetStream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import event_pb2, tracking_pb2
from herald.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from kernel.auth import Authenticator
from kernel.bus import MSG_ID, PROJECT_HEADER, BusPublisher, read_since
from kernel.clock import from_timestamp, isoformat_ms, utcnow
from kernel.errors import HTTP_STATUS_KEY, error_info
from kernel.grpc_server import create_server
from kernel.outbox import Outbox
from kernel.structs import from_struct, to_struct
from kernel.tenancy import ensure_team, issue_key
from kernel.tracking import batch_subject
from services.ingest import handlers
from services.ingest.adapters import OUTBOX, ContactRow, EventRow, TriggerRow
from services.ingest.handlers import Intake
from services.ingest.main import registrations
from tests.conftest import TeamCredentials


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@dataclass(frozen=True)
class Ingest:
    """The ingest process's three services on one channel, and the intake they share."""

    events: ingest_pb2_grpc.IngestServiceAsyncStub
    contacts: ingest_pb2_grpc.ContactServiceAsyncStub
    projects: ingest_pb2_grpc.ProjectServiceAsyncStub
    intake: Intake
    outbox: Outbox


@pytest.fixture
async def running(
    sessions: async_sessionmaker[AsyncSession], nats_client: NatsClient
) -> AsyncIterator[Ingest]:
    outbox = Outbox(OUTBOX, sessions, BusPublisher(nats_client))
    services, intake = registrations(Authenticator(sessions), sessions, outbox)
    server, port, _health = await create_server("127.0.0.1:0", services)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Ingest(
                ingest_pb2_grpc.IngestServiceStub(channel),
                ingest_pb2_grpc.ContactServiceStub(channel),
                ingest_pb2_grpc.ProjectServiceStub(channel),
                intake,
                outbox,
            )
    finally:
        await server.stop(None)


@pytest.fixture
def ingest(running: Ingest) -> ingest_pb2_grpc.IngestServiceAsyncStub:
    return running.events


@pytest.fixture
async def other(sessions: async_sessionmaker[AsyncSession]) -> TeamCredentials:
    """A second team, with its own key."""
    other_id = f"team-{uuid.uuid4().hex[:12]}"
    async with sessions() as session, session.begin():
        await ensure_team(session, other_id)
        return TeamCredentials(other_id, (await issue_key(session, other_id)).secret)


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


async def tracked(client: NatsClient, team_id: str, kind: str) -> list[tracking_pb2.TrackingRecord]:
    """The team's facts of `kind` on the TRACKING stream, oldest first: every record of its batches."""
    since = utcnow() - timedelta(hours=1)
    records = []
    async for data in read_since(client, "TRACKING", batch_subject(team_id), since):
        records += [
            r for r in tracking_pb2.TrackingBatch.FromString(data).records if r.WhichOneof("kind") == kind
        ]
    return records


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
    running: Ingest,
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    nats_client: NatsClient,
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

    accepted = {
        record.trigger_id: record for record in await tracked(nats_client, team.team_id, "trigger_accepted")
    }
    assert accepted[trigger_id].trigger_accepted.event_id == event.event_id

    # The new contact was announced as herald.contact.created: an event and a trigger of its own.
    announced = await js.get_last_msg("EVENTS", f"events.{team.team_id}.herald.contact.created")
    assert announced.data is not None
    created = event_pb2.Event.FromString(announced.data)
    assert created.contact.id == event.contact.id
    assert from_struct(created.data) == {"contact_id": event.contact.id}
    assert created.trigger_id != trigger_id
    await running.outbox.settled()  # acknowledged rows are deleted in the background
    assert await stored_count(sessions, team.team_id) == {
        "events": 2,
        "triggers": 2,
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


# --------------------------------------------------------------------------------------------
# Scheduled events: trigger_at, cancel, fire
# --------------------------------------------------------------------------------------------


def scheduled_request(at: datetime, event_name: str = "reminder.due") -> ingest_pb2.SendEventRequest:
    """An event about nobody (no herald.contact.created) to fire at `at`."""
    return ingest_pb2.SendEventRequest(
        event_name=event_name, trigger_at=isoformat_ms(at), event_data=to_struct({"n": 1})
    )


async def trigger_record(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials, trigger_id: str
) -> ingest_pb2.GetTriggerRecordResponse:
    return await ingest.GetTriggerRecord(
        ingest_pb2.GetTriggerRecordRequest(trigger_id=trigger_id), metadata=team.metadata, timeout=10
    )


async def cancel(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials, trigger_id: str
) -> ingest_pb2.CancelTriggerResponse:
    return await ingest.CancelTrigger(
        ingest_pb2.CancelTriggerRequest(trigger_id=trigger_id), metadata=team.metadata, timeout=10
    )


async def test_an_event_with_trigger_at_is_scheduled_and_not_published_yet(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    nats_client: NatsClient,
    team: TeamCredentials,
) -> None:
    at = (utcnow() + timedelta(days=2)).replace(microsecond=123000)

    response = await ingest.SendEvent(scheduled_request(at), metadata=team.metadata, timeout=10)

    assert response.success is True
    assert response.message == f"Event scheduled for {isoformat_ms(at)}"
    assert response.scheduled_for == isoformat_ms(at)
    assert response.job_id == ""
    assert await published_count(js, "EVENTS", f"events.{team.team_id}.>") == 0
    record = await trigger_record(ingest, team, response.trigger_id)
    assert (record.status, record.scheduled_for) == ("scheduled", isoformat_ms(at))
    [accepted] = await tracked(nats_client, team.team_id, "trigger_accepted")
    assert accepted.trigger_id == response.trigger_id
    assert from_timestamp(accepted.trigger_accepted.scheduled_for) == at
    await cancel(ingest, team, response.trigger_id)


@pytest.mark.parametrize(
    ("trigger_at", "reason", "message"),
    [
        (
            "2030-01-15",
            "INVALID_TRIGGER_AT",
            "Invalid trigger_at format: use ISO 8601 with a time zone, e.g. 2024-12-25T10:00:00Z",
        ),
        ("2020-01-15T10:00:00Z", "TRIGGER_AT_IN_PAST", "trigger_at must be a future date"),
    ],
)
async def test_a_bad_trigger_at_is_invalid_argument(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
    trigger_at: str,
    reason: str,
    message: str,
) -> None:
    request = ingest_pb2.SendEventRequest(event_name="reminder.due", trigger_at=trigger_at)

    error = await rejected(ingest, request, team.metadata)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    info = error_info(error)
    assert info is not None and info.reason == reason
    assert (await stored_count(sessions, team.team_id))["triggers"] == 0


async def test_cancelling_a_scheduled_trigger_reports_it_cancelled_everywhere(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    js: JetStreamContext,
    team: TeamCredentials,
    nats_client: NatsClient,
) -> None:
    at = utcnow() + timedelta(days=1)
    sent = await ingest.SendEvent(scheduled_request(at), metadata=team.metadata, timeout=10)

    cancelled = await cancel(ingest, team, sent.trigger_id)
    again = await cancel(ingest, team, sent.trigger_id)

    assert (cancelled.id, cancelled.status, cancelled.scheduled_for) == (
        sent.trigger_id,
        "cancelled",
        isoformat_ms(at),
    )
    assert again.status == "cancelled"
    assert (await trigger_record(ingest, team, sent.trigger_id)).status == "cancelled"
    [cancelled_fact] = await tracked(nats_client, team.team_id, "trigger_cancelled")
    assert cancelled_fact.trigger_id == sent.trigger_id


async def test_the_cancel_answer_says_when_it_was_cancelled(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials
) -> None:
    sent = await ingest.SendEvent(
        scheduled_request(utcnow() + timedelta(days=1)), metadata=team.metadata, timeout=10
    )
    before = utcnow()

    cancelled = await cancel(ingest, team, sent.trigger_id)

    assert cancelled.cancelled_at.endswith("Z")
    assert datetime.fromisoformat(cancelled.cancelled_at) >= before - timedelta(milliseconds=1)


async def test_cancelling_again_answers_the_same_cancellation_time(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials
) -> None:
    sent = await ingest.SendEvent(
        scheduled_request(utcnow() + timedelta(days=1)), metadata=team.metadata, timeout=10
    )
    first = await cancel(ingest, team, sent.trigger_id)

    again = await cancel(ingest, team, sent.trigger_id)

    assert first.cancelled_at.endswith("Z")
    assert again.cancelled_at == first.cancelled_at


async def test_only_a_scheduled_trigger_of_ones_own_team_can_be_cancelled(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials, other: TeamCredentials
) -> None:
    queued = await ingest.SendEvent(
        ingest_pb2.SendEventRequest(event_name="reminder.due"), metadata=team.metadata, timeout=10
    )
    scheduled = await ingest.SendEvent(
        scheduled_request(utcnow() + timedelta(days=1)), metadata=team.metadata, timeout=10
    )

    with pytest.raises(grpc.aio.AioRpcError) as not_scheduled:
        await cancel(ingest, team, queued.trigger_id)
    for credentials, trigger_id in ((other, scheduled.trigger_id), (team, str(uuid.uuid4()))):
        with pytest.raises(grpc.aio.AioRpcError) as not_found:
            await cancel(ingest, credentials, trigger_id)
        assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
        found_info = error_info(not_found.value)
        assert found_info is not None and found_info.reason == "TRIGGER_NOT_FOUND"

    assert not_scheduled.value.code() == grpc.StatusCode.ABORTED
    info = error_info(not_scheduled.value)
    assert info is not None and info.reason == "TRIGGER_NOT_SCHEDULED"
    assert (await trigger_record(ingest, team, scheduled.trigger_id)).status == "scheduled"
    await cancel(ingest, team, scheduled.trigger_id)


async def test_a_due_scheduled_event_fires_once_with_a_trigger_fired_record(
    running: Ingest,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    nats_client: NatsClient,
    team: TeamCredentials,
) -> None:
    ingest = running.events
    sent = await ingest.SendEvent(
        scheduled_request(utcnow() + timedelta(days=1)), metadata=team.metadata, timeout=10
    )
    # Let its time come without waiting a day.
    async with sessions() as session, session.begin():
        await session.execute(
            update(TriggerRow)
            .where(TriggerRow.id == uuid.UUID(sent.trigger_id))
            .values(scheduled_for=utcnow() - timedelta(seconds=1))
        )

    fired = await handlers.fire_due(running.intake.unit_of_work())
    again = await handlers.fire_due(running.intake.unit_of_work())

    assert fired >= 1 and again == 0
    assert await published_count(js, "EVENTS", f"events.{team.team_id}.reminder.due") == 1
    stored = await js.get_last_msg("EVENTS", f"events.{team.team_id}.reminder.due")
    assert stored.data is not None
    event = event_pb2.Event.FromString(stored.data)
    assert event.trigger_id == sent.trigger_id
    assert from_struct(event.data) == {"n": 1}
    assert [fact.trigger_id for fact in await tracked(nats_client, team.team_id, "trigger_fired")] == [
        sent.trigger_id
    ]
    assert (await trigger_record(ingest, team, sent.trigger_id)).status == "queued"


# --------------------------------------------------------------------------------------------
# Idempotency, policy, rate limits
# --------------------------------------------------------------------------------------------


async def send_with_trailers(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    request: ingest_pb2.SendEventRequest,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[ingest_pb2.SendEventResponse, dict[str, str]]:
    call = ingest.SendEvent(request, metadata=metadata, timeout=10)
    response = await call
    trailers = await call.trailing_metadata()
    return response, {str(key): str(value) for key, value in (trailers or ())}


@pytest.mark.usefixtures("team_outbox_cleanup")
async def test_the_idempotency_key_header_replays_the_first_answer(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    team: TeamCredentials,
) -> None:
    keyed = (*team.metadata, ("idempotency-key", "order-42"))

    first, first_trailers = await send_with_trailers(ingest, signup_request(), keyed)
    again, again_trailers = await send_with_trailers(ingest, signup_request(), keyed)

    assert again.trigger_id == first.trigger_id
    assert "idempotent-replayed" not in first_trailers
    assert again_trailers["idempotent-replayed"] == "true"
    assert await published_count(js, "EVENTS", f"events.{team.team_id}.user_signup") == 1
    assert (await stored_count(sessions, team.team_id))["events"] == 2  # user_signup + contact.created

    different = signup_request()
    different.event_data.update({"seats": 4})
    error = await rejected(ingest, different, keyed)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None and info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert info.metadata[HTTP_STATUS_KEY] == "422"

    body_key = signup_request()
    body_key.idempotency_key = "another-key"
    mismatch = await rejected(ingest, body_key, keyed)
    mismatch_info = error_info(mismatch)
    assert mismatch_info is not None and mismatch_info.reason == "IDEMPOTENCY_KEY_MISMATCH"


async def test_the_projects_rate_limit_refuses_events_past_it_with_retry_after(
    running: Ingest, sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    policy = await running.projects.UpdateProjectPolicy(
        ingest_pb2.UpdateProjectPolicyRequest(rate_limit_per_hour=1), metadata=team.metadata, timeout=10
    )
    request = ingest_pb2.SendEventRequest(event_name="reminder.due")

    _, trailers = await send_with_trailers(running.events, request, team.metadata)
    error = await rejected(running.events, request, team.metadata)

    assert policy.policy.effective_rate_limit_per_hour == 1
    assert (trailers["ratelimit-limit"], trailers["ratelimit-remaining"]) == ("1", "0")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info is not None and info.reason == "RATE_LIMITED"
    headers = {str(key): str(value) for key, value in (error.trailing_metadata() or ())}
    assert headers["retry-after"] == headers["ratelimit-reset"]
    assert 1 <= int(headers["retry-after"]) <= 3600
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("1", "0")
    assert (await stored_count(sessions, team.team_id))["events"] == 1


async def test_a_project_that_rejects_unknown_events_accepts_registered_ones(
    running: Ingest, sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    await running.projects.UpdateProjectPolicy(
        ingest_pb2.UpdateProjectPolicyRequest(unknown_events="reject"), metadata=team.metadata, timeout=10
    )
    request = ingest_pb2.SendEventRequest(event_name="order.completed")

    error = await rejected(running.events, request, team.metadata)
    await running.projects.RegisterEventType(
        ingest_pb2.RegisterEventTypeRequest(name="order.completed", description="Paid"),
        metadata=team.metadata,
        timeout=10,
    )
    accepted = await running.events.SendEvent(request, metadata=team.metadata, timeout=10)
    listed = await running.projects.ListEventTypes(
        ingest_pb2.ListEventTypesRequest(), metadata=team.metadata, timeout=10
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Event type not found"
    info = error_info(error)
    assert info is not None and info.reason == "EVENT_TYPE_NOT_FOUND"
    assert accepted.success is True
    assert [(t.name, t.origin, t.description) for t in listed.event_types] == [
        ("order.completed", "registered", "Paid")
    ]
    assert (await stored_count(sessions, team.team_id))["events"] == 1


async def test_a_payload_over_the_projects_limit_is_413(
    running: Ingest, sessions: async_sessionmaker[AsyncSession], team: TeamCredentials
) -> None:
    await running.projects.UpdateProjectPolicy(
        ingest_pb2.UpdateProjectPolicyRequest(event_payload_limit_bytes=64),
        metadata=team.metadata,
        timeout=10,
    )

    error = await rejected(
        running.events,
        ingest_pb2.SendEventRequest(event_name="big.event", event_data=to_struct({"note": "x" * 100})),
        team.metadata,
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None and info.reason == "PAYLOAD_TOO_LARGE"
    assert info.metadata[HTTP_STATUS_KEY] == "413"
    assert info.metadata["limit"] == "64"
    assert (await stored_count(sessions, team.team_id))["events"] == 0


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("team_outbox_cleanup")
async def test_a_batch_accepts_the_good_events_and_reports_the_bad_ones_by_index(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    request = ingest_pb2.SendEventBatchRequest(
        events=[
            ingest_pb2.SendEventRequest(event_name="order.completed"),
            ingest_pb2.SendEventRequest(event_name="Bad-Name"),
            ingest_pb2.SendEventRequest(
                event_name="order.completed", user_info=ingest_pb2.UserInfo(phone="4155550100")
            ),
            ingest_pb2.SendEventRequest(event_name="order.refunded"),
        ]
    )

    response = await ingest.SendEventBatch(request, metadata=team.metadata, timeout=10)

    assert (response.accepted, response.rejected) == (2, 2)
    assert [result.index for result in response.results] == [0, 1, 2, 3]
    assert [result.success for result in response.results] == [True, False, False, True]
    bad_name, bad_phone = response.results[1].error, response.results[2].error
    assert (bad_name.status_code, bad_name.error, bad_name.reason) == (
        400,
        "Bad Request",
        "INVALID_EVENT_NAME",
    )
    assert (bad_phone.status_code, bad_phone.reason) == (400, "INVALID_PHONE")
    assert response.results[0].message == "Event queued successfully"
    assert (await stored_count(sessions, team.team_id))["events"] == 2


async def test_an_empty_batch_is_invalid_argument(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.SendEventBatch(ingest_pb2.SendEventBatchRequest(), metadata=team.metadata, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(raised.value)
    assert info is not None and info.reason == "EMPTY_BATCH"


# --------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------


async def test_the_contacts_api_creates_reads_tags_subscribes_and_deletes(
    running: Ingest, js: JetStreamContext, team: TeamCredentials
) -> None:
    contacts = running.contacts
    put = await contacts.PutContact(
        ingest_pb2.PutContactRequest(
            external_id="user-1", email=" Ada@Example.com ", phone="+1 (415) 555-0100", tags=["vip"]
        ),
        metadata=team.metadata,
        timeout=10,
    )
    tagged = await contacts.UpdateContactTags(
        ingest_pb2.UpdateContactTagsRequest(external_id="user-1", add=["beta"], remove=["vip"]),
        metadata=team.metadata,
        timeout=10,
    )
    subscribed = await contacts.SubscribeTopic(
        ingest_pb2.SubscribeTopicRequest(external_id="user-1", topic="product-news"),
        metadata=team.metadata,
        timeout=10,
    )
    got = await contacts.GetContact(
        ingest_pb2.GetContactRequest(external_id="user-1"), metadata=team.metadata, timeout=10
    )

    assert (put.contact.email, put.contact.phone) == ("ada@example.com", "+14155550100")
    assert put.contact.created_at.endswith("Z")
    assert list(tagged.contact.tags) == ["beta"]
    assert list(subscribed.contact.topics) == ["product-news"]
    assert (got.contact.id, list(got.contact.tags), list(got.contact.topics)) == (
        put.contact.id,
        ["beta"],
        ["product-news"],
    )
    for name in ("herald.contact.created", "herald.topic.subscribed"):
        stored = await js.get_last_msg("EVENTS", f"events.{team.team_id}.{name}")
        assert stored.data is not None
        assert event_pb2.Event.FromString(stored.data).contact.id == put.contact.id

    deleted = await contacts.DeleteContact(
        ingest_pb2.DeleteContactRequest(external_id="user-1"), metadata=team.metadata, timeout=10
    )
    assert deleted.erased["ingest.contacts"] == 1
    assert deleted.erased["ingest.events"] == 2  # herald.contact.created and herald.topic.subscribed
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await contacts.GetContact(
            ingest_pb2.GetContactRequest(external_id="user-1"), metadata=team.metadata, timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(raised.value)
    assert info is not None and info.reason == "CONTACT_NOT_FOUND"


async def test_a_contact_id_with_another_contacts_external_id_is_a_client_error(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub, team: TeamCredentials
) -> None:
    await ingest.SendEvent(
        ingest_pb2.SendEventRequest(
            event_name="user_signup", user_info=ingest_pb2.UserInfo(contact_external_id="user-1")
        ),
        metadata=team.metadata,
        timeout=10,
    )
    await ingest.SendEvent(
        ingest_pb2.SendEventRequest(
            event_name="user_signup", user_info=ingest_pb2.UserInfo(email="anonymous@example.com")
        ),
        metadata=team.metadata,
        timeout=10,
    )
    published = await ingest.PublishEvent(
        ingest_pb2.PublishEventRequest(event="page.viewed", email="anonymous@example.com"),
        metadata=team.metadata,
        timeout=10,
    )

    error = await rejected(
        ingest,
        ingest_pb2.SendEventRequest(
            event_name="user_signup",
            contact_id=published.contact_id,
            user_info=ingest_pb2.UserInfo(contact_external_id="user-1"),
        ),
        team.metadata,
    )

    assert error.code() != grpc.StatusCode.INTERNAL


async def test_send_events_answers_each_single_send_as_send_event_would(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    team: TeamCredentials,
    sessions: async_sessionmaker[AsyncSession],
    team_outbox_cleanup: None,
) -> None:
    items = [
        ingest_pb2.SendEventsItem(event=signup_request()),
        ingest_pb2.SendEventsItem(event=signup_request("Bad-Name")),
        ingest_pb2.SendEventsItem(event=signup_request(), idempotency_key_header="k-1"),
        ingest_pb2.SendEventsItem(event=signup_request(), idempotency_key_header="k-1"),
        ingest_pb2.SendEventsItem(
            event=ingest_pb2.SendEventRequest(event_name="user_signup", idempotency_key="k-2"),
            idempotency_key_header="k-3",
        ),
    ]
    response = await ingest.SendEvents(
        ingest_pb2.SendEventsRequest(items=items), metadata=team.metadata, timeout=10
    )

    outcomes = [result.WhichOneof("outcome") for result in response.results]
    assert outcomes == ["response", "error", "response", "response", "error"]
    first, bad, keyed, again, mismatch = response.results
    assert first.response.success and first.response.trigger_id
    assert (bad.error.status_code, bad.error.reason) == (400, "INVALID_EVENT_NAME"), bad.error
    assert again.response.trigger_id == keyed.response.trigger_id
    assert (
        dict(again.headers) == {"idempotent-replayed": "true"} and "idempotent-replayed" not in keyed.headers
    )
    assert (mismatch.error.status_code, mismatch.error.reason) == (400, "IDEMPOTENCY_KEY_MISMATCH")
    # Two events, and the herald.contact.created of their (new) contact.
    assert (await stored_count(sessions, team.team_id))["events"] == 3


async def test_send_events_with_bad_credentials_is_unauthenticated(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    request = ingest_pb2.SendEventsRequest(items=[ingest_pb2.SendEventsItem(event=signup_request())])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.SendEvents(request, metadata=(("x-api-key", "hk_wrong"),), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("count", "reason"), [(0, "EMPTY_BATCH"), (501, "BATCH_TOO_LARGE")])
async def test_send_events_takes_1_to_500_events_and_stores_nothing_otherwise(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
    count: int,
    reason: str,
) -> None:
    items = [ingest_pb2.SendEventsItem(event=signup_request()) for _ in range(count)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.SendEvents(ingest_pb2.SendEventsRequest(items=items), metadata=team.metadata, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(raised.value)
    assert info is not None and info.reason == reason
    assert f"this call has {count}" in (raised.value.details() or "")
    assert (await stored_count(sessions, team.team_id))["events"] == 0


async def test_a_struct_number_json_cannot_hold_is_invalid_argument_and_stores_nothing(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    request = signup_request()
    request.event_data.update({"ratio": float("nan")})  # gRPC can carry it; JSON and jsonb cannot

    error = await rejected(ingest, request, team.metadata)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None and info.reason == "INVALID_NUMBER"
    assert info.metadata["field"] == "event_data"
    assert (await stored_count(sessions, team.team_id))["events"] == 0
