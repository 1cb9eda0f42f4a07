"""Workflow steps: the shape the matcher validates and stores and the executor runs.

A step is one entry of a workflow definition's `steps` (`herald.workflow.v1.Step`). Message steps
deliver something on a channel; flow steps (delay, wait_for_event, branch, exit) move the run.
Steps run in order; `branch` and `on_timeout` jump forward to a later step, so a run visits each
step at most once and always ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format

from herald.workflow.v1 import workflow_pb2
from kernel.conditions import ConditionError, compile_condition
from kernel.durations import parse_duration
from kernel.errors import InvalidArgument
from kernel.event_names import check_format
from kernel.structs import from_value
from kernel.templates import TemplateError, compile_template

STEP_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
HEADER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# The channel each message step type is delivered on.
CHANNEL_OF_STEP_TYPE = {
    "email": "email",
    "sms": "sms",
    "push": "push",
    "webhook": "webhook",
    "in_app": "in_app",
}
FLOW_STEP_TYPES = ("delay", "wait_for_event", "branch", "exit")
STEP_TYPES = (*CHANNEL_OF_STEP_TYPE, *FLOW_STEP_TYPES)
WEBHOOK_METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
# What conditions (branch, wait_for_event's match) may read.
CONDITION_NAMES = ("event", "contact", "variables")
MAX_ATTEMPTS = 20
MAX_WAIT = timedelta(days=366)
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
# Headers a webhook step may not set: Herald sets them, or they belong to the connection.
HERALD_HEADERS = frozenset({"content-length", "host", "idempotency-key", "transfer-encoding", "connection"})

# The fields each step type uses, besides id and type; any other field set is a mistake.
FIELDS_OF_TYPE: dict[str, frozenset[str]] = {
    "email": frozenset({"subject", "body", "html", "max_attempts"}),
    "sms": frozenset({"body", "max_attempts"}),
    "push": frozenset({"title", "body", "url", "max_attempts"}),
    "in_app": frozenset({"title", "body", "url", "max_attempts"}),
    "webhook": frozenset({"url", "method", "headers", "body", "max_attempts"}),
    "delay": frozenset({"duration", "until"}),
    "wait_for_event": frozenset({"event", "timeout", "match", "on_timeout"}),
    "branch": frozenset({"condition", "then", "else_"}),
    "exit": frozenset(),
}
# Field names as the JSON document writes them.
_JSON_NAME = {"else_": "else"}


@dataclass(frozen=True)
class StepSpec:
    """One step of a workflow definition. Which fields apply depends on `type`."""

    id: str
    type: str
    subject: str = ""
    body: Any = None
    html: str = ""
    title: str = ""
    url: str = ""
    method: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int = 0
    duration: str = ""
    until: str = ""
    event: str = ""
    timeout: str = ""
    match: str = ""
    on_timeout: str = ""
    condition: str = ""
    then: str = ""
    else_: str = ""

    @property
    def channel(self) -> str | None:
        """The channel a message step is delivered on; None for a flow step."""
        return CHANNEL_OF_STEP_TYPE.get(self.type)

    @property
    def jumps(self) -> tuple[str, ...]:
        """The step ids this step may jump to."""
        return tuple(target for target in (self.then, self.else_, self.on_timeout) if target)

    def document(self) -> dict[str, Any]:
        """The step as a JSON document, without the fields left unset."""
        document: dict[str, Any] = {"id": self.id, "type": self.type}
        for name in self.set_fields():
            value = getattr(self, name)
            document[_JSON_NAME.get(name, name)] = dict(value) if name == "headers" else value
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> StepSpec:
        known = {item.name for item in fields(cls)}
        values = {}
        for key, value in document.items():
            name = "else_" if key == "else" else key
            if name in known:
                values[name] = value
        return cls(**values)

    def set_fields(self) -> Iterator[str]:
        """The names of the type-specific fields that are set."""
        for item in fields(self):
            if item.name in ("id", "type"):
                continue
            value = getattr(self, item.name)
            if (item.name == "headers" and value) or (item.name != "headers" and value != item.default):
                yield item.name


def step_from_proto(step: workflow_pb2.Step) -> StepSpec:
    return StepSpec(
        id=step.id.strip(),
        type=step.type.strip(),
        subject=step.subject,
        body=from_value(step.body) if step.HasField("body") else None,
        html=step.html,
        title=step.title,
        url=step.url.strip(),
        method=step.method.strip().upper(),
        headers=dict(step.headers),
        max_attempts=step.max_attempts,
        duration=step.duration.strip(),
        until=step.until.strip(),
        event=step.event.strip(),
        timeout=step.timeout.strip(),
        match=step.match.strip(),
        on_timeout=step.on_timeout.strip(),
        condition=step.condition.strip(),
        then=step.then.strip(),
        else_=getattr(step, "else").strip(),
    )


def step_to_proto(spec: StepSpec, into: workflow_pb2.Step) -> None:
    into.id, into.type = spec.id, spec.type
    for name in spec.set_fields():
        value = getattr(spec, name)
        if name == "body":
            json_format.ParseDict(value, into.body)
        elif name == "headers":
            into.headers.update(value)
        else:
            setattr(into, _JSON_NAME.get(name, name), value)


@dataclass
class Problems:
    """Every problem of a definition, each naming the field it is about."""

    problems: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def raise_if_any(self, what: str = "workflow") -> None:
        if self.problems:
            raise InvalidArgument(
                f"Invalid {what}: " + "; ".join(self.problems),
                reason=f"INVALID_{what.upper()}",
                metadata={"problems": " | ".join(self.problems)[:2000]},
            )


def validated_steps(steps: tuple[StepSpec, ...], problems: Problems) -> tuple[StepSpec, ...]:
    """`steps` with default ids filled in; every problem goes to `problems`, naming the step and
    field: unknown types, fields that do not apply, bad templates and conditions, jumps to
    missing or earlier steps, unreachable steps."""
    if not steps:
        problems.add("steps", "a workflow needs at least one step")
        return steps
    named = tuple(
        replace(step, id=step.id or f"step-{index + 1}", method=step.method.upper())
        for index, step in enumerate(steps)
    )
    position: dict[str, int] = {}
    for index, step in enumerate(named):
        if not STEP_ID_PATTERN.fullmatch(step.id):
            problems.add(f"steps[{index}].id", "use 1-64 letters, digits, '-' or '_'")
        if step.id in position:
            problems.add(f"steps[{index}].id", f"{step.id!r} is used by an earlier step")
        else:
            position[step.id] = index
    for index, step in enumerate(named):
        _check_step(index, step, position, problems)
    for index in sorted(set(range(len(named))) - _reachable(named, position)):
        problems.add(f"steps[{index}]", f"{named[index].id!r} is unreachable: no step leads to it")
    return named


def _check_step(index: int, step: StepSpec, position: Mapping[str, int], problems: Problems) -> None:
    where = f"steps[{index}]"
    if step.type not in FIELDS_OF_TYPE:
        problems.add(
            f"{where}.type", f"{step.type or '(empty)'!r} is not a step type ({', '.join(STEP_TYPES)})"
        )
        return
    for name in sorted(set(step.set_fields()) - FIELDS_OF_TYPE[step.type]):
        problems.add(f"{where}.{_JSON_NAME.get(name, name)}", f"does not apply to {_a(step.type)} step")
    check = _CHECKS.get(step.type)
    if check is not None:
        check(where, step, problems)
    if step.channel is not None and not 0 <= step.max_attempts <= MAX_ATTEMPTS:
        problems.add(f"{where}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS} (0: the default)")
    for name in ("then", "else_", "on_timeout"):
        target = getattr(step, name)
        if not target or name not in FIELDS_OF_TYPE[step.type]:
            continue
        if target not in position:
            problems.add(f"{where}.{_JSON_NAME.get(name, name)}", f"no step has the id {target!r}")
        elif position[target] <= index:
            problems.add(
                f"{where}.{_JSON_NAME.get(name, name)}",
                f"{target!r} is not a later step: steps only jump forward",
            )


def _a(step_type: str) -> str:
    return f"{'an' if step_type[:1] in 'aeiou' else 'a'} {step_type}"


def _template(where: str, source: str, problems: Problems) -> None:
    try:
        compile_template(source)
    except TemplateError as error:
        problems.add(where, str(error))


def _required_text(where: str, step: StepSpec, name: str, problems: Problems) -> None:
    value = getattr(step, name)
    if not isinstance(value, str) or not value.strip():
        problems.add(f"{where}.{name}", f"is required for {_a(step.type)} step and must be a string")


def _templates(where: str, step: StepSpec, names: tuple[str, ...], problems: Problems) -> None:
    for name in names:
        value = getattr(step, name)
        if isinstance(value, str) and value:
            _template(f"{where}.{name}", value, problems)


def _check_email(where: str, step: StepSpec, problems: Problems) -> None:
    _required_text(where, step, "subject", problems)
    _required_text(where, step, "body", problems)
    _templates(where, step, ("subject", "body", "html"), problems)


def _check_sms(where: str, step: StepSpec, problems: Problems) -> None:
    _required_text(where, step, "body", problems)
    _templates(where, step, ("body",), problems)


def _check_notification(where: str, step: StepSpec, problems: Problems) -> None:
    _required_text(where, step, "body", problems)
    _templates(where, step, ("title", "body", "url"), problems)


def _check_webhook(where: str, step: StepSpec, problems: Problems) -> None:
    if not step.url:
        problems.add(f"{where}.url", "is required for a webhook step")
    elif "{{" in step.url:
        _template(f"{where}.url", step.url, problems)
    elif not is_http_url(step.url):
        problems.add(f"{where}.url", f"{step.url[:100]!r} is not an http:// or https:// URL")
    if step.method and step.method not in WEBHOOK_METHODS:
        problems.add(f"{where}.method", f"{step.method[:20]!r} is not one of {', '.join(WEBHOOK_METHODS)}")
    for name, value in checked_headers(step.headers, f"{where}.headers", problems):
        _template(f"{where}.headers.{name}", value, problems)
    for path, text in _strings(step.body, f"{where}.body"):
        _template(path, text, problems)


def checked_headers(headers: Mapping[str, str], where: str, problems: Problems) -> Iterator[tuple[str, str]]:
    """The headers Herald may send as given (webhook steps, providers); the others go to
    `problems`: invalid names, names Herald sets, values with line breaks, too many."""
    if len(headers) > MAX_HEADERS:
        problems.add(where, f"at most {MAX_HEADERS} headers")
    for name, value in headers.items():
        if not HEADER_NAME_PATTERN.fullmatch(name):
            problems.add(where, f"{name[:100]!r} is not a valid header name")
        elif name.lower().startswith("webhook-") or name.lower() in HERALD_HEADERS:
            problems.add(f"{where}.{name}", "is set by Herald")
        elif "\n" in value or "\r" in value or len(value) > MAX_HEADER_VALUE:
            problems.add(
                f"{where}.{name}", f"a value has at most {MAX_HEADER_VALUE} characters and no line breaks"
            )
        else:
            yield name, value


def is_http_url(url: str) -> bool:
    """Is `url` an http:// or https:// URL with a host."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # urlsplit refuses a malformed host, e.g. "http://[::1"
        return False


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, with where it is."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _check_delay(where: str, step: StepSpec, problems: Problems) -> None:
    if bool(step.duration) == bool(step.until):
        problems.add(where, "a delay step needs either duration (e.g. P1D) or until (a timestamp template)")
    if step.duration:
        _check_period(f"{where}.duration", step.duration, problems)
    if step.until and "{{" in step.until:
        _template(f"{where}.until", step.until, problems)
    elif step.until:
        try:
            literal = datetime.fromisoformat(step.until)
        except ValueError:
            literal = None
        if literal is None or literal.tzinfo is None:
            problems.add(
                f"{where}.until", f"{step.until[:40]!r} is not an RFC 3339 timestamp with a time zone"
            )


def _check_wait(where: str, step: StepSpec, problems: Problems) -> None:
    if not step.event:
        problems.add(f"{where}.event", "is required: the event name to wait for")
    else:
        try:
            check_format(step.event)
        except InvalidArgument as error:
            problems.add(f"{where}.event", error.message)
    if not step.timeout:
        problems.add(f"{where}.timeout", "is required: how long to wait (e.g. P3D)")
    else:
        _check_period(f"{where}.timeout", step.timeout, problems)
    if step.match:
        _condition(f"{where}.match", step.match, problems)


def _check_branch(where: str, step: StepSpec, problems: Problems) -> None:
    if not step.condition:
        problems.add(f"{where}.condition", "is required for a branch step")
    else:
        _condition(f"{where}.condition", step.condition, problems)


def _check_period(where: str, text: str, problems: Problems) -> None:
    try:
        period = parse_duration(text)
    except ValueError as error:
        problems.add(where, str(error))
        return
    if not timedelta(0) < period <= MAX_WAIT:
        problems.add(where, "must be longer than zero and at most 366 days")


def _condition(where: str, source: str, problems: Problems) -> None:
    try:
        compile_condition(source, CONDITION_NAMES)
    except ConditionError as error:
        problems.add(where, str(error))


_CHECKS = {
    "email": _check_email,
    "sms": _check_sms,
    "push": _check_notification,
    "in_app": _check_notification,
    "webhook": _check_webhook,
    "delay": _check_delay,
    "wait_for_event": _check_wait,
    "branch": _check_branch,
}


def successors(steps: tuple[StepSpec, ...], index: int, position: Mapping[str, int]) -> set[int]:
    """The steps that may run right after step `index`."""
    step = steps[index]
    following = {index + 1} if index + 1 < len(steps) else set()
    if step.type == "exit":
        return set()
    if step.type == "branch":
        return {position.get(step.then, index + 1), position.get(step.else_, index + 1)} & set(
            range(len(steps))
        )
    if step.type == "wait_for_event":
        return following | ({position[step.on_timeout]} if step.on_timeout in position else set())
    return following


def _reachable(steps: tuple[StepSpec, ...], position: Mapping[str, int]) -> set[int]:
    seen, frontier = {0}, [0]
    while frontier:
        for following in successors(steps, frontier.pop(), position) - seen:
            seen.add(following)
            frontier.append(following)
    return seen
