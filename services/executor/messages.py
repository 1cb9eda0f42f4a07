"""The executor's bus messages: run starts in, step tasks and tracking records out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from herald.bus.v1 import event_pb2, run_pb2, tracking_pb2
from kernel.bus import OutgoingMessage, event_subject, step_subject
from kernel.clock import to_timestamp, utcnow
from kernel.documents import condition_data
from kernel.steps import step_from_proto
from kernel.structs import to_struct
from kernel.tracking import tracking_message
from services.executor.domain import DeadLetter, Run, RunStatus, StepState, StepStatus, delivery_id


def render_context(event: event_pb2.Event) -> dict[str, Any]:
    """What templates see: the variables at the top level, plus `contact`, `event` and `variables`."""
    data = condition_data(event)
    return {**data["variables"], **data}


def run_from_start(start: run_pb2.RunStart) -> Run:
    steps = [
        StepState(spec=step_from_proto(step), position=position)
        for position, step in enumerate(start.workflow.steps)
    ]
    return Run(
        id=uuid.UUID(start.run_id),
        team_id=start.project_id,
        trigger_id=uuid.UUID(start.trigger_id),
        event_id=uuid.UUID(start.event.event_id),
        workflow_key=start.workflow.key,
        workflow_version=start.workflow.version,
        contact_id=start.event.contact.id,
        context=render_context(start.event),
        steps=steps,
    )


def _fact(fact_id: str, run: Run) -> str:
    """Facts of a run that was replayed from the dead letters are new facts."""
    return f"{fact_id}:replay-{run.replays}" if run.replays else fact_id


def step_task(run: Run, step: StepState) -> OutgoingMessage:
    channel = step.spec.channel
    assert channel is not None
    task = run_pb2.StepTask(
        run_id=str(run.id),
        trigger_id=str(run.trigger_id),
        project_id=run.team_id,
        step_id=step.spec.id,
        channel=channel,
    )
    return OutgoingMessage(
        step_subject(channel, run.team_id),
        task.SerializeToString(),
        msg_id=_fact(f"{run.id}:{step.spec.id}", run),
        project_id=run.team_id,
    )


def _record(run: Run, **kind: Any) -> tracking_pb2.TrackingRecord:
    return tracking_pb2.TrackingRecord(trigger_id=str(run.trigger_id), project_id=run.team_id, **kind)


def run_started_record(run: Run) -> OutgoingMessage:
    record = _record(
        run,
        run_started=tracking_pb2.RunStarted(
            run_id=str(run.id),
            workflow_key=run.workflow_key,
            workflow_version=run.workflow_version,
            contact_id=run.contact_id,
        ),
    )
    return tracking_message(record, fact_id=str(run.id))


def delivery_record(run: Run, step: StepState) -> OutgoingMessage:
    identifier = delivery_id(run.id, step.spec.id)
    outcome = (
        tracking_pb2.DELIVERY_OUTCOME_SENT
        if step.status == StepStatus.SENT
        else tracking_pb2.DELIVERY_OUTCOME_FAILED
    )
    record = _record(
        run,
        delivery_recorded=tracking_pb2.DeliveryRecorded(
            delivery_id=str(identifier),
            run_id=str(run.id),
            step_id=step.spec.id,
            channel=step.spec.channel or "",
            outcome=outcome,
            attempts=step.attempts,
            detail=step.detail[:2000],
        ),
    )
    return tracking_message(record, fact_id=_fact(str(identifier), run))


def run_finished_record(run: Run) -> OutgoingMessage:
    outcome = (
        tracking_pb2.RUN_OUTCOME_COMPLETED
        if run.status == RunStatus.COMPLETED
        else tracking_pb2.RUN_OUTCOME_FAILED
    )
    failed = next((step for step in run.steps if step.status == StepStatus.FAILED), None)
    record = _record(
        run,
        run_finished=tracking_pb2.RunFinished(
            run_id=str(run.id),
            outcome=outcome,
            detail=f"step {failed.spec.id!r} failed: {failed.detail}"[:2000] if failed else "",
        ),
    )
    return tracking_message(record, fact_id=_fact(str(run.id), run))


def dead_letter(run: Run, step: StepState, at: datetime) -> DeadLetter:
    return DeadLetter(
        id=delivery_id(run.id, step.spec.id),
        team_id=run.team_id,
        run_id=run.id,
        trigger_id=run.trigger_id,
        step_id=step.spec.id,
        channel=step.spec.channel or "",
        error=step.detail[:2000],
        attempts=step.attempts,
        failed_at=at,
    )


# The system events a message step's outcome emits, by channel: (on sent, on failed).
SYSTEM_EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "email": (("herald.mail.send", "herald.mail.delivery"), ("herald.mail.delivery",)),
    "sms": (("herald.sms.send",), ("herald.sms.send",)),
    "push": (("herald.push.send",), ("herald.push.send",)),
    "webhook": (("herald.webhook.delivery",), ("herald.webhook.delivery",)),
}


def delivery_events(run: Run, step: StepState) -> list[OutgoingMessage]:
    """The `herald.*` events a delivery's outcome emits onto EVENTS."""
    on_sent, on_failed = SYSTEM_EVENTS.get(step.spec.channel or "", ((), ()))
    names = on_sent if step.status == StepStatus.SENT else on_failed
    data = {
        "outcome": step.status,
        "channel": step.spec.channel,
        "workflow": run.workflow_key,
        "run_id": str(run.id),
        "step_id": step.spec.id,
        "delivery_id": str(delivery_id(run.id, step.spec.id)),
        "attempts": step.attempts,
        "detail": step.detail[:1000],
    }
    return [system_event(run, name, data, f"{step.spec.id}") for name in names]


def run_events(run: Run) -> list[OutgoingMessage]:
    """herald.workflow.completed or herald.workflow.failed, when the run has ended."""
    if run.status == RunStatus.RUNNING:
        return []
    failed = next((step for step in run.steps if step.status == StepStatus.FAILED), None)
    data = {
        "workflow": run.workflow_key,
        "workflow_version": run.workflow_version,
        "run_id": str(run.id),
        "trigger_id": str(run.trigger_id),
        "failed_step": failed.spec.id if failed else "",
        "detail": failed.detail[:1000] if failed else "",
    }
    return [system_event(run, f"herald.workflow.{run.status}", data, "run")]


def system_event(run: Run, name: str, data: dict[str, Any], part: str) -> OutgoingMessage:
    """A `herald.*` event about the run's contact, on EVENTS, as its own trigger: its id is
    derived from the run, so a repeated publish is dropped."""
    event_id = uuid.uuid5(run.id, _fact(f"{name}/{part}", run))
    contact = run.context.get("contact") or {}
    depth = int((run.context.get("event") or {}).get("depth") or 0) + 1
    now = to_timestamp(utcnow())
    event = event_pb2.Event(
        event_id=str(event_id),
        trigger_id=str(event_id),
        project_id=run.team_id,
        name=name,
        contact=event_pb2.Contact(
            id=str(contact.get("id") or run.contact_id),
            external_id=str(contact.get("external_id") or ""),
            email=str(contact.get("email") or ""),
            phone=str(contact.get("phone") or ""),
            name=str(contact.get("name") or ""),
            tags=list(contact.get("tags") or []),
            custom_fields=to_struct(contact.get("custom_fields") or {}),
            topics=list(contact.get("topics") or []),
        ),
        data=to_struct(data),
        variables=to_struct(run.context.get("variables") or {}),
        source=event_pb2.Source(type="system"),
        occurred_at=now,
        accepted_at=now,
        depth=depth,
    )
    return OutgoingMessage(
        event_subject(run.team_id, name),
        event.SerializeToString(),
        msg_id=str(event_id),
        project_id=run.team_id,
    )
