"""Request bodies and query strings checked against their messages (gateway.requests)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, wrappers_pb2
from google.protobuf.message import Message

from gateway.requests import BadRequest, build_message, check_shape, parse_json, query_document
from herald.executor.v1 import devmail_pb2
from herald.ingest.v1 import ingest_pb2
from herald.matcher.v1 import matcher_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.errors import InvalidArgument
from kernel.structs import from_struct

SEND_EVENT = ingest_pb2.SendEventRequest.DESCRIPTOR
WORKFLOW = workflow_pb2.Workflow.DESCRIPTOR


def shape_error(document: dict[str, Any], descriptor: Any = SEND_EVENT) -> BadRequest:
    with pytest.raises(BadRequest) as raised:
        check_shape(document, descriptor)
    return raised.value


# --------------------------------------------------------------------------------------------
# parse_json
# --------------------------------------------------------------------------------------------


def test_parse_json_reads_a_json_document() -> None:
    assert parse_json(b'{"event_name": "user_signup", "n": [1, 2.5]}') == {
        "event_name": "user_signup",
        "n": [1, 2.5],
    }


def test_parse_json_reads_utf8() -> None:
    assert parse_json('{"name": "Ángel"}'.encode()) == {"name": "Ángel"}


def test_a_body_that_is_not_utf8_is_a_bad_request_naming_the_byte() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_json(b'{"name": "\xff"}')

    assert raised.value.reason == "INVALID_UTF8"
    assert raised.value.message == "Request body is not valid UTF-8 (byte 10)"


def test_invalid_json_is_a_bad_request_with_line_and_column() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_json(b'{\n  "event_name": "user_signup",\n}')

    assert raised.value.reason == "INVALID_JSON"
    assert "at line 3, column 1" in raised.value.message
    assert raised.value.message.startswith("Request body is not valid JSON: ")
    assert "Content-Type: application/json" in raised.value.message


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_not_json(constant: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_json(f'{{"score": {constant}}}'.encode())

    assert raised.value.reason == "INVALID_JSON"
    assert f"{constant} is not a JSON value" in raised.value.message


def test_a_non_finite_number_is_not_reported_at_a_wrong_position() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_json(b'{\n  "event_name": "user_signup",\n  "score": NaN\n}')

    assert "line 1, column 1" not in raised.value.message


def test_bad_request_is_an_invalid_argument() -> None:
    assert issubclass(BadRequest, InvalidArgument)
    assert BadRequest("x").reason == "BAD_REQUEST"


# --------------------------------------------------------------------------------------------
# check_shape
# --------------------------------------------------------------------------------------------


def test_a_well_shaped_document_passes() -> None:
    check_shape(
        {
            "event_name": "user_signup",
            "user_info": {"contact_external_id": "u1", "email": "a@b.c", "custom_fields": {"x": [1]}},
            "source": None,
            "event_data": {"plan": "pro"},
            "variables": {},
        },
        SEND_EVENT,
    )


def test_camel_case_names_are_accepted() -> None:
    check_shape({"eventName": "user_signup", "userInfo": {"contactExternalId": "u1"}}, SEND_EVENT)


def test_an_unknown_field_is_named_with_the_fields_allowed_there() -> None:
    error = shape_error({"event_name": "x", "send_at": "2030-01-01T00:00:00Z"})

    assert error.reason == "UNKNOWN_FIELD"
    assert error.metadata == {"field": "send_at"}
    assert error.message == (
        "Unknown field 'send_at': allowed fields here are contact_id, event_data, event_name, "
        "idempotency_key, occurred_at, source, trigger_at, user_info, variables"
    )


def test_an_unknown_nested_field_is_named_by_its_path() -> None:
    error = shape_error({"user_info": {"mail": "a@b.c"}})

    assert error.metadata == {"field": "user_info.mail"}
    assert "Unknown field 'user_info.mail'" in error.message
    assert "contact_external_id, custom_fields, email, name, phone" in error.message


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        ({"event_name": 5}, "event_name", "event_name must be a string, got a number"),
        ({"event_name": True}, "event_name", "event_name must be a string, got a boolean"),
        ({"event_name": ["a"]}, "event_name", "event_name must be a string, got an array"),
        ({"user_info": {"email": 5}}, "user_info.email", "user_info.email must be a string, got a number"),
        ({"user_info": "ada@example.com"}, "user_info", "user_info must be a JSON object"),
        ({"event_data": [1, 2]}, "event_data", "event_data must be a JSON object"),
        ({"variables": "x"}, "variables", "variables must be a JSON object"),
        (
            {"user_info": {"custom_fields": 3}},
            "user_info.custom_fields",
            "user_info.custom_fields must be a JSON object",
        ),
    ],
)
def test_a_wrong_type_is_named_by_its_path(document: dict[str, Any], path: str, message: str) -> None:
    error = shape_error(document)

    assert error.reason == "WRONG_TYPE"
    assert error.metadata == {"field": path}
    assert error.message == message


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        ({"active": "yes"}, "active", "active must be true or false, got a string"),
        ({"active": 1}, "active", "active must be true or false, got a number"),
        ({"version": 1.5}, "version", "version must be an integer, got a number"),
        ({"version": False}, "version", "version must be an integer, got a boolean"),
        ({"steps": {"id": "a"}}, "steps", "steps must be an array"),
        ({"steps": ["email"]}, "steps[0]", "steps[0] must be a JSON object"),
        (
            {"steps": [{"id": "a"}, {"subject": 1}]},
            "steps[1].subject",
            "steps[1].subject must be a string, got a number",
        ),
        ({"trigger": "user_signup"}, "trigger", "trigger must be a JSON object"),
        (
            {"trigger": {"event": None, "name": "x"}},
            "trigger.name",
            "Unknown field 'trigger.name': allowed fields here are event",
        ),
    ],
)
def test_workflow_fields_of_the_wrong_type_are_named(
    document: dict[str, Any], path: str, message: str
) -> None:
    error = shape_error(document, WORKFLOW)

    assert error.metadata == {"field": path}
    assert error.message == message


def test_integers_may_be_written_as_strings_and_any_json_is_a_step_body() -> None:
    check_shape({"version": "3", "steps": [{"body": "text"}, {"body": {"a": 1}}, {"body": [1]}]}, WORKFLOW)


# --------------------------------------------------------------------------------------------
# build_message
# --------------------------------------------------------------------------------------------


def test_build_message_fills_the_request() -> None:
    document = {
        "event_name": "user_signup",
        "user_info": {"email": "ada@example.com", "custom_fields": {"age": 36}},
        "event_data": {"plan": "pro"},
    }

    message = build_message(document, ingest_pb2.SendEventRequest())

    assert isinstance(message, ingest_pb2.SendEventRequest)
    assert message.event_name == "user_signup"
    assert message.user_info.email == "ada@example.com"
    assert from_struct(message.user_info.custom_fields) == {"age": 36}
    assert from_struct(message.event_data) == {"plan": "pro"}


def test_build_message_checks_the_shape_first() -> None:
    with pytest.raises(BadRequest) as raised:
        build_message({"workflow": {"steps": [{"subject": 1}]}}, matcher_pb2.CreateWorkflowRequest())

    assert raised.value.metadata == {"field": "workflow.steps[0].subject"}


def test_a_value_json_format_refuses_is_an_invalid_field() -> None:
    with pytest.raises(BadRequest) as raised:
        build_message({"workflow": {"version": "three"}}, matcher_pb2.CreateWorkflowRequest())

    assert raised.value.reason == "INVALID_FIELD"
    assert "\n" not in raised.value.message
    assert "version" in raised.value.message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "event_name": "order.completed",
                "user_info": {"contact_external_id": "u1", "custom_fields": {"tier": {"x": [1, None]}}},
                "source": {"type": "web", "ip": "192.168.1.1"},
                "event_data": {"amount": 149.99, "items": [{"sku": "A", "qty": 2}], "gift": False},
                "variables": {},
                "trigger_at": "2030-01-15T10:00:00Z",
            },
            ingest_pb2.SendEventRequest(),
        ),
        ({"eventName": "user_signup", "userInfo": {"email": "a@b.c"}}, ingest_pb2.SendEventRequest()),
        ({"event_name": "x", "event_data": None, "user_info": None}, ingest_pb2.SendEventRequest()),
        ({"workflow": {"name": "w", "version": "3"}}, matcher_pb2.CreateWorkflowRequest()),
        ({"workflow": {"name": "w", "steps": [{"subject": "s"}]}}, matcher_pb2.CreateWorkflowRequest()),
        ({"event_name": "a", "eventName": "b", "source": {}}, ingest_pb2.SendEventRequest()),
        (
            {"events": [{"event_name": "a", "event_data": {"n": 1}}, {"eventName": "b"}, {}]},
            ingest_pb2.SendEventBatchRequest(),
        ),
        ({"events": None}, ingest_pb2.SendEventBatchRequest()),
        ({"add": ["vip", "beta"], "remove": []}, ingest_pb2.UpdateContactTagsRequest()),
    ],
    ids=[
        "every-field",
        "camel-case",
        "nulls",
        "int-as-string",
        "repeated",
        "named-twice-and-empty",
        "batch",
        "null-array",
        "scalar-arrays",
    ],
)
def test_build_message_gives_what_json_format_gives(document: dict[str, Any], message: Message) -> None:
    reference = type(message)()
    json_format.ParseDict(document, reference)

    assert build_message(document, message) == reference


# --------------------------------------------------------------------------------------------
# query_document
# --------------------------------------------------------------------------------------------


def test_query_integers_are_parsed() -> None:
    assert query_document({"limit": "25"}, devmail_pb2.ListDevMailRequest.DESCRIPTOR) == {"limit": 25}


def test_a_query_integer_that_is_not_one_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as raised:
        query_document({"limit": "many"}, devmail_pb2.ListDevMailRequest.DESCRIPTOR)

    assert raised.value.reason == "WRONG_TYPE"
    assert raised.value.message == "Query parameter 'limit' must be an integer"


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("false", False)])
def test_query_booleans_are_true_or_false(raw: str, value: bool) -> None:
    assert query_document({"value": raw}, wrappers_pb2.BoolValue.DESCRIPTOR) == {"value": value}


@pytest.mark.parametrize("raw", ["1", "yes", "True", ""])
def test_a_query_boolean_must_be_spelled_true_or_false(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        query_document({"value": raw}, wrappers_pb2.BoolValue.DESCRIPTOR)

    assert raised.value.message == "Query parameter 'value' must be true or false"


def test_query_strings_are_kept_as_they_are() -> None:
    document = query_document({"key": "welcome-email"}, matcher_pb2.GetWorkflowRequest.DESCRIPTOR)

    assert document == {"key": "welcome-email"}


def test_an_unknown_query_parameter_names_the_allowed_ones() -> None:
    with pytest.raises(BadRequest) as raised:
        query_document({"page": "2"}, devmail_pb2.ListDevMailRequest.DESCRIPTOR)

    assert raised.value.reason == "UNKNOWN_PARAMETER"
    assert raised.value.metadata == {"parameter": "page"}
    assert raised.value.message == "Unknown query parameter 'page': allowed are limit"


def test_a_message_field_is_not_a_query_parameter() -> None:
    with pytest.raises(BadRequest) as raised:
        query_document({"user_info": "x"}, SEND_EVENT)

    assert raised.value.message == (
        "Unknown query parameter 'user_info': allowed are contact_id, event_name, idempotency_key, "
        "occurred_at, trigger_at"
    )


def test_a_request_without_scalar_fields_allows_no_query_parameter() -> None:
    with pytest.raises(BadRequest) as raised:
        query_document({"page": "2"}, matcher_pb2.ListWorkflowsRequest.DESCRIPTOR)

    assert raised.value.message == "Unknown query parameter 'page'"
