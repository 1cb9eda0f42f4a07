"""The matcher's bus messages and the Workflow contract, to and from its domain."""

from __future__ import annotations

import uuid

from google.protobuf import json_format

from herald.bus.v1 import event_pb2, run_pb2, tracking_pb2
from herald.matcher.v1 import matcher_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.bus import OutgoingMessage, event_subject, run_subject
from kernel.clock import isoformat_ms
from kernel.documents import condition_data
from kernel.steps import step_from_proto, step_to_proto
from kernel.structs import to_struct
from kernel.tracking import tracking_message
from services.matcher.domain import (
    AUDIENCE_ENTERED,
    Decision,
    Filters,
    MatchedEvent,
    Segment,
    Workflow,
    WorkflowDefinition,
)


def definition_from_proto(message: workflow_pb2.Workflow) -> WorkflowDefinition:
    return WorkflowDefinition(
        key=message.key,
        name=message.name,
        active=message.active if message.HasField("active") else True,
        trigger_event=message.trigger.event,
        steps=tuple(step_from_proto(step) for step in message.steps),
        filters=Filters(
            tags_any=tuple(message.filters.tags_any),
            tags_all=tuple(message.filters.tags_all),
            tags_none=tuple(message.filters.tags_none),
            cooldown=message.filters.cooldown.strip(),
            condition=message.filters.condition.strip(),
            topic=message.filters.topic.strip(),
            segment=message.filters.segment.strip(),
        ),
    )


def definition_to_proto(definition: WorkflowDefinition) -> workflow_pb2.Workflow:
    message = workflow_pb2.Workflow(
        key=definition.key,
        name=definition.name,
        active=definition.active,
        trigger=workflow_pb2.WorkflowTrigger(event=definition.trigger_event),
    )
    filters = definition.filters
    if filters != Filters():
        message.filters.CopyFrom(
            workflow_pb2.WorkflowFilters(
                tags_any=filters.tags_any,
                tags_all=filters.tags_all,
                tags_none=filters.tags_none,
                cooldown=filters.cooldown,
                condition=filters.condition,
                topic=filters.topic,
                segment=filters.segment,
            )
        )
    for step in definition.steps:
        step_to_proto(step, message.steps.add())
    return message


def workflow_to_proto(workflow: Workflow) -> workflow_pb2.Workflow:
    message = definition_to_proto(workflow.definition)
    message.version = workflow.version
    message.created_at = isoformat_ms(workflow.created_at)
    return message


def definition_document(definition: WorkflowDefinition) -> dict[str, object]:
    """The definition as the JSON document stored with each version."""
    return json_format.MessageToDict(definition_to_proto(definition), preserving_proto_field_name=True)


def definition_from_document(document: dict[str, object]) -> WorkflowDefinition:
    return definition_from_proto(json_format.ParseDict(document, workflow_pb2.Workflow()))


def matched_event(event: event_pb2.Event) -> MatchedEvent:
    contact = event.contact
    return MatchedEvent(
        event_id=uuid.UUID(event.event_id),
        trigger_id=uuid.UUID(event.trigger_id),
        team_id=event.project_id,
        name=event.name,
        contact_id=contact.id,
        tags=tuple(contact.tags),
        topics=tuple(contact.topics),
        depth=event.depth,
        condition_data=lambda: condition_data(event),
    )


def run_start(decision: Decision, event: event_pb2.Event) -> OutgoingMessage:
    assert decision.run_id is not None
    message = run_pb2.RunStart(
        run_id=str(decision.run_id),
        trigger_id=event.trigger_id,
        project_id=event.project_id,
        workflow=workflow_to_proto(decision.workflow),
        event=event,
    )
    return OutgoingMessage(
        run_subject(event.project_id),
        message.SerializeToString(),
        msg_id=str(decision.run_id),
        project_id=event.project_id,
    )


def matched_record(
    event: MatchedEvent, decisions: list[Decision], trigger_events: int = 0
) -> OutgoingMessage:
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(event.trigger_id),
        project_id=event.team_id,
        event_matched=tracking_pb2.EventMatched(
            event_id=str(event.event_id),
            event_name=event.name,
            decisions=[
                tracking_pb2.MatchDecision(
                    workflow_key=decision.workflow.key,
                    workflow_version=decision.workflow.version,
                    outcome=(
                        tracking_pb2.MATCH_OUTCOME_MATCHED
                        if decision.matched
                        else tracking_pb2.MATCH_OUTCOME_FILTERED
                    ),
                    reason=decision.reason,
                    run_id=str(decision.run_id) if decision.run_id else "",
                    contact_id=decision.contact_id,
                )
                for decision in decisions
            ],
            trigger_events=trigger_events,
        ),
    )
    return tracking_message(record, fact_id=str(event.event_id))


def system_trigger_record(event: event_pb2.Event) -> OutgoingMessage:
    """The tracker's TriggerAccepted for a run's system event that starts runs of its own, so its
    trigger can be followed like any other."""
    record = tracking_pb2.TrackingRecord(
        trigger_id=event.trigger_id,
        project_id=event.project_id,
        trigger_accepted=tracking_pb2.TriggerAccepted(
            event_id=event.event_id,
            event_name=event.name,
            contact_id=event.contact.id,
            created_at=event.accepted_at,
        ),
    )
    return tracking_message(record, fact_id=event.event_id)


def segment_from_proto(team_id: str, message: matcher_pb2.Segment) -> Segment:
    return Segment(team_id, message.key.strip(), message.name, message.condition)


def segment_to_proto(segment: Segment) -> matcher_pb2.Segment:
    return matcher_pb2.Segment(
        key=segment.key,
        name=segment.name,
        condition=segment.condition,
        created_at=isoformat_ms(segment.created_at) if segment.created_at else "",
        updated_at=isoformat_ms(segment.updated_at) if segment.updated_at else "",
    )


def audience_entered(event: event_pb2.Event, segment: Segment) -> OutgoingMessage:
    """`herald.audience.entered`: the event's contact is newly in `segment`. Its id is derived
    from the event and the segment, so a repeated publish is dropped."""
    event_id = str(uuid.uuid5(uuid.UUID(event.event_id), f"{AUDIENCE_ENTERED}/{segment.key}"))
    entered = event_pb2.Event(
        event_id=event_id,
        trigger_id=event_id,
        project_id=event.project_id,
        name=AUDIENCE_ENTERED,
        contact=event.contact,
        data=to_struct(
            {"segment": segment.key, "segment_name": segment.name, "cause_event_id": event.event_id}
        ),
        variables=event.variables,
        source=event_pb2.Source(type="system"),
        occurred_at=event.accepted_at,
        accepted_at=event.accepted_at,
        depth=event.depth + 1,
    )
    return OutgoingMessage(
        event_subject(event.project_id, AUDIENCE_ENTERED),
        entered.SerializeToString(),
        msg_id=event_id,
        project_id=event.project_id,
    )
