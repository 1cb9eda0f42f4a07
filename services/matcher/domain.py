"""The matcher's domain: workflow definitions, their validation, and match decisions."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kernel.errors import InvalidArgument
from kernel.event_names import check_format
from kernel.templates import TemplateError, compile_template

WORKFLOW_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
STEP_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MESSAGE_STEP_TYPES = frozenset({"email"})
RUN_ID_NAMESPACE = uuid.UUID("6f1d3c1e-3c55-4c8e-9a55-6b1f0f0e8a10")


@dataclass(frozen=True)
class Step:
    id: str
    type: str
    subject: str = ""
    body: Any = None
    html: str = ""


@dataclass(frozen=True)
class WorkflowDefinition:
    """What a user writes: a workflow without its version bookkeeping."""

    key: str
    name: str
    active: bool
    trigger_event: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Workflow:
    """A stored version of a workflow."""

    team_id: str
    definition: WorkflowDefinition
    version: int
    created_at: datetime

    @property
    def key(self) -> str:
        return self.definition.key


@dataclass(frozen=True)
class MatchedEvent:
    """What the matcher needs to know of an event."""

    event_id: uuid.UUID
    trigger_id: uuid.UUID
    team_id: str
    name: str
    contact_id: str


@dataclass(frozen=True)
class Decision:
    workflow: Workflow
    matched: bool
    reason: str = ""
    run_id: uuid.UUID | None = None
    contact_id: str = ""


@dataclass
class DefinitionProblems:
    """Every problem of a definition, each naming the field it is about."""

    problems: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise InvalidArgument(
                "Invalid workflow: " + "; ".join(self.problems),
                reason="INVALID_WORKFLOW",
                metadata={"problems": " | ".join(self.problems)[:2000]},
            )


def validate_definition(definition: WorkflowDefinition) -> WorkflowDefinition:
    """`definition` with default step ids filled in, or an InvalidArgument listing every problem."""
    problems = DefinitionProblems()
    if not definition.key:
        problems.add("key", "is required")
    elif not WORKFLOW_KEY_PATTERN.fullmatch(definition.key):
        problems.add(
            "key", "use 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    if not definition.name.strip():
        problems.add("name", "is required")
    if not definition.trigger_event:
        problems.add("trigger.event", "is required: the event name that starts the workflow")
    else:
        try:
            check_format(definition.trigger_event)
        except InvalidArgument as error:
            problems.add("trigger.event", error.message)
    if not definition.steps:
        problems.add("steps", "a workflow needs at least one step")
    steps = tuple(_validated_step(index, step, problems) for index, step in enumerate(definition.steps))
    seen: set[str] = set()
    for index, step in enumerate(steps):
        if step.id in seen:
            problems.add(f"steps[{index}].id", f"{step.id!r} is used by an earlier step")
        seen.add(step.id)
    problems.raise_if_any()
    return WorkflowDefinition(
        definition.key, definition.name.strip(), definition.active, definition.trigger_event, steps
    )


def _validated_step(index: int, step: Step, problems: DefinitionProblems) -> Step:
    where = f"steps[{index}]"
    step_id = step.id or f"step-{index + 1}"
    if not STEP_ID_PATTERN.fullmatch(step_id):
        problems.add(f"{where}.id", "use 1-64 letters, digits, '-' or '_'")
    if step.type not in MESSAGE_STEP_TYPES:
        supported = ", ".join(sorted(MESSAGE_STEP_TYPES))
        problems.add(
            f"{where}.type", f"{step.type or '(empty)'!r} is not a step type (supported: {supported})"
        )
        return Step(step_id, step.type)
    if not step.subject:
        problems.add(f"{where}.subject", "is required for an email step")
    if not isinstance(step.body, str) or not step.body:
        problems.add(f"{where}.body", "is required for an email step and must be a string")
    for name in ("subject", "body", "html"):
        source = getattr(step, name)
        if isinstance(source, str) and source:
            try:
                compile_template(source)
            except TemplateError as error:
                problems.add(f"{where}.{name}", str(error))
    return Step(step_id, step.type, step.subject, step.body, step.html)


def run_id_for(event_id: uuid.UUID, workflow_key: str, contact_id: str) -> uuid.UUID:
    """The run of one workflow for one contact of one event: the same on every redelivery."""
    return uuid.uuid5(RUN_ID_NAMESPACE, f"{event_id}/{workflow_key}/{contact_id}")


def decide(event: MatchedEvent, workflows: list[Workflow]) -> list[Decision]:
    """For each workflow listening to the event: does it run, and if not, why not."""
    decisions = []
    for workflow in workflows:
        if not workflow.definition.active:
            decisions.append(
                Decision(workflow, matched=False, reason="workflow is inactive", contact_id=event.contact_id)
            )
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
