"""The event catalog's domain: the shape of an event (its JSON paths, the types and likely
personal data at each), a redacted example of it, and what the catalog answers. Pure: no I/O.

Paths name where a value is: `data.order.total`, `variables.plan`, `user_info.email`; an array's
elements are `data.items[]` (their fields `data.items[].sku`); a key that is not a plain
identifier is quoted, `data["first name"]`. A hostile payload cannot blow up the catalog: an event
yields at most MAX_PATHS_PER_EVENT paths, at most MAX_DEPTH levels deep, each at most
MAX_PATH_LENGTH characters.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.tracker import pii

SECTIONS = ("data", "variables", "user_info")
MAX_PATHS_PER_EVENT = 500
MAX_DEPTH = 10
MAX_PATH_LENGTH = 256
# What an example keeps of a large payload (after redaction).
EXAMPLES_PER_EVENT = 5
EXAMPLE_MAX_STRING = 1000
EXAMPLE_MAX_ITEMS = 20
EXAMPLE_MAX_KEYS = 100
TRUNCATED = "[TRUNCATED]"

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class JsonType:
    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    NULL = "null"
    OBJECT = "object"
    ARRAY = "array"


class PiiStatus:
    DETECTED = "detected"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


class PiiAction:
    CONFIRM = "confirm"
    DISMISS = "dismiss"

    ALL = (CONFIRM, DISMISS)


def json_type(value: Any) -> str:
    if value is None:
        return JsonType.NULL
    if isinstance(value, bool):
        return JsonType.BOOLEAN
    if isinstance(value, (int, float)):
        return JsonType.NUMBER
    if isinstance(value, str):
        return JsonType.STRING
    if isinstance(value, list):
        return JsonType.ARRAY
    return JsonType.OBJECT


# json_type of the types a decoded event holds, without the chain of isinstance.
_JSON_TYPES: dict[type, str] = {
    str: JsonType.STRING,
    int: JsonType.NUMBER,
    float: JsonType.NUMBER,
    bool: JsonType.BOOLEAN,
    type(None): JsonType.NULL,
    list: JsonType.ARRAY,
    dict: JsonType.OBJECT,
}


@functools.lru_cache(maxsize=pii.KEY_CACHE_SIZE)
def key_segment(key: str) -> str:
    """A key as a path segment, its personal data redacted (`{"jane@x.io": 1}` must not put an
    address into the catalog)."""
    safe = pii.redact_key(key)
    return f".{safe}" if _PLAIN_KEY.fullmatch(safe) else f"[{json.dumps(safe, ensure_ascii=False)}]"


@dataclass(slots=True)
class PathShape:
    """What one event had at one path (most paths hold no personal data: their kinds stay the
    one shared empty set)."""

    types: set[str] = field(default_factory=set)
    kinds: frozenset[str] = frozenset()


@dataclass
class EventShape:
    """Every path of one event (up to the caps), and whether the caps cut it short."""

    paths: dict[str, PathShape] = field(default_factory=dict)
    truncated: bool = False


class Scans:
    """What the value detectors found in each text (pii.find_in_text), remembered for the events
    of one batch: a value is scanned once for the kinds of its path and the redaction of its
    example, and a value that several events carry (a contact's email in every event about
    them) once for all. Held only while the batch is handled."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, bool], list[pii.Finding]] = {}
        self._kinds: dict[tuple[str, str], frozenset[str]] = {}

    def __call__(self, text: str, phone_key: bool) -> list[pii.Finding]:
        key = (text, phone_key)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = pii.find_in_text(text, phone_key=phone_key)
        return found

    def text_kinds(self, text: str, key: str) -> frozenset[str]:
        """value_kinds of a string at `key`."""
        kinds = self._kinds.get((text, key))
        if kinds is None:
            kinds = self._kinds[text, key] = frozenset(value_kinds(text, key, self))
        return kinds


def value_kinds(value: Any, key: str, scans: Scans | None = None) -> set[str]:
    """The kinds of personal data a scalar value at `key` looks like (by key and by value)."""
    kinds: set[str] = set()
    if isinstance(value, str):
        if value.strip():
            found = (scans or Scans())(value, pii.is_phone_key(key))
            kinds.update(f.kind for f in found)
            kinds |= pii.kinds_of_key(key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        kinds |= pii.number_kinds(value)
        if pii.is_phone_key(key) and len(str(abs(int(value)))) >= 7:
            kinds.add(pii.PiiKind.PHONE)
        if pii.kinds_of_key(key) & {pii.PiiKind.ADDRESS}:
            kinds.add(pii.PiiKind.ADDRESS)  # a zip code as a number
    return kinds


def event_shape(sections: Mapping[str, Any], scans: Scans | None = None) -> EventShape:
    """The paths of an event's sections (data, variables, user_info), breadth first, so that
    the caps keep the shallow paths of a huge payload."""
    scans = scans or Scans()
    shape = EventShape()
    queue: list[tuple[str, Any, str, int]] = []
    for section in SECTIONS:
        value = sections.get(section)
        if isinstance(value, dict):
            queue += [(section + key_segment(k), v, k, 1) for k, v in value.items()]
    paths = shape.paths
    text_kinds = scans.text_kinds
    for path, value, key, depth in queue:  # a list's iterator sees what the walk appends
        if len(path) > MAX_PATH_LENGTH:
            shape.truncated = True
            continue
        kind = _JSON_TYPES.get(type(value)) or json_type(value)
        known = paths.get(path)
        if known is None:
            if len(paths) >= MAX_PATHS_PER_EVENT:
                shape.truncated = True
                continue
            known = paths[path] = PathShape({kind})
        else:
            known.types.add(kind)
        if kind == JsonType.STRING:
            found = text_kinds(value, key)
            if found:
                known.kinds = known.kinds | found
        elif isinstance(value, dict):
            if depth >= MAX_DEPTH:
                shape.truncated = bool(value) or shape.truncated
                continue
            queue += [(path + key_segment(k), v, k, depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            if depth >= MAX_DEPTH:
                shape.truncated = bool(value) or shape.truncated
                continue
            queue += [(path + "[]", item, key, depth + 1) for item in value]
        else:
            other = value_kinds(value, key, scans)
            if other:
                known.kinds = known.kinds.union(other)
    return shape


@dataclass(frozen=True)
class Review:
    """What a project owner said about the paths of an event: confirmed paths (with the kind
    shown in their placeholder) are always redacted; dismissed ones are no longer redacted by
    their key alone (what a value detector finds in them still is)."""

    confirmed: Mapping[str, str] = field(default_factory=dict)
    dismissed: frozenset[str] = frozenset()


def redacted_example(
    sections: Mapping[str, Any], review: Review = Review(), scans: Scans | None = None
) -> dict[str, Any]:
    """The event's sections with every likely piece of personal data redacted, and cut to a
    bounded size: emails masked (`j***@example.com`), other kinds `[REDACTED:<kind>]`."""
    scans = scans or Scans()
    example: dict[str, Any] = {}
    for section in SECTIONS:
        value = sections.get(section)
        if isinstance(value, dict):
            example[section] = _redact_object(section, value, review, 1, scans)
    return example


def _redact_object(
    path: str, value: Mapping[str, Any], review: Review, depth: int, scans: Scans
) -> dict[str, Any]:
    redacted: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if index >= EXAMPLE_MAX_KEYS:
            redacted["…"] = TRUNCATED
            break
        redacted[pii.redact_key(key)] = _redact(path + key_segment(key), item, key, review, depth, scans)
    return redacted


def _redact(path: str, value: Any, key: str, review: Review, depth: int, scans: Scans) -> Any:
    if path in review.confirmed:
        return pii.placeholder(review.confirmed[path])
    if len(path) > MAX_PATH_LENGTH or depth > MAX_DEPTH:
        return TRUNCATED
    if isinstance(value, dict):
        return _redact_object(path, value, review, depth + 1, scans)
    if isinstance(value, list):
        items = [
            _redact(path + "[]", item, key, review, depth + 1, scans) for item in value[:EXAMPLE_MAX_ITEMS]
        ]
        return items + ([TRUNCATED] if len(value) > EXAMPLE_MAX_ITEMS else [])
    by_key = pii.kinds_of_key(key)
    if by_key and path not in review.dismissed and value not in (None, "") and not isinstance(value, bool):
        return pii.placeholder(sorted(by_key)[0])
    if isinstance(value, str):
        text = pii.redact_text(value, scans(value, pii.is_phone_key(key)))
        return text if len(text) <= EXAMPLE_MAX_STRING else text[:EXAMPLE_MAX_STRING] + "…"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        kinds = value_kinds(value, key, scans) - {pii.PiiKind.ADDRESS}
        if kinds:
            return pii.placeholder(sorted(kinds)[0])
    return value


# What the catalog answers.


@dataclass(frozen=True)
class SourceCount:
    type: str
    count: int


@dataclass(frozen=True)
class TypeHint:
    type: str
    count: int
    first_seen: datetime
    last_seen: datetime
    drift: bool


@dataclass(frozen=True)
class PathHint:
    path: str
    count: int
    first_seen: datetime
    last_seen: datetime
    drift: bool
    types: tuple[TypeHint, ...]


@dataclass(frozen=True)
class PiiFlag:
    path: str
    kinds: tuple[str, ...]
    status: str
    reviewed_at: datetime | None


@dataclass(frozen=True)
class Example:
    event_id: str
    accepted_at: datetime
    source: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class CatalogEntry:
    """An event name as the catalog lists it."""

    name: str
    first_seen: datetime
    last_seen: datetime
    count: int
    sources: tuple[SourceCount, ...]
    pii_paths: int
    drift: bool


@dataclass(frozen=True)
class CatalogDetail:
    entry: CatalogEntry
    paths: tuple[PathHint, ...]
    pii: tuple[PiiFlag, ...]
    examples: tuple[Example, ...]
    truncated: bool


def pii_status(kinds: tuple[str, ...], review: str) -> str | None:
    """A path's PII flag: None when nothing was detected and nobody confirmed it."""
    if review in (PiiStatus.CONFIRMED, PiiStatus.DISMISSED):
        return review
    return PiiStatus.DETECTED if kinds else None


def confirmed_kind(kinds: tuple[str, ...]) -> str:
    """The placeholder's kind for a confirmed path: its first detected kind, else `pii`."""
    return sorted(kinds)[0] if kinds else pii.PiiKind.CONFIRMED
