"""JSON objects to and from google.protobuf.Struct.

Struct stores every number as a double; `from_struct` gives whole numbers back as ints, so
`{"score": 95}` survives a trip over the bus as 95 and not 95.0.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

MAX_SAFE_INTEGER = 2**53


def to_struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        json_format.ParseDict(value, struct)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    result = json_format.MessageToDict(struct)
    restored = _restore_integers(result)
    assert isinstance(restored, dict)
    return restored


def from_value(value: struct_pb2.Value) -> Any:
    return _restore_integers(json_format.MessageToDict(value))


def _restore_integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _restore_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore_integers(item) for item in value]
    return value
