"""JSON in, Protobuf out: one request body checked against its message, with errors that say
which field is wrong and how, before json_format builds the message."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.routes import is_map, message_of
from kernel.errors import InvalidArgument

FREE_FORM = {
    "google.protobuf.Struct": "an object",
    "google.protobuf.Value": None,
    "google.protobuf.ListValue": "an array",
}
SCALARS: dict[int, tuple[tuple[type, ...], str]] = {
    FieldDescriptor.TYPE_STRING: ((str,), "a string"),
    FieldDescriptor.TYPE_BOOL: ((bool,), "true or false"),
    FieldDescriptor.TYPE_INT32: ((int, str), "an integer"),
    FieldDescriptor.TYPE_INT64: ((int, str), "an integer"),
    FieldDescriptor.TYPE_UINT32: ((int, str), "an integer"),
    FieldDescriptor.TYPE_UINT64: ((int, str), "an integer"),
    FieldDescriptor.TYPE_DOUBLE: ((int, float), "a number"),
    FieldDescriptor.TYPE_FLOAT: ((int, float), "a number"),
    FieldDescriptor.TYPE_ENUM: ((str, int), "one of the enum's names"),
}


class BadRequest(InvalidArgument):
    default_reason = "BAD_REQUEST"


def parse_json(raw: bytes) -> Any:
    """The JSON document in `raw`; 400 with what is wrong when it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(
            f"Request body is not valid UTF-8 (byte {error.start})", reason="INVALID_UTF8"
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except _NonFiniteNumber as error:
        raise BadRequest(
            f"Request body is not valid JSON: {error} is not a JSON value (numbers must be finite)",
            reason="INVALID_JSON",
        ) from None
    except json.JSONDecodeError as error:
        raise BadRequest(
            f"Request body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno} "
            "(send a JSON object with Content-Type: application/json)",
            reason="INVALID_JSON",
        ) from None


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise _NonFiniteNumber(name)


def check_shape(value: Mapping[str, Any], descriptor: Descriptor, where: str = "") -> None:
    """Unknown fields and wrong JSON types, named by their path (`user_info.email`)."""
    fields = descriptor.fields_by_name
    camel = {field.json_name: field for field in descriptor.fields}
    for key, item in value.items():
        field = fields.get(key) or camel.get(key)
        path = f"{where}{key}"
        if field is None:
            allowed = ", ".join(sorted(fields))
            raise BadRequest(
                f"Unknown field {path!r}: allowed fields here are {allowed}",
                reason="UNKNOWN_FIELD",
                metadata={"field": path},
            )
        if item is None:
            continue
        _check_field(item, field, path)


def _check_field(item: Any, field: FieldDescriptor, path: str) -> None:
    if field.is_repeated and not is_map(field):
        if not isinstance(item, list):
            raise BadRequest(f"{path} must be an array", reason="WRONG_TYPE", metadata={"field": path})
        for index, element in enumerate(item):
            _check_value(element, field, f"{path}[{index}]")
        return
    _check_value(item, field, path)


def _check_value(item: Any, field: FieldDescriptor, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = message_of(field).full_name
        if name in FREE_FORM:
            expected = FREE_FORM[name]
            if expected == "an object" and not isinstance(item, dict):
                raise BadRequest(
                    f"{path} must be a JSON object", reason="WRONG_TYPE", metadata={"field": path}
                )
            if expected == "an array" and not isinstance(item, list):
                raise BadRequest(
                    f"{path} must be a JSON array", reason="WRONG_TYPE", metadata={"field": path}
                )
            return
        if not isinstance(item, dict):
            raise BadRequest(f"{path} must be a JSON object", reason="WRONG_TYPE", metadata={"field": path})
        if not is_map(field):
            check_shape(item, message_of(field), f"{path}.")
        return
    types, description = SCALARS.get(field.type, ((object,), "a value"))
    if isinstance(item, bool) and bool not in types:
        types = ()
    if not isinstance(item, types):
        raise BadRequest(
            f"{path} must be {description}, got {_json_type(item)}",
            reason="WRONG_TYPE",
            metadata={"field": path},
        )


def _json_type(item: Any) -> str:
    if isinstance(item, bool):
        return "a boolean"
    if isinstance(item, (int, float)):
        return "a number"
    if isinstance(item, str):
        return "a string"
    if isinstance(item, list):
        return "an array"
    if isinstance(item, dict):
        return "an object"
    return "null"


def build_message(document: dict[str, Any], message: Message) -> Message:
    """`message` filled from `document`, after check_shape; 400 with json_format's words otherwise."""
    check_shape(document, message.DESCRIPTOR)  # type: ignore[arg-type]  # upb and Python descriptors
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise BadRequest(str(error).split("\n", 1)[0], reason="INVALID_FIELD") from None
    return message


def query_document(query: Mapping[str, str], descriptor: Descriptor) -> dict[str, Any]:
    """Query-string parameters as JSON values of the request's top-level scalar fields."""
    document: dict[str, Any] = {}
    for key, raw in query.items():
        field = descriptor.fields_by_name.get(key)
        if field is None or field.type == FieldDescriptor.TYPE_MESSAGE:
            allowed = ", ".join(
                sorted(f.name for f in descriptor.fields if f.type != FieldDescriptor.TYPE_MESSAGE)
            )
            raise BadRequest(
                f"Unknown query parameter {key!r}" + (f": allowed are {allowed}" if allowed else ""),
                reason="UNKNOWN_PARAMETER",
                metadata={"parameter": key},
            )
        if field.type == FieldDescriptor.TYPE_BOOL:
            if raw not in ("true", "false"):
                raise BadRequest(f"Query parameter {key!r} must be true or false", reason="WRONG_TYPE")
            document[key] = raw == "true"
        elif field.type in (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64,
        ):
            try:
                document[key] = int(raw)
            except ValueError:
                raise BadRequest(f"Query parameter {key!r} must be an integer", reason="WRONG_TYPE") from None
        else:
            document[key] = raw
    return document
