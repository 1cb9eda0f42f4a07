"""Errors as HTTP answers: `{"statusCode", "message", "error"}` (gateway.errors)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import grpc
import pytest
from aiohttp import web

from gateway.errors import error_body, from_herald_error, from_rpc_error
from kernel.errors import (
    HTTP_STATUS_OF_CODE,
    AlreadyExists,
    HeraldError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    to_status,
)
from tests.unit.fakes import failed_call

SERVICE = "herald.ingest.v1.IngestService"


class UnprocessableEvent(InvalidArgument):
    http_status = 422


def body_of(response: web.Response) -> dict[str, Any]:
    assert response.content_type == "application/json"
    assert response.text is not None
    parsed: dict[str, Any] = json.loads(response.text)
    return parsed


def call_without_details(code: grpc.StatusCode, details: str | None = None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (404, "Not Found"),
        (409, "Conflict"),
        (503, "Service Unavailable"),
    ],
)
def test_error_body_has_status_message_and_reason_phrase(status: int, phrase: str) -> None:
    assert error_body(status, "Something is wrong") == {
        "statusCode": status,
        "message": "Something is wrong",
        "error": phrase,
    }


def test_error_body_names_499_and_unknown_statuses() -> None:
    assert error_body(499, "gone")["error"] == "Client Closed Request"
    assert error_body(599, "odd")["error"] == "Error"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("Event name is required"), 400),
        (Unauthenticated("Unauthorized"), 401),
        (NotFound("Trigger not found"), 404),
        (AlreadyExists("Workflow 'a' already exists"), 409),
        (Unavailable("try later"), 503),
        (HeraldError("boom"), 500),
        (UnprocessableEvent("cannot process"), 422),
    ],
)
def test_from_herald_error_answers_the_status_of_its_code(error: HeraldError, status: int) -> None:
    response = from_herald_error(error)

    assert response.status == status
    assert body_of(response) == {
        "statusCode": status,
        "message": error.message,
        "error": HTTPStatus(status).phrase,
    }


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("Invalid event name 'UserSignup'", reason="INVALID_EVENT_NAME"), 400),
        (Unauthenticated("Invalid team context", reason="INVALID_TEAM_CONTEXT"), 401),
        (NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND"), 404),
        (AlreadyExists("Workflow 'welcome' already exists"), 409),
        (Unavailable("cannot publish to events.x: timeout"), 503),
    ],
)
def test_from_rpc_error_answers_the_servers_message_and_status(error: HeraldError, status: int) -> None:
    response = from_rpc_error(failed_call(to_status(error)), SERVICE)

    assert response.status == status
    assert body_of(response) == {
        "statusCode": status,
        "message": error.message,
        "error": HTTPStatus(status).phrase,
    }


def test_an_http_status_in_the_error_info_overrides_the_codes_status() -> None:
    response = from_rpc_error(failed_call(to_status(UnprocessableEvent("Same key, different body"))), SERVICE)

    assert response.status == 422
    assert body_of(response)["error"] == HTTPStatus(422).phrase
    assert body_of(response)["message"] == "Same key, different body"


@pytest.mark.parametrize(
    ("code", "status"), [(grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.DEADLINE_EXCEEDED, 504)]
)
def test_a_service_that_does_not_answer_is_named(code: grpc.StatusCode, status: int) -> None:
    response = from_rpc_error(call_without_details(code, "failed to connect to all addresses"), SERVICE)

    assert response.status == status
    assert body_of(response)["message"] == f"{SERVICE} is not answering; try again shortly"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS]
)
def test_an_unexplained_server_failure_reveals_nothing(code: grpc.StatusCode) -> None:
    response = from_rpc_error(
        call_without_details(code, "Exception calling application: KeyError('x')"), SERVICE
    )

    assert response.status == 500
    assert body_of(response) == {
        "statusCode": 500,
        "message": "Internal server error",
        "error": "Internal Server Error",
    }


def test_a_client_error_without_details_keeps_its_message() -> None:
    response = from_rpc_error(call_without_details(grpc.StatusCode.NOT_FOUND, "no such thing"), SERVICE)

    assert response.status == 404
    assert body_of(response)["message"] == "no such thing"


def test_a_client_error_without_any_message_is_named_by_its_code() -> None:
    response = from_rpc_error(call_without_details(grpc.StatusCode.PERMISSION_DENIED), SERVICE)

    assert response.status == 403
    assert body_of(response)["message"] == "PERMISSION_DENIED"


def test_every_mapped_code_is_an_error_status() -> None:
    assert all(400 <= status < 600 for status in HTTP_STATUS_OF_CODE.values())
    assert HTTP_STATUS_OF_CODE[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
