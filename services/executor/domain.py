"""The executor's domain: runs, their steps, and what a message step sends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kernel.templates import RenderLimits, TemplateError, render_template

DELIVERY_ID_NAMESPACE = uuid.UUID("0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50")
CHANNEL_OF_STEP_TYPE = {"email": "email"}


class RunStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class StepStatus:
    PENDING = "pending"
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    FINISHED = frozenset({SENT, FAILED})


@dataclass(frozen=True)
class StepSpec:
    """A step as the workflow version defines it."""

    id: str
    type: str
    subject: str = ""
    body: Any = None
    html: str = ""

    @property
    def channel(self) -> str | None:
        return CHANNEL_OF_STEP_TYPE.get(self.type)


@dataclass
class StepState:
    spec: StepSpec
    position: int
    status: str = StepStatus.PENDING
    attempts: int = 0
    detail: str = ""
    finished_at: datetime | None = None


@dataclass
class Run:
    id: uuid.UUID
    team_id: str
    trigger_id: uuid.UUID
    event_id: uuid.UUID
    workflow_key: str
    workflow_version: int
    contact_id: str
    context: dict[str, Any]
    steps: list[StepState]
    status: str = RunStatus.RUNNING
    created_at: datetime | None = None
    finished_at: datetime | None = None

    def step(self, step_id: str) -> StepState | None:
        return next((step for step in self.steps if step.spec.id == step_id), None)

    def next_pending(self) -> StepState | None:
        return next((step for step in self.steps if step.status == StepStatus.PENDING), None)

    def finish(self, status: str, at: datetime) -> None:
        self.status = status
        self.finished_at = at


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email, ready for a sender."""

    to: str
    subject: str
    text: str
    html: str
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)


class DeliveryError(Exception):
    """A send failed; `permanent` failures are not retried."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def delivery_id(run_id: uuid.UUID, step_id: str) -> uuid.UUID:
    """The delivery of one step of one run: the same on every retry and redelivery."""
    return uuid.uuid5(DELIVERY_ID_NAMESPACE, f"{run_id}/{step_id}")


def render_email(
    run: Run, step: StepSpec, message_domain: str, limits: RenderLimits | None = None
) -> OutgoingEmail:
    """The email a step sends to the run's contact, rendered from the run's context."""
    contact = run.context.get("contact") or {}
    address = contact.get("email") if isinstance(contact, dict) else None
    if not address:
        raise DeliveryError("the contact has no email address", permanent=True)
    try:
        # Only the HTML part is HTML: the subject and the text part are rendered unescaped.
        subject = render_template(step.subject, run.context, limits, escape_html=False)
        text = render_template(
            step.body if isinstance(step.body, str) else "", run.context, limits, escape_html=False
        )
        html = render_template(step.html, run.context, limits) if step.html else ""
    except TemplateError as error:
        raise DeliveryError(f"template failed: {error}", permanent=True) from error
    identifier = delivery_id(run.id, step.id)
    return OutgoingEmail(
        to=str(address),
        subject=" ".join(subject.split()),
        text=text,
        html=html,
        message_id=f"<{identifier}@{message_domain}>",
        headers={
            "X-Herald-Project": run.team_id,
            "X-Herald-Trigger": str(run.trigger_id),
            "X-Herald-Run": str(run.id),
            "X-Herald-Delivery": str(identifier),
        },
    )
