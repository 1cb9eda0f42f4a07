"""The REST routes read from the services' http annotations (gateway.routes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.app import create_app
from gateway.routes import Route, is_map, message_of, routes
from herald.executor.v1 import devmail_pb2
from herald.ingest.v1 import ingest_pb2
from kernel.settings import SERVICES, Settings


def route(http_method: str, path: str) -> Route:
    [found] = [r for r in routes() if (r.http_method, r.path) == (http_method, path)]
    return found


def test_send_event_is_a_post_with_the_whole_request_as_body() -> None:
    send = route("POST", "/api/v1/events/send")

    assert send.grpc_path == "/herald.ingest.v1.IngestService/SendEvent"
    assert send.method.name == "SendEvent"
    assert send.process == "ingest"
    assert send.body == "*"
    assert send.response_body == ""
    assert send.success_status == 201
    assert send.path_variables == []
    assert send.timeout is None  # the gateway's default


def test_a_direct_workflow_trigger_may_take_longer_than_the_default_call() -> None:
    trigger = route("POST", "/api/v1/workflows/trigger")

    assert trigger.grpc_path == "/herald.ingest.v1.IngestService/TriggerWorkflow"
    assert (trigger.success_status, trigger.timeout) == (201, 60.0)


def test_create_workflow_takes_and_answers_the_workflow_field() -> None:
    create = route("POST", "/api/v1/workflows")

    assert create.grpc_path == "/herald.matcher.v1.MatcherService/CreateWorkflow"
    assert create.process == "matcher"
    assert (create.body, create.response_body) == ("workflow", "workflow")
    assert create.success_status == 201


def test_get_trigger_takes_the_trigger_id_from_the_path() -> None:
    get_trigger = route("GET", "/api/v1/triggers/{trigger_id}")

    assert get_trigger.grpc_path == "/herald.tracker.v1.TrackerService/GetTrigger"
    assert get_trigger.process == "tracker"
    assert get_trigger.path_variables == ["trigger_id"]
    assert (get_trigger.body, get_trigger.response_body) == ("", "trigger")
    assert get_trigger.success_status == 200


def test_dev_mail_is_served_by_the_devmail_process() -> None:
    dev_mail = route("GET", "/api/v1/dev/mail")

    assert dev_mail.grpc_path == "/herald.executor.v1.DevMailService/ListDevMail"
    assert dev_mail.process == "devmail"
    assert dev_mail.success_status == 200


@pytest.mark.parametrize(
    ("http_method", "path", "grpc_path"),
    [
        ("GET", "/api/v1/workflows/{key}", "/herald.matcher.v1.MatcherService/GetWorkflow"),
        ("GET", "/api/v1/workflows", "/herald.matcher.v1.MatcherService/ListWorkflows"),
        ("GET", "/api/v1/runs/{run_id}", "/herald.executor.v1.ExecutorService/GetRun"),
    ],
)
def test_the_other_routes(http_method: str, path: str, grpc_path: str) -> None:
    assert route(http_method, path).grpc_path == grpc_path


def test_an_rpc_without_http_annotation_has_no_route() -> None:
    assert all(r.method.name != "GetTriggerRecord" for r in routes())


def test_each_route_is_declared_once_and_served_by_a_known_process() -> None:
    found = routes()

    assert len({(r.http_method, r.path) for r in found}) == len(found)
    assert {r.process for r in found} <= set(SERVICES)


def test_every_path_variable_is_a_request_field() -> None:
    for found in routes():
        for variable in found.path_variables:
            assert variable in found.method.input_type.fields_by_name


def test_message_of_and_is_map() -> None:
    user_info = ingest_pb2.SendEventRequest.DESCRIPTOR.fields_by_name["user_info"]
    custom_fields = ingest_pb2.UserInfo.DESCRIPTOR.fields_by_name["custom_fields"]
    struct_fields = message_of(custom_fields).fields_by_name["fields"]

    assert message_of(user_info).full_name == "herald.ingest.v1.UserInfo"
    assert not is_map(user_info)
    assert is_map(struct_fields)
    assert not is_map(devmail_pb2.ListDevMailRequest.DESCRIPTOR.fields_by_name["limit"])


def test_no_two_rpcs_share_a_route() -> None:
    seen = [(r.http_method, r.path) for r in routes()]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("path", "rpc"),
    [
        ("/api/v1/contacts/ada", "herald.ingest.v1.ContactService/GetContact"),
        ("/api/v1/contacts/ada/feed", "herald.executor.v1.ExecutorService/ListFeed"),
        ("/api/v1/contacts/ada/timeline", "herald.tracker.v1.TrackerService/GetContactTimeline"),
        ("/api/v1/contacts/timeline", "herald.ingest.v1.ContactService/GetContact"),  # a contact so named
        ("/api/v1/triggers", "herald.tracker.v1.TrackerService/ListTriggers"),
        ("/api/v1/triggers/t-1", "herald.tracker.v1.TrackerService/GetTrigger"),
        ("/api/v1/stats", "herald.tracker.v1.TrackerService/GetStats"),
    ],
)
async def test_the_gateway_sends_each_contact_and_trigger_path_to_its_own_rpc(path: str, rpc: str) -> None:
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))

    resource = match.route.resource
    assert resource is not None, f"no route for {path}"
    [found] = [r for r in routes() if (r.http_method, r.path) == ("GET", resource.canonical)]
    assert found.grpc_path == f"/{rpc}"
