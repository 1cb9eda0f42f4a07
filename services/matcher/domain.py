"""The matcher's domain: workflow definitions, their validation, and match decisions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from kernel.conditions import SEGMENT_NAMES, ConditionError, compile_condition, contact_in_segment
from kernel.durations import parse_duration
from kernel.errors import InvalidArgument
from kernel.event_names import check_format
from kernel.labels import MAX_TAG, TOPIC_PATTERN, TOPIC_RULE
from kernel.steps import CONDITION_NAMES, Problems, StepSpec, validated_steps

# Workflow and segment keys.
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
KEY_RULE = "use 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit"
RUN_ID_NAMESPACE = uuid.UUID("6f1d3c1e-3c55-4c8e-9a55-6b1f0f0e8a10")
MAX_FILTER_TAGS = 50
MAX_COOLDOWN = timedelta(days=366)
AUDIENCE_ENTERED = "herald.audience.entered"
# A system event emitted by a run of a system event... is followed this deep, no deeper.
MAX_EVENT_DEPTH = 3


@dataclass(frozen=True)
class Filters:
    """Which (event, contact) pairs a workflow runs for: every filter set must pass."""

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_none: tuple[str, ...] = ()
    cooldown: str = ""  # an ISO 8601 duration, as written
    condition: str = ""
    topic: str = ""
    segment: str = ""

    @property
    def cooldown_period(self) -> timedelta | None:
        return parse_duration(self.cooldown) if self.cooldown else None


@dataclass(frozen=True)
class WorkflowDefinition:
    """What a user writes: a workflow without its version bookkeeping."""

    key: str
    name: str
    active: bool
    trigger_event: str
    steps: tuple[StepSpec, ...]
    filters: Filters = Filters()


@dataclass(frozen=True)
class Workflow:
    """A stored version of a workflow."""

    team_id: str
    definition: WorkflowDefinition
    version: int
    created_at: datetime
    deleted: bool = False

    @property
    def key(self) -> str:
        return self.definition.key


@dataclass(frozen=True)
class MatchedEvent:
    """What the matcher needs to know of an event: who it is about, and what conditions read
    (`data`: `event`, `contact` and `variables` as JSON)."""

    event_id: uuid.UUID
    trigger_id: uuid.UUID
    team_id: str
    name: str
    contact_id: str
    tags: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    # How many system events led to this one (0 for a customer's event).
    depth: int = 0
    # The segments the contact is in, as its snapshot in this event says.
    segments: frozenset[str] = frozenset()
    # Built only when a workflow's condition needs it: most events are matched without one.
    condition_data: Callable[[], dict[str, Any]] = dict

    @cached_property
    def data(self) -> dict[str, Any]:
        return self.condition_data()


@dataclass(frozen=True)
class Segment:
    """A named rule over a contact's fields."""

    team_id: str
    key: str
    name: str
    condition: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def holds_for(self, contact: dict[str, Any]) -> bool:
        """Is the contact in the segment; a condition that cannot be evaluated says no."""
        return contact_in_segment(self.condition, contact)


def validate_segment(segment: Segment) -> Segment:
    problems = Problems()
    if not KEY_PATTERN.fullmatch(segment.key):
        problems.add("key", KEY_RULE)
    if not segment.name.strip():
        problems.add("name", "is required")
    if not segment.condition.strip():
        problems.add("condition", "is required: a CEL expression over contact")
    else:
        try:
            compile_condition(segment.condition, SEGMENT_NAMES)
        except ConditionError as error:
            problems.add("condition", str(error))
    problems.raise_if_any("segment")
    return replace(segment, name=segment.name.strip(), condition=segment.condition.strip())


@dataclass(frozen=True)
class Decision:
    workflow: Workflow
    matched: bool
    reason: str = ""
    run_id: uuid.UUID | None = None
    contact_id: str = ""


def validate_definition(definition: WorkflowDefinition) -> WorkflowDefinition:
    """`definition` with default step ids filled in, or an InvalidArgument listing every problem."""
    problems = Problems()
    if not definition.key:
        problems.add("key", "is required")
    elif not KEY_PATTERN.fullmatch(definition.key):
        problems.add("key", KEY_RULE)
    if not definition.name.strip():
        problems.add("name", "is required")
    if not definition.trigger_event:
        problems.add("trigger.event", "is required: the event name that starts the workflow")
    else:
        try:
            check_format(definition.trigger_event)
        except InvalidArgument as error:
            problems.add("trigger.event", error.message)
    steps = validated_steps(definition.steps, problems)
    filters = _validated_filters(definition.filters, problems)
    problems.raise_if_any()
    return WorkflowDefinition(
        definition.key, definition.name.strip(), definition.active, definition.trigger_event, steps, filters
    )


def _validated_filters(filters: Filters, problems: Problems) -> Filters:
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("tags_any", "tags_all", "tags_none"):
        tags = tuple(dict.fromkeys(tag.strip() for tag in getattr(filters, name)))
        if len(tags) > MAX_FILTER_TAGS:
            problems.add(f"filters.{name}", f"at most {MAX_FILTER_TAGS} tags")
        for index, tag in enumerate(tags):
            if not tag or len(tag) > MAX_TAG:
                problems.add(f"filters.{name}[{index}]", f"a tag has 1 to {MAX_TAG} characters")
        lists[name] = tags
    both = set(lists["tags_none"]) & (set(lists["tags_any"]) | set(lists["tags_all"]))
    if both:
        problems.add("filters.tags_none", f"{', '.join(sorted(both))} also required: no contact could pass")
    if filters.cooldown:
        try:
            period = parse_duration(filters.cooldown)
            if not timedelta(0) < period <= MAX_COOLDOWN:
                problems.add("filters.cooldown", "must be longer than zero and at most 366 days")
        except ValueError as error:
            problems.add("filters.cooldown", str(error))
    if filters.condition:
        try:
            compile_condition(filters.condition, CONDITION_NAMES)
        except ConditionError as error:
            problems.add("filters.condition", str(error))
    if filters.topic and not TOPIC_PATTERN.fullmatch(filters.topic):
        problems.add("filters.topic", f"{filters.topic[:64]!r}: {TOPIC_RULE}")
    if filters.segment and not KEY_PATTERN.fullmatch(filters.segment):
        problems.add("filters.segment", f"{filters.segment[:64]!r}: {KEY_RULE}")
    return replace(
        filters, tags_any=lists["tags_any"], tags_all=lists["tags_all"], tags_none=lists["tags_none"]
    )


def run_id_for(event_id: uuid.UUID, workflow_key: str, contact_id: str) -> uuid.UUID:
    """The run of one workflow for one contact of one event: the same on every redelivery."""
    return uuid.uuid5(RUN_ID_NAMESPACE, f"{event_id}/{workflow_key}/{contact_id}")


def decide(event: MatchedEvent, workflows: list[Workflow]) -> list[Decision]:
    """For each workflow listening to the event: does it run, and if not, why not. A matched
    workflow with a cooldown still has to claim it (see `in_cooldown`)."""
    decisions = []
    for workflow in workflows:
        reason = filtered_because(event, workflow)
        if reason:
            decisions.append(Decision(workflow, matched=False, reason=reason, contact_id=event.contact_id))
            continue
        decisions.append(
            Decision(
                workflow,
                matched=True,
                contact_id=event.contact_id,
                run_id=run_id_for(event.event_id, workflow.key, event.contact_id),
            )
        )
    return decisions


def filtered_because(event: MatchedEvent, workflow: Workflow) -> str:
    """Why `workflow` does not run for `event`, or "" when every filter passes."""
    if workflow.deleted:
        return "workflow was deleted"
    if not workflow.definition.active:
        return "workflow is inactive"
    if event.depth > MAX_EVENT_DEPTH:
        return (
            f"{event.name} is the {event.depth}th system event in a chain of runs; at most "
            f"{MAX_EVENT_DEPTH} are followed, so workflows cannot trigger each other for ever"
        )
    filters = workflow.definition.filters
    if filters.topic and filters.topic not in event.topics:
        return f"contact is not subscribed to topic {filters.topic!r}"
    tags = set(event.tags)
    if filters.tags_any and not tags.intersection(filters.tags_any):
        return f"contact has none of the tags {_listed(filters.tags_any)} (tags_any)"
    missing = [tag for tag in filters.tags_all if tag not in tags]
    if missing:
        return f"contact lacks the tags {_listed(missing)} (tags_all)"
    excluded = [tag for tag in filters.tags_none if tag in tags]
    if excluded:
        return f"contact has the excluded tags {_listed(excluded)} (tags_none)"
    if filters.segment and filters.segment not in event.segments:
        return f"contact is not in segment {filters.segment!r}"
    if filters.condition:
        condition = compile_condition(filters.condition, CONDITION_NAMES)
        try:
            passed, failure = condition.evaluate(event.data), "was false"
        except ConditionError as error:
            passed, failure = False, f"could not be evaluated ({error})"
        if not passed:
            return f"condition {failure}: {filters.condition} [{condition.values_seen(event.data)}]"
    return ""


def in_cooldown(decision: Decision, until: datetime) -> Decision:
    """`decision`, filtered: the workflow ran for this contact within its cooldown."""
    return Decision(
        decision.workflow,
        matched=False,
        reason=(
            f"cooldown: ran for this contact within {decision.workflow.definition.filters.cooldown}; "
            f"it may run again after {until.isoformat(timespec='seconds')}"
        ),
        contact_id=decision.contact_id,
    )


def _listed(tags: tuple[str, ...] | list[str]) -> str:
    return ", ".join(tags)
