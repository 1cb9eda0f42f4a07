"""The executor's bus messages: run starts in, step tasks and tracking records out."""

from __future__ import annotations

import uuid
from typing import Any

from herald.bus.v1 import event_pb2, run_pb2, tracking_pb2
from kernel.bus import OutgoingMessage, step_subject
from kernel.clock import from_timestamp, isoformat_ms
from kernel.structs import from_struct, from_value
from kernel.tracking import tracking_message
from services.executor.domain import Run, RunStatus, StepSpec, StepState, StepStatus, delivery_id


def render_context(event: event_pb2.Event) -> dict[str, Any]:
    """What templates see: the variables at the top level, plus `contact`, `event` and `variables`."""
    variables = from_struct(event.variables)
    contact = event.contact
    return {
        **variables,
        "variables": variables,
        "contact": {
            "id": contact.id,
            "external_id": contact.external_id,
            "email": contact.email,
            "phone": contact.phone,
            "name": contact.name,
            "tags": list(contact.tags),
            "topics": list(contact.topics),
            "custom_fields": from_struct(contact.custom_fields),
        },
        "event": {
            "id": event.event_id,
            "name": event.name,
            "data": from_struct(event.data),
            "source": {
                "type": event.source.type,
                "ip": event.source.ip,
                "user_agent": event.source.user_agent,
            },
            "occurred_at": isoformat_ms(from_timestamp(event.occurred_at))
            if event.HasField("occurred_at")
            else "",
        },
    }


def run_from_start(start: run_pb2.RunStart) -> Run:
    steps = [
        StepState(
            spec=StepSpec(
                id=step.id,
                type=step.type,
                subject=step.subject,
                body=from_value(step.body) if step.HasField("body") else None,
                html=step.html,
            ),
            position=position,
        )
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
        msg_id=f"{run.id}:{step.spec.id}",
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
    return tracking_message(record, fact_id=str(identifier))


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
    return tracking_message(record, fact_id=str(run.id))
