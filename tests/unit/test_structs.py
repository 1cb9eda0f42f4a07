"""JSON objects to and from google.protobuf.Struct (kernel.structs)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from kernel.structs import MAX_SAFE_INTEGER, from_struct, from_value, to_struct


def round_trip(value: dict[str, Any]) -> dict[str, Any]:
    wire = to_struct(value).SerializeToString()
    return from_struct(struct_pb2.Struct.FromString(wire))


def test_whole_numbers_come_back_as_ints() -> None:
    restored = round_trip({"score": 95, "negative": -3, "zero": 0, "big": MAX_SAFE_INTEGER})

    assert restored == {"score": 95, "negative": -3, "zero": 0, "big": MAX_SAFE_INTEGER}
    assert all(type(value) is int for value in restored.values())


def test_fractions_stay_floats() -> None:
    restored = round_trip({"ratio": 0.5, "price": 19.99})

    assert restored == {"ratio": 0.5, "price": 19.99}


def test_nested_objects_and_arrays_are_restored_all_the_way_down() -> None:
    value = {"order": {"items": [{"qty": 2, "sku": "A"}, [1, 2.5]], "paid": True, "note": None}}

    restored = round_trip(value)

    assert restored == value
    assert type(restored["order"]["items"][0]["qty"]) is int
    assert type(restored["order"]["items"][1][0]) is int
    assert restored["order"]["paid"] is True


def test_numbers_beyond_double_precision_stay_floats() -> None:
    restored = round_trip({"huge": 2**60})

    assert type(restored["huge"]) is float


def test_an_empty_or_missing_object_is_an_empty_struct() -> None:
    assert to_struct(None) == struct_pb2.Struct()
    assert to_struct({}) == struct_pb2.Struct()
    assert from_struct(struct_pb2.Struct()) == {}


def test_from_value_restores_any_json_value() -> None:
    struct = to_struct({"text": "Hello {{name}}", "count": 3, "list": [1.0, "x"], "flag": False})

    assert from_value(struct.fields["text"]) == "Hello {{name}}"
    assert type(from_value(struct.fields["count"])) is int
    assert from_value(struct.fields["list"]) == [1, "x"]
    assert from_value(struct.fields["flag"]) is False


def test_the_conversions_give_what_json_format_gives() -> None:
    # kernel.structs converts directly (several times faster); json_format is the reference.
    value: dict[str, Any] = {
        "text": "é 中文 🎉",
        "numbers": [0, -1, 1.5, 2**53, 2**60, -0.0, 1e300],
        "nested": {"deeper": {"list": [[], {}, None, True, False]}},
        "empty": {},
        "none": None,
    }
    reference = struct_pb2.Struct()
    json_format.ParseDict(value, reference)

    assert to_struct(value) == reference
    assert from_struct(reference) == _restored(json_format.MessageToDict(reference))


def _restored(value: Any) -> Any:
    """json_format's dict with whole numbers as ints, as from_struct promises."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _restored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restored(item) for item in value]
    return value
