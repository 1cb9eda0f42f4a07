"""The OpenAPI 3.1 document of the REST API, derived from the same descriptors as the routes."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.routes import Route, is_map, message_of

WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
}
SCALAR_SCHEMAS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["statusCode", "message", "error"],
    "properties": {
        "statusCode": {"type": "integer"},
        "message": {"type": "string"},
        "error": {"type": "string"},
    },
}


class SchemaBook:
    """Component schemas, one per message, referenced by name."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[descriptor.full_name])
        if descriptor.full_name not in self.schemas:
            self.schemas[descriptor.full_name] = {}
            self.schemas[descriptor.full_name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{descriptor.full_name}"}

    def _message(self, descriptor: Descriptor, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        properties = {f.name: self.field(f) for f in descriptor.fields if f.name not in skip}
        return {"type": "object", "additionalProperties": False, "properties": properties}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value_field = message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.field(value_field)}
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            schema = self.ref(message_of(field))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            schema = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        else:
            schema = dict(SCALAR_SCHEMAS.get(field.type, {}))
        if field.is_repeated:
            return {"type": "array", "items": schema}
        return schema

    def inline(self, descriptor: Descriptor, skip: frozenset[str]) -> dict[str, Any]:
        return self._message(descriptor, skip)


def success_response(book: SchemaBook, route: Route, response: Descriptor) -> dict[str, Any]:
    if route.success_status == 204:
        return {"description": "Done; no content"}
    schema = (
        book.field(response.fields_by_name[route.response_body])
        if route.response_body
        else book.ref(response)
    )
    return {"description": "Success", "content": {"application/json": {"schema": schema}}}


def document(routes: list[Route], version: str) -> dict[str, Any]:
    book = SchemaBook()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        request = route.method.input_type
        response = route.method.output_type
        variables = route.path_variables
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": book.field(request.fields_by_name[name])}
            for name in variables
        ]
        if not route.body:
            parameters += [
                {"name": f.name, "in": "query", "required": False, "schema": book.field(f)}
                for f in request.fields
                if f.name not in variables and f.type != FieldDescriptor.TYPE_MESSAGE
            ]
        operation: dict[str, Any] = {
            "operationId": route.method.name,
            "tags": [route.method.containing_service.name],
            "summary": f"{route.method.containing_service.full_name}/{route.method.name}",
            "parameters": parameters,
            "responses": {
                str(route.success_status): success_response(book, route, response),
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
            "security": [{"apiKey": [], "teamId": []}, {"bearer": []}],
        }
        if route.body == "*":
            body_schema = book.inline(request, frozenset(variables))
        elif route.body:
            body_schema = book.field(request.fields_by_name[route.body])
        if route.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        paths.setdefault(route.path, {})[route.http_method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Herald API",
            "version": version,
            "description": "Event-triggered messaging workflows. Generated from Herald's proto contracts.",
        },
        "paths": paths,
        "components": {
            "schemas": book.schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "teamId": {"type": "apiKey", "in": "header", "name": "X-Team-ID"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
