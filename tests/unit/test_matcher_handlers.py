"""The matcher's use cases: workflow definitions, and which workflows an event starts."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, run_pb2, tracking_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.errors import AlreadyExists, InvalidArgument, NotFound
from kernel.steps import StepSpec
from kernel.structs import from_struct, to_struct
from services.matcher.domain import Filters, Workflow, WorkflowDefinition, run_id_for, validate_definition
from services.matcher.handlers import (
    create_workflow,
    delete_workflow,
    get_workflow,
    list_workflows,
    match_event,
    match_events,
    update_workflow,
)
from services.matcher.messages import definition_from_proto, definition_to_proto
from tests.unit.fakes import FakeMatcherUnitOfWork

TEAM = "team-1"
CONTACT_ID = str(uuid.uuid4())


def a_definition(**fields: Any) -> WorkflowDefinition:
    values: dict[str, Any] = {
        "key": "welcome-email",
        "name": "Welcome Email",
        "active": True,
        "trigger_event": "user_signup",
        "steps": (
            StepSpec(id="welcome", type="email", subject="Welcome, {{contact.name}}", body="Hello {{name}}"),
        ),
    }
    values.update(fields)
    return WorkflowDefinition(**values)


def an_event(name: str = "user_signup", *, team: str = TEAM, contact_id: str = CONTACT_ID) -> event_pb2.Event:
    return event_pb2.Event(
        event_id=str(uuid.uuid4()),
        trigger_id=str(uuid.uuid4()),
        project_id=team,
        name=name,
        contact=event_pb2.Contact(id=contact_id, email="ada@example.com", name="Ada"),
        variables=to_struct({"name": "Ada", "score": 95}),
    )


def problems_of(error: InvalidArgument) -> list[str]:
    return error.metadata["problems"].split(" | ")


def matched_record(uow: FakeMatcherUnitOfWork) -> tracking_pb2.EventMatched:
    [message] = [m for m in uow.published if m.subject.startswith("tracking.")]
    return tracking_pb2.TrackingRecord.FromString(message.payload).event_matched


# --------------------------------------------------------------------------------------------
# create_workflow and its validation
# --------------------------------------------------------------------------------------------


async def test_create_workflow_stores_version_one_with_default_step_ids() -> None:
    uow = FakeMatcherUnitOfWork()
    definition = a_definition(
        name="  Welcome Email ",
        steps=(
            StepSpec(id="", type="email", subject="Hi", body="One"),
            StepSpec(id="", type="email", subject="Again", body="Two", html="<p>Two</p>"),
        ),
    )

    workflow = await create_workflow(TEAM, definition, uow)

    assert workflow.version == 1
    assert workflow.team_id == TEAM
    assert workflow.definition.name == "Welcome Email"
    assert [step.id for step in workflow.definition.steps] == ["step-1", "step-2"]
    assert workflow.definition.steps[1].html == "<p>Two</p>"
    assert await get_workflow(TEAM, "welcome-email", uow) == workflow
    assert uow.published == []


async def test_create_workflow_reports_every_problem_at_once_with_its_field() -> None:
    uow = FakeMatcherUnitOfWork()
    definition = a_definition(
        key="Welcome Email",
        name=" ",
        trigger_event="UserSignup",
        steps=(
            StepSpec(id="", type="fax", subject="Hi"),
            StepSpec(id="", type="email", subject="", body=None),
            StepSpec(id="third", type="email", subject="{{#if vip}}Hi", body={"not": "a string"}),
        ),
    )

    with pytest.raises(InvalidArgument) as raised:
        await create_workflow(TEAM, definition, uow)

    assert raised.value.reason == "INVALID_WORKFLOW"
    fields = [problem.split(":", 1)[0] for problem in problems_of(raised.value)]
    assert fields == [
        "key",
        "name",
        "trigger.event",
        "steps[0].type",
        "steps[1].subject",
        "steps[1].body",
        "steps[2].body",
        "steps[2].subject",
    ]
    assert raised.value.message.startswith("Invalid workflow: key: ")
    assert uow.workflows.rows == {}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"key": ""}, "key", "is required"),
        ({"key": "-welcome"}, "key", "lowercase letters"),
        ({"key": "a" * 101}, "key", "1-100"),
        ({"name": ""}, "name", "is required"),
        ({"trigger_event": ""}, "trigger.event", "is required"),
        ({"trigger_event": "purchase-completed"}, "trigger.event", "Invalid event name"),
        ({"steps": ()}, "steps", "at least one step"),
        ({"steps": (StepSpec(id="s", type="fax"),)}, "steps[0].type", "'fax' is not a step type"),
        ({"steps": (StepSpec(id="s", type=""),)}, "steps[0].type", "'(empty)' is not a step type"),
        ({"steps": (StepSpec(id="s", type="email", body="b"),)}, "steps[0].subject", "is required"),
        ({"steps": (StepSpec(id="s", type="email", subject="s"),)}, "steps[0].body", "is required"),
        (
            {"steps": (StepSpec(id="s", type="email", subject="s", body="{{#if x}}open"),)},
            "steps[0].body",
            "unclosed {{#if}}",
        ),
        (
            {"steps": (StepSpec(id="s", type="email", subject="s", body="b", html="{{#each x}}"),)},
            "steps[0].html",
            "unclosed {{#each}}",
        ),
        ({"steps": (StepSpec(id="bad id!", type="email", subject="s", body="b"),)}, "steps[0].id", "1-64"),
        (
            {
                "steps": (
                    StepSpec(id="same", type="email", subject="s", body="b"),
                    StepSpec(id="same", type="email", subject="s", body="b"),
                )
            },
            "steps[1].id",
            "'same' is used by an earlier step",
        ),
        (
            {
                "steps": (
                    StepSpec(id="step-2", type="email", subject="s", body="b"),
                    StepSpec(id="", type="email", subject="s", body="b"),
                )
            },
            "steps[1].id",
            "'step-2' is used by an earlier step",
        ),
    ],
)
async def test_create_workflow_rejects_a_bad_definition(
    changes: dict[str, Any], field: str, words: str
) -> None:
    uow = FakeMatcherUnitOfWork()

    with pytest.raises(InvalidArgument) as raised:
        await create_workflow(TEAM, a_definition(**changes), uow)

    [problem] = problems_of(raised.value)
    assert problem.startswith(f"{field}: ")
    assert words in problem
    assert uow.workflows.rows == {}


def test_a_workflow_may_listen_to_a_system_event() -> None:
    assert validate_definition(a_definition(trigger_event="herald.contact.created")).trigger_event == (
        "herald.contact.created"
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"key": "welcome\n"}, "key"),
        ({"steps": (StepSpec(id="welcome\n", type="email", subject="s", body="b"),)}, "steps[0].id"),
        ({"trigger_event": "user_signup\n"}, "trigger.event"),
    ],
)
def test_a_trailing_newline_is_not_a_valid_identifier(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_definition(a_definition(**changes))

    assert problems_of(raised.value)[0].startswith(f"{field}: ")


async def test_creating_a_workflow_twice_is_already_exists() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)

    with pytest.raises(AlreadyExists) as raised:
        await create_workflow(TEAM, a_definition(name="Another name"), uow)

    assert raised.value.reason == "WORKFLOW_EXISTS"
    assert raised.value.metadata == {"key": "welcome-email"}
    assert list(uow.workflows.rows) == [(TEAM, "welcome-email", 1)]
    assert (await get_workflow(TEAM, "welcome-email", uow)).definition.name == "Welcome Email"


async def test_the_same_key_in_another_team_is_a_different_workflow() -> None:
    uow = FakeMatcherUnitOfWork()

    await create_workflow("team-1", a_definition(), uow)
    await create_workflow("team-2", a_definition(), uow)

    assert len(uow.workflows.rows) == 2


# --------------------------------------------------------------------------------------------
# get_workflow and list_workflows
# --------------------------------------------------------------------------------------------


async def test_get_workflow_of_an_unknown_key_is_not_found() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow("team-2", a_definition(), uow)

    with pytest.raises(NotFound) as raised:
        await get_workflow(TEAM, "welcome-email", uow)

    assert raised.value.reason == "WORKFLOW_NOT_FOUND"
    assert raised.value.metadata == {"key": "welcome-email"}


async def test_list_workflows_answers_the_teams_workflows_by_key() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(key="welcome-email"), uow)
    await create_workflow(TEAM, a_definition(key="abandoned-cart", trigger_event="cart.abandoned"), uow)
    await create_workflow("team-2", a_definition(key="other-team"), uow)

    workflows = await list_workflows(TEAM, uow)

    assert [w.key for w in workflows] == ["abandoned-cart", "welcome-email"]


# --------------------------------------------------------------------------------------------
# match_event
# --------------------------------------------------------------------------------------------


async def test_an_active_listening_workflow_starts_one_run() -> None:
    uow = FakeMatcherUnitOfWork()
    workflow = await create_workflow(TEAM, a_definition(), uow)
    event = an_event()

    decisions = await match_event(event, uow)

    [decision] = decisions
    expected_run_id = run_id_for(uuid.UUID(event.event_id), "welcome-email", CONTACT_ID)
    assert decision.matched and decision.run_id == expected_run_id
    assert uow.subjects() == ["runs.team-1", "tracking.team-1.event_matched"]
    run_message = uow.published[0]
    assert run_message.msg_id == str(expected_run_id)
    start = run_pb2.RunStart.FromString(run_message.payload)
    assert start.run_id == str(expected_run_id)
    assert (start.trigger_id, start.project_id) == (event.trigger_id, TEAM)
    assert start.event == event
    assert (start.workflow.key, start.workflow.version) == ("welcome-email", 1)
    assert [s.subject for s in start.workflow.steps] == ["Welcome, {{contact.name}}"]
    assert start.workflow.created_at.endswith("Z")
    assert workflow.definition.steps[0].body == "Hello {{name}}"


def a_direct_trigger_event(workflow_key: str, events: int = 3) -> event_pb2.Event:
    event = an_event("herald.workflow.triggered")
    event.workflow_key, event.trigger_events = workflow_key, events
    return event


async def test_a_direct_trigger_event_takes_its_workflow_from_the_cache_when_it_has_it() -> None:
    uow = FakeMatcherUnitOfWork()
    cached = await create_workflow(TEAM, a_definition(key="onboarding"), uow)
    await update_workflow(TEAM, "onboarding", a_definition(key="onboarding", name="Changed"), uow)
    by_event = {"user_signup": [cached]}

    async def workflows_of(team_id: str) -> dict[str, list[Workflow]]:
        return by_event

    [from_cache] = await match_event(a_direct_trigger_event("onboarding"), uow, workflows_of=workflows_of)
    by_event = {}
    [from_database] = await match_event(a_direct_trigger_event("onboarding"), uow, workflows_of=workflows_of)

    assert (from_cache.workflow.version, from_database.workflow.version) == (1, 2)


async def test_a_direct_trigger_event_is_decided_by_the_named_workflow_alone() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(key="onboarding"), uow)
    await create_workflow(TEAM, a_definition(key="listener", trigger_event="herald.workflow.triggered"), uow)
    event = a_direct_trigger_event("onboarding")

    [decision] = await match_event(event, uow)

    assert decision.matched and decision.workflow.key == "onboarding"
    assert decision.run_id == run_id_for(uuid.UUID(event.event_id), "onboarding", CONTACT_ID)
    record = matched_record(uow)
    assert record.trigger_events == 3
    assert [d.workflow_key for d in record.decisions] == ["onboarding"]


async def test_a_direct_trigger_applies_the_workflows_filters() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(key="onboarding", filters=Filters(tags_any=("beta",))), uow)

    [decision] = await match_event(a_direct_trigger_event("onboarding"), uow)

    assert not decision.matched
    assert decision.reason == "contact has none of the tags beta (tags_any)"


async def test_a_direct_trigger_of_a_workflow_deleted_since_is_filtered_with_that_reason() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(key="onboarding"), uow)
    await delete_workflow(TEAM, "onboarding", uow)

    [decision] = await match_event(a_direct_trigger_event("onboarding"), uow)

    assert (decision.matched, decision.reason) == (False, "workflow was deleted")
    assert uow.subjects() == ["tracking.team-1.event_matched"]


async def test_the_run_id_is_the_same_when_computed_again() -> None:
    event = an_event()
    first, second = FakeMatcherUnitOfWork(), FakeMatcherUnitOfWork()
    for uow in (first, second):
        await create_workflow(TEAM, a_definition(), uow)

    await match_event(event, first)
    await match_event(event, second)

    assert first.published[0].msg_id == second.published[0].msg_id
    assert first.published[0].msg_id == str(
        run_id_for(uuid.UUID(event.event_id), "welcome-email", CONTACT_ID)
    )


def test_run_ids_differ_by_event_workflow_and_contact() -> None:
    event_id = uuid.uuid4()
    run_ids = {
        run_id_for(event_id, "welcome-email", "contact-1"),
        run_id_for(uuid.uuid4(), "welcome-email", "contact-1"),
        run_id_for(event_id, "other", "contact-1"),
        run_id_for(event_id, "welcome-email", "contact-2"),
    }
    assert len(run_ids) == 4


async def test_the_matched_record_reports_each_decision() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)
    event = an_event()

    [decision] = await match_event(event, uow)

    record = matched_record(uow)
    assert (record.event_id, record.event_name) == (event.event_id, "user_signup")
    [reported] = record.decisions
    assert reported.workflow_key == "welcome-email"
    assert reported.workflow_version == 1
    assert reported.outcome == tracking_pb2.MATCH_OUTCOME_MATCHED
    assert reported.run_id == str(decision.run_id)
    assert reported.contact_id == CONTACT_ID
    assert uow.published[1].msg_id == f"event_matched:{event.event_id}"


async def test_an_inactive_workflow_is_filtered_and_starts_nothing() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(active=False), uow)

    [decision] = await match_event(an_event(), uow)

    assert not decision.matched
    assert decision.reason == "workflow is inactive"
    assert decision.run_id is None
    assert uow.subjects() == ["tracking.team-1.event_matched"]
    [reported] = matched_record(uow).decisions
    assert reported.outcome == tracking_pb2.MATCH_OUTCOME_FILTERED
    assert reported.reason == "workflow is inactive"
    assert reported.run_id == ""


async def test_an_event_no_workflow_listens_to_is_reported_with_no_decisions() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(trigger_event="order.completed"), uow)
    await create_workflow("team-2", a_definition(), uow)
    event = an_event("user_signup")

    decisions = await match_event(event, uow)

    assert decisions == []
    assert uow.subjects() == ["tracking.team-1.event_matched"]
    record = matched_record(uow)
    assert record.event_id == event.event_id
    assert list(record.decisions) == []
    assert uuid.UUID(event.event_id) in uow.decisions.rows  # decided: a redelivery does nothing


async def test_matching_the_same_event_twice_publishes_nothing_the_second_time() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)
    event = an_event()
    await match_event(event, uow)
    published = list(uow.published)

    again = await match_event(event, uow)

    assert again == []
    assert uow.published == published


async def test_a_batch_decides_each_new_event_once_in_one_transaction() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)
    decided_before, first, second = an_event(), an_event(), an_event()
    await match_event(decided_before, uow)
    unheard = an_event("herald.mail.send")
    unheard.depth = 1
    published, commits = len(uow.published), uow.commits

    decided = await match_events([first, decided_before, second, first, unheard], uow)

    assert list(decided) == [first.event_id, second.event_id]
    assert all(decision.matched for decisions in decided.values() for decision in decisions)
    runs = [
        run_pb2.RunStart.FromString(m.payload)
        for m in uow.published[published:]
        if m.subject.startswith("runs.")
    ]
    assert [run.event.event_id for run in runs] == [first.event_id, second.event_id]
    assert uuid.UUID(unheard.event_id) not in uow.decisions.rows  # nobody listens: not even claimed
    assert uow.commits == commits + 1


async def test_every_listening_workflow_is_decided_in_key_order() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(key="welcome-email"), uow)
    await create_workflow(TEAM, a_definition(key="audit", active=False), uow)
    await create_workflow(TEAM, a_definition(key="onboarding"), uow)

    decisions = await match_event(an_event(), uow)

    assert [(d.workflow.key, d.matched) for d in decisions] == [
        ("audit", False),
        ("onboarding", True),
        ("welcome-email", True),
    ]
    assert uow.subjects() == ["runs.team-1", "runs.team-1", "tracking.team-1.event_matched"]


async def test_an_event_without_a_contact_still_starts_a_run() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)
    event = an_event(contact_id="")

    [decision] = await match_event(event, uow)

    assert decision.run_id == run_id_for(uuid.UUID(event.event_id), "welcome-email", "")
    start = run_pb2.RunStart.FromString(uow.published[0].payload)
    assert from_struct(start.event.variables) == {"name": "Ada", "score": 95}


# --------------------------------------------------------------------------------------------
# The Workflow contract
# --------------------------------------------------------------------------------------------


def test_a_workflow_without_active_is_active() -> None:
    message = workflow_pb2.Workflow(key="k", name="n", trigger=workflow_pb2.WorkflowTrigger(event="e"))

    assert definition_from_proto(message).active is True
    message.active = False
    assert definition_from_proto(message).active is False


def test_a_definition_survives_the_trip_through_its_proto() -> None:
    definition = a_definition(
        steps=(
            StepSpec(id="a", type="email", subject="S", body="B", html="<b>H</b>"),
            StepSpec(id="b", type="email", subject="S2", body="B2"),
        )
    )

    assert definition_from_proto(definition_to_proto(definition)) == definition


def test_a_step_without_body_has_none() -> None:
    definition = a_definition(steps=(dataclasses.replace(a_definition().steps[0], body=None),))

    [step] = definition_from_proto(definition_to_proto(definition)).steps

    assert step.body is None
