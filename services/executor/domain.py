"""The executor's domain: runs, their steps, and what a message step sends."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kernel.steps import CONDITION_NAMES, StepSpec, is_http_url
from kernel.templates import RenderLimits, TemplateError, render_template

DELIVERY_ID_NAMESPACE = uuid.UUID("0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50")


class RunStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class StepStatus:
    PENDING = "pending"
    # A message step handed to its channel worker.
    QUEUED = "queued"
    # A delay or wait_for_event step waiting for its time or its event.
    WAITING = "waiting"
    SENT = "sent"
    FAILED = "failed"
    # A flow step that has done its part.
    DONE = "done"
    # A step the run jumped over or never reached because it ended first.
    SKIPPED = "skipped"
    FINISHED = frozenset({SENT, FAILED, DONE, SKIPPED})


class TimerKind:
    DELAY = "delay"
    WAIT = "wait"


@dataclass
class StepState:
    spec: StepSpec
    position: int
    status: str = StepStatus.PENDING
    attempts: int = 0
    detail: str = ""
    finished_at: datetime | None = None

    def finish(self, status: str, detail: str, at: datetime) -> None:
        self.status, self.detail, self.finished_at = status, detail, at


@dataclass(frozen=True)
class Timer:
    """A run waiting: a delay until `due_at`, or a wait for `event` from the run's contact that
    times out at `due_at`."""

    run_id: uuid.UUID
    step_id: str
    team_id: str
    kind: str
    due_at: datetime
    contact_id: str = ""
    event: str = ""
    # Events received before this time (the run's own trigger time) do not end a wait.
    since: datetime | None = None


def waiting(step: StepState, timers: Sequence[Timer]) -> tuple[str, datetime | None]:
    """What an unfinished step waits for, in words, and until when (GetRun shows it)."""
    if step.status in StepStatus.FINISHED or step.status == StepStatus.PENDING:
        return "", None
    timer = next((t for t in timers if t.step_id == step.spec.id), None)
    if step.status == StepStatus.QUEUED:
        retry = f" (attempt {step.attempts + 1})" if step.attempts else ""
        return f"delivery on the {step.spec.channel} channel{retry}", None
    if timer is None:
        return "", None
    if timer.kind == TimerKind.WAIT:
        timeout = f"then step '{step.spec.on_timeout}'" if step.spec.on_timeout else "then the next step"
        return f"event '{timer.event}' from the same contact; on timeout, {timeout}", timer.due_at
    return "the end of the delay", timer.due_at


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
    # How many times a failed delivery of the run was replayed from the dead letters.
    replays: int = 0
    # Just after the acceptance of the event that ended the run's last wait: a later wait only
    # counts events accepted from then on, so one event never ends two waits.
    waited_until: datetime | None = None

    def step(self, step_id: str) -> StepState | None:
        return next((step for step in self.steps if step.spec.id == step_id), None)

    def next_pending(self) -> StepState | None:
        return next((step for step in self.steps if step.status == StepStatus.PENDING), None)

    def jump_to(self, step_id: str, at: datetime) -> None:
        """Skip every pending step before `step_id` (jumps only go forward)."""
        target = self.step(step_id)
        assert target is not None, f"no step {step_id!r}: definitions are validated when saved"
        for step in self.steps:
            if step.status == StepStatus.PENDING and step.position < target.position:
                step.finish(StepStatus.SKIPPED, f"skipped: the run jumped to {step_id!r}", at)

    def skip_rest(self, why: str, at: datetime) -> None:
        for step in self.steps:
            if step.status == StepStatus.PENDING:
                step.finish(StepStatus.SKIPPED, why, at)

    def finish(self, status: str, at: datetime) -> None:
        self.status = status
        self.finished_at = at

    @property
    def condition_data(self) -> dict[str, Any]:
        """What a branch condition reads: the run's event, contact and variables."""
        return {name: self.context.get(name) or {} for name in CONDITION_NAMES}

    @property
    def accepted_at(self) -> datetime | None:
        """When Herald accepted the event that started the run."""
        text = (self.context.get("event") or {}).get("accepted_at")
        return datetime.fromisoformat(text) if text else None

    @property
    def waits_since(self) -> datetime | None:
        """The events a new wait of the run may count were accepted at or after this time."""
        moments = [moment for moment in (self.accepted_at or self.created_at, self.waited_until) if moment]
        return max(moments) if moments else None


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email, ready for a sender."""

    to: str
    subject: str
    text: str
    html: str
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutgoingText:
    """One rendered SMS or push notification, for an HTTP provider."""

    channel: str
    project_id: str
    to: str
    body: str
    idempotency_key: str
    title: str = ""
    url: str = ""


@dataclass(frozen=True)
class OutgoingWebhook:
    """One rendered webhook request; `webhook_id` is the same on every attempt."""

    url: str
    method: str
    headers: dict[str, str]
    body: Any
    webhook_id: str


@dataclass(frozen=True)
class FeedItem:
    """One in-app message in a contact's feed."""

    id: uuid.UUID
    team_id: str
    contact_id: str
    external_id: str
    run_id: uuid.UUID
    step_id: str
    title: str
    body: str
    url: str
    created_at: datetime
    read_at: datetime | None = None


class DeadLetterStatus:
    DEAD = "dead"
    # Replayed: the delivery is queued again; if it fails again, the letter is dead again.
    REPLAYED = "replayed"


@dataclass
class DeadLetter:
    """A delivery that failed for good: permanently, or after its last attempt. Its id is the
    delivery id."""

    id: uuid.UUID
    team_id: str
    run_id: uuid.UUID
    trigger_id: uuid.UUID
    step_id: str
    channel: str
    error: str
    attempts: int
    failed_at: datetime
    status: str = DeadLetterStatus.DEAD
    replays: int = 0
    replayed_at: datetime | None = None


@dataclass(frozen=True)
class DeadLetterQuery:
    """Which dead letters to list, newest first (by failed_at, then id): empty filters take all."""

    limit: int
    status: str = ""
    channel: str = ""
    # The last letter of the previous page: the page starts strictly after it.
    after: tuple[datetime, uuid.UUID] | None = None


@dataclass(frozen=True)
class DeadLetterPage:
    letters: list[DeadLetter]
    # The last letter's position when more may follow; None on the last page.
    next_after: tuple[datetime, uuid.UUID] | None
    # The project's letters in status dead, whatever the filters.
    total: int


@dataclass(frozen=True)
class ProviderSettings:
    """A project's HTTP provider for SMS or push: Herald POSTs JSON to `url` with `headers`."""

    team_id: str
    channel: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    updated_at: datetime | None = None


class DeliveryError(Exception):
    """A send failed; `permanent` failures are not retried; `retry_after` (seconds) is what the
    provider asked for (HTTP 429 or 503 with Retry-After)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def is_webhook_secret(secret: str) -> bool:
    """Is `secret` whsec_ and base64 of 24 to 64 bytes, as Standard Webhooks asks."""
    prefix, _, encoded = secret.partition("_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    return prefix == "whsec" and 24 <= len(key) <= 64


def delivery_id(run_id: uuid.UUID, step_id: str) -> uuid.UUID:
    """The delivery of one step of one run: the same on every retry and redelivery."""
    return uuid.uuid5(DELIVERY_ID_NAMESPACE, f"{run_id}/{step_id}")


def render(source: str, run: Run, limits: RenderLimits | None = None, *, escape_html: bool = False) -> str:
    """`source` rendered over the run's context; a template failure fails the step for good."""
    try:
        return render_template(source, run.context, limits, escape_html=escape_html)
    except TemplateError as error:
        raise DeliveryError(f"template failed: {error}", permanent=True) from error


def _contact(run: Run) -> dict[str, Any]:
    contact = run.context.get("contact")
    return contact if isinstance(contact, dict) else {}


def render_email(
    run: Run, step: StepSpec, message_domain: str, limits: RenderLimits | None = None
) -> OutgoingEmail:
    """The email a step sends to the run's contact, rendered from the run's context."""
    address = _contact(run).get("email")
    if not address:
        raise DeliveryError("the contact has no email address", permanent=True)
    # Only the HTML part is HTML: the subject and the text part are rendered unescaped.
    subject = render(step.subject, run, limits)
    text = render(step.body if isinstance(step.body, str) else "", run, limits)
    html = render(step.html, run, limits, escape_html=True) if step.html else ""
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


def render_text(run: Run, step: StepSpec, limits: RenderLimits | None = None) -> OutgoingText:
    """The SMS (to the contact's phone) or push notification (to the contact's external id)."""
    contact = _contact(run)
    if step.type == "sms":
        to = contact.get("phone")
        if not to:
            raise DeliveryError("the contact has no phone number", permanent=True)
    else:
        to = contact.get("external_id") or contact.get("id")
    return OutgoingText(
        channel=step.type,
        project_id=run.team_id,
        to=str(to),
        body=render(step.body if isinstance(step.body, str) else "", run, limits),
        idempotency_key=str(delivery_id(run.id, step.id)),
        title=render(step.title, run, limits) if step.title else "",
        url=render(step.url, run, limits) if step.url else "",
    )


def render_webhook(run: Run, step: StepSpec, limits: RenderLimits | None = None) -> OutgoingWebhook:
    """The request a webhook step makes: every string of the body and headers rendered. Without a
    body, the run's event, contact and variables are sent."""
    url = render(step.url, run, limits)
    if not is_http_url(url):
        raise DeliveryError(
            f"the webhook URL {url[:200]!r} is not an http:// or https:// URL", permanent=True
        )
    method = step.method or "POST"
    if method == "GET":
        body: Any = None
    elif step.body is None:
        body = {
            "workflow": run.workflow_key,
            "run_id": str(run.id),
            "step_id": step.id,
            **run.condition_data,
        }
    else:
        body = _render_json(step.body, run, limits)
    headers = {name: render(value, run, limits) for name, value in step.headers.items()}
    for name, value in headers.items():
        if "\n" in value or "\r" in value or not value.isascii():
            raise DeliveryError(f"header {name} rendered a line break or non-ASCII text", permanent=True)
    return OutgoingWebhook(
        url=url,
        method=method,
        headers=headers,
        body=body,
        webhook_id=f"msg_{delivery_id(run.id, step.id).hex}",
    )


def _render_json(value: Any, run: Run, limits: RenderLimits | None) -> Any:
    if isinstance(value, str):
        return render(value, run, limits)
    if isinstance(value, dict):
        return {key: _render_json(item, run, limits) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_json(item, run, limits) for item in value]
    return value


def render_feed_item(run: Run, step: StepSpec, at: datetime, limits: RenderLimits | None = None) -> FeedItem:
    """The in-app message, in the feed of the contact's external id (the feed API's key)."""
    contact = _contact(run)
    if not contact.get("external_id"):
        raise DeliveryError("the contact has no external_id, so it has no feed to read", permanent=True)
    return FeedItem(
        id=delivery_id(run.id, step.id),
        team_id=run.team_id,
        contact_id=run.contact_id,
        external_id=str(contact.get("external_id") or ""),
        run_id=run.id,
        step_id=step.id,
        title=render(step.title, run, limits) if step.title else "",
        body=render(step.body if isinstance(step.body, str) else "", run, limits),
        url=render(step.url, run, limits) if step.url else "",
        created_at=at,
    )
