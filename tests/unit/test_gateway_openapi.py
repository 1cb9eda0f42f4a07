"""The OpenAPI document derived from the routes (gateway.openapi)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.openapi import ERROR_SCHEMA, document
from gateway.routes import routes


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return document(routes(), "9.9.9")


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def test_the_document_is_openapi_3_1_with_its_version(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "Herald API"
    assert spec["info"]["version"] == "9.9.9"


def test_the_document_is_plain_json(spec: dict[str, Any]) -> None:
    assert json.loads(json.dumps(spec)) == spec


def test_every_route_is_a_path_operation(spec: dict[str, Any]) -> None:
    operations = {(method, path) for path, item in spec["paths"].items() for method in item}

    assert operations == {(r.http_method.lower(), r.path) for r in routes()}
    assert ("post", "/api/v1/events/send") in operations
    assert ("post", "/api/v1/workflows") in operations
    assert ("get", "/api/v1/triggers/{trigger_id}") in operations
    assert ("get", "/api/v1/dev/mail") in operations


def test_every_reference_resolves_to_a_component_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    found = set(references(spec))

    assert found
    for reference in found:
        assert reference.startswith("#/components/schemas/")
        assert reference.removeprefix("#/components/schemas/") in schemas


def test_errors_share_the_error_schema(spec: dict[str, Any]) -> None:
    assert spec["components"]["schemas"]["Error"] == ERROR_SCHEMA
    assert ERROR_SCHEMA["required"] == ["statusCode", "message", "error"]
    for item in spec["paths"].values():
        for operation in item.values():
            default = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert default == {"$ref": "#/components/schemas/Error"}


def test_send_event_takes_an_inline_body_and_answers_201(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/events/send"]["post"]

    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert operation["operationId"] == "SendEvent"
    assert operation["requestBody"]["required"] is True
    assert body["type"] == "object"
    assert body["additionalProperties"] is False
    assert set(body["properties"]) == {
        "event_name",
        "user_info",
        "source",
        "event_data",
        "variables",
        "trigger_at",
        "idempotency_key",
        "occurred_at",
        "contact_id",
    }
    assert body["properties"]["event_data"] == {"type": "object", "additionalProperties": True}
    assert body["properties"]["user_info"] == {"$ref": "#/components/schemas/herald.ingest.v1.UserInfo"}
    success = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert success == {"$ref": "#/components/schemas/herald.ingest.v1.SendEventResponse"}
    assert operation["parameters"] == []


def test_create_workflow_takes_and_answers_a_workflow(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/workflows"]["post"]
    workflow_ref = {"$ref": "#/components/schemas/herald.workflow.v1.Workflow"}

    assert operation["requestBody"]["content"]["application/json"]["schema"] == workflow_ref
    assert operation["responses"]["201"]["content"]["application/json"]["schema"] == workflow_ref
    workflow = spec["components"]["schemas"]["herald.workflow.v1.Workflow"]
    assert workflow["properties"]["steps"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/herald.workflow.v1.Step"},
    }
    assert workflow["properties"]["active"] == {"type": "boolean"}
    assert workflow["properties"]["version"] == {"type": "integer", "format": "int32"}
    assert spec["components"]["schemas"]["herald.workflow.v1.Step"]["properties"]["body"] == {}


def test_get_trigger_has_a_required_path_parameter(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/triggers/{trigger_id}"]["get"]

    assert operation["parameters"] == [
        {"name": "trigger_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    success = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert success == {"$ref": "#/components/schemas/herald.tracker.v1.Trigger"}
    assert "requestBody" not in operation


def test_dev_mail_takes_its_limit_from_the_query(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/dev/mail"]["get"]

    assert operation["parameters"] == [
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "format": "int32"}}
    ]


def test_both_credential_styles_are_security_schemes(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]

    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["teamId"] == {"type": "apiKey", "in": "header", "name": "X-Team-ID"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    for item in spec["paths"].values():
        for operation in item.values():
            assert operation["security"] == [{"apiKey": [], "teamId": []}, {"bearer": []}]
