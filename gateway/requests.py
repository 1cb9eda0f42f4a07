"""JSON in, Protobuf out: one request body checked against its message, with errors that say
which field is wrong and how, before json_format builds the message."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
    """`message` filled from `document`, after check_shape; 400 with json_format's words otherwise.

    Documents of plain fields (strings, numbers, booleans, nested messages, Struct objects: the
    event sends) are copied field by field, several times faster than json_format; anything else,
    and any value the direct copy refuses, goes through json_format, which words the error."""
    check_shape(document, message.DESCRIPTOR)  # type: ignore[arg-type]  # upb and Python descriptors
    try:
        _copy_plain(document, message)
        return message
    except (_NotPlain, TypeError, ValueError):
        message.Clear()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise BadRequest(str(error).split("\n", 1)[0], reason="INVALID_FIELD") from None
    return message


class _NotPlain(Exception):
    """A field json_format must fill (enums, repeated and map fields, well-known types, ...)."""


PLAIN_SCALARS = {
    FieldDescriptor.TYPE_STRING: (str,),
    FieldDescriptor.TYPE_BOOL: (bool,),
    FieldDescriptor.TYPE_DOUBLE: (int, float),
    FieldDescriptor.TYPE_FLOAT: (int, float),
    FieldDescriptor.TYPE_INT32: (int,),
    FieldDescriptor.TYPE_INT64: (int,),
    FieldDescriptor.TYPE_UINT32: (int,),
    FieldDescriptor.TYPE_UINT64: (int,),
}


def _copy_plain(document: Mapping[str, Any], message: Message) -> None:
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb and Python descriptors
    seen: set[str] = set()
    for key, item in document.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None or field.name in seen:
            raise _NotPlain(key)  # a field named twice (event_name, eventName): json_format's rule
        seen.add(field.name)
        if field.is_repeated:
            _copy_repeated(item, field, message)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            name = message_of(field).full_name
            if name in FREE_FORM and name != "google.protobuf.Struct":
                raise _NotPlain(key)  # a Value or ListValue: json_format's rules for null
            if item is None:
                continue  # json_format leaves a message field unset for null
            if name.startswith("google.protobuf.") and name != "google.protobuf.Struct":
                raise _NotPlain(key)  # Timestamp, Duration, wrappers: their own JSON forms
            child = getattr(message, field.name)
            child.SetInParent()  # present even when empty, as json_format leaves it
            if name == "google.protobuf.Struct":
                child.update(item)
            else:
                _copy_plain(item, child)
        elif item is None:
            continue
        elif type(item) in PLAIN_SCALARS.get(field.type, ()):
            setattr(message, field.name, item)
        else:
            raise _NotPlain(key)  # e.g. an int64 given as a string, an enum by name


def query_document(
    query: Mapping[str, str], descriptor: Descriptor, allowed: Iterable[str] | None = None
) -> dict[str, Any]:
    """Query-string parameters as JSON values of the request's top-level scalar fields (only
    those `allowed`, when given: none for a route whose body is the whole request)."""
    document: dict[str, Any] = {}
    names = sorted(
        f.name
        for f in descriptor.fields
        if f.type != FieldDescriptor.TYPE_MESSAGE and (allowed is None or f.name in allowed)
    )
    for key, raw in query.items():
        field = descriptor.fields_by_name.get(key)
        if field is None or field.name not in names:
            listed = ", ".join(names)
            raise BadRequest(
                f"Unknown query parameter {key!r}" + (f": allowed are {listed}" if listed else ""),
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


def _copy_repeated(items: Any, field: FieldDescriptor, message: Message) -> None:
    """An array of plain values or plain messages (a batch's events)."""
    if items is None:
        return
    if is_map(field) or not isinstance(items, list):
        raise _NotPlain(field.name)
    container = getattr(message, field.name)
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        if any(type(element) not in PLAIN_SCALARS.get(field.type, ()) for element in items):
            raise _NotPlain(field.name)
        container.extend(items)
        return
    if message_of(field).full_name.startswith("google.protobuf."):
        raise _NotPlain(field.name)
    for element in items:
        if not isinstance(element, dict):
            raise _NotPlain(field.name)
        _copy_plain(element, container.add())
