"""Workflow filters (tags, topic, condition, cooldown), versions and deletion, on fakes."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest

from herald.bus.v1 import event_pb2
from kernel.errors import AlreadyExists, InvalidArgument, NotFound
from kernel.structs import to_struct
from services.matcher.domain import Filters, MatchedEvent, Segment, decide, validate_definition
from services.matcher.handlers import (
    create_workflow,
    delete_segment,
    delete_workflow,
    dry_run,
    get_segment,
    get_workflow,
    list_segments,
    list_versions,
    list_workflows,
    match_event,
    match_events,
    put_segment,
    update_workflow,
)
from services.matcher.messages import definition_from_proto, definition_to_proto
from tests.unit.fakes import FakeMatcherUnitOfWork
from tests.unit.test_matcher_handlers import TEAM, a_definition, problems_of


def an_event(
    *, tags: tuple[str, ...] = (), topics: tuple[str, ...] = (), data: dict[str, Any] | None = None,
    custom_fields: dict[str, Any] | None = None, contact_id: str = "contact-1",
) -> event_pb2.Event:  # fmt: skip
    return event_pb2.Event(
        event_id=str(uuid.uuid4()),
        trigger_id=str(uuid.uuid4()),
        project_id=TEAM,
        name="user_signup",
        contact=event_pb2.Contact(
            id=contact_id,
            email="ada@example.com",
            name="Ada",
            tags=list(tags),
            topics=list(topics),
            custom_fields=to_struct(custom_fields or {}),
        ),
        data=to_struct(data or {}),
        variables=to_struct({"name": "Ada"}),
    )


async def decision_for(filters: Filters, event: event_pb2.Event) -> tuple[bool, str]:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(filters=filters), uow)
    [decision] = await match_event(event, uow)
    return decision.matched, decision.reason


# --------------------------------------------------------------------------------------------
# each filter, passing and failing with its reason
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "event", "reason"),
    [
        (Filters(tags_any=("new_users",)), an_event(tags=("vip",)),
         "contact has none of the tags new_users (tags_any)"),
        (Filters(tags_all=("a", "b")), an_event(tags=("a",)), "contact lacks the tags b (tags_all)"),
        (Filters(tags_none=("churned",)), an_event(tags=("churned", "x")),
         "contact has the excluded tags churned (tags_none)"),
        (Filters(topic="product-updates"), an_event(topics=("billing",)),
         "contact is not subscribed to topic 'product-updates'"),
        (Filters(condition="event.data.signup_method == 'google_oauth'"),
         an_event(data={"signup_method": "email"}),
         "condition was false: event.data.signup_method == 'google_oauth' "
         "[event.data.signup_method = \"email\"]"),
        (Filters(condition="event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro'"),
         an_event(data={"amount": 50}, custom_fields={"plan": "Pro"}),
         "condition was false: event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro' "
         "[event.data.amount = 50, contact.custom_fields.plan = \"Pro\"]"),
        (Filters(condition="event.data.amount > 100"), an_event(data={}),
         "condition could not be evaluated (no field 'amount'): event.data.amount > 100 "
         "[event.data.amount = (missing)]"),
    ],
)  # fmt: skip
async def test_a_filter_that_does_not_pass_is_the_reason(
    filters: Filters, event: event_pb2.Event, reason: str
) -> None:
    assert await decision_for(filters, event) == (False, reason)


@pytest.mark.parametrize(
    ("filters", "event"),
    [
        (Filters(tags_any=("new_users", "beta")), an_event(tags=("beta",))),
        (Filters(tags_all=("a", "b")), an_event(tags=("b", "a", "c"))),
        (Filters(tags_none=("churned",)), an_event(tags=("vip",))),
        (Filters(topic="product-updates"), an_event(topics=("product-updates",))),
        (Filters(condition="event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro'"),
         an_event(data={"amount": 149.99}, custom_fields={"plan": "Pro"})),
        (Filters(condition="event.data.count >= 2.5"), an_event(data={"count": 3})),
        (Filters(condition="'vip' in contact.tags && variables.name == 'Ada'"), an_event(tags=("vip",))),
    ],
)  # fmt: skip
async def test_a_filter_that_passes_starts_the_run(filters: Filters, event: event_pb2.Event) -> None:
    assert await decision_for(filters, event) == (True, "")


async def test_a_cooldown_lets_one_run_per_contact_through_within_its_period() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(filters=Filters(cooldown="PT24H")), uow)

    [first] = await match_event(an_event(), uow)
    [second] = await match_event(an_event(), uow)
    [other_contact] = await match_event(an_event(contact_id="contact-2"), uow)

    assert first.matched and other_contact.matched
    assert not second.matched and second.run_id is None
    assert second.reason.startswith("cooldown: ran for this contact within PT24H; it may run again after ")
    until = uow.cooldowns.rows[(TEAM, "welcome-email", "contact-1")]
    assert until.isoformat(timespec="seconds") in second.reason


async def test_a_cooldown_that_ended_lets_the_next_run_through() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(filters=Filters(cooldown="PT1H")), uow)
    await match_event(an_event(), uow)
    key = (TEAM, "welcome-email", "contact-1")
    uow.cooldowns.rows[key] -= timedelta(hours=2)

    [decision] = await match_event(an_event(), uow)

    assert decision.matched


async def test_a_workflow_filtered_otherwise_does_not_start_its_cooldown() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(filters=Filters(cooldown="PT1H", tags_any=("vip",))), uow)

    [decision] = await match_event(an_event(), uow)

    assert not decision.matched and "tags_any" in decision.reason
    assert uow.cooldowns.rows == {}


# --------------------------------------------------------------------------------------------
# validation of filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "problem"),
    [
        (Filters(cooldown="24 hours"), "filters.cooldown: '24 hours' is not an ISO 8601 duration"),
        (Filters(cooldown="P1M"), "filters.cooldown: 'P1M': years and months have no fixed length"),
        (Filters(cooldown="PT0S"), "filters.cooldown: must be longer than zero"),
        (Filters(cooldown="P400D"), "filters.cooldown: must be longer than zero and at most 366 days"),
        (Filters(condition="event.data.amount >"), "filters.condition: syntax error"),
        (Filters(condition="order.total > 1"),
         "filters.condition: unknown name 'order': a condition can use event, contact, variables"),
        (Filters(condition="x" * 5000), "filters.condition: the condition is 5000 characters long"),
        (Filters(topic="no spaces"), "filters.topic: 'no spaces': use 1-128 letters"),
        (Filters(tags_any=("",)), "filters.tags_any[0]: a tag has 1 to 128 characters"),
        (Filters(tags_all=("t" * 129,)), "filters.tags_all[0]: a tag has 1 to 128 characters"),
        (Filters(tags_any=tuple(f"t{n}" for n in range(51))), "filters.tags_any: at most 50 tags"),
        (Filters(tags_all=("vip",), tags_none=("vip",)), "filters.tags_none: vip also required"),
    ],
)  # fmt: skip
def test_a_bad_filter_is_refused_naming_the_field(filters: Filters, problem: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_definition(a_definition(filters=filters))
    assert any(found.startswith(problem) for found in problems_of(raised.value)), problems_of(raised.value)


def test_filters_are_trimmed_deduplicated_and_survive_the_trip_through_the_proto() -> None:
    filters = Filters(
        tags_any=(" new_users", "new_users", "beta"), tags_none=("churned",), cooldown="PT24H",
        condition="event.data.plan != ''", topic="product-updates",
    )  # fmt: skip
    checked = validate_definition(a_definition(filters=filters))

    assert checked.filters.tags_any == ("new_users", "beta")
    assert definition_from_proto(definition_to_proto(checked)) == checked
    assert checked.filters.cooldown_period == timedelta(hours=24)


# --------------------------------------------------------------------------------------------
# versions and deletion
# --------------------------------------------------------------------------------------------


async def test_each_change_is_a_new_version_and_the_same_definition_again_is_not() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)

    second, stored = await update_workflow(TEAM, "welcome-email", a_definition(active=False), uow)
    again, stored_again = await update_workflow(
        TEAM, "welcome-email", a_definition(active=False, key=""), uow
    )

    assert (second.version, stored) == (2, True)
    assert (again.version, stored_again) == (2, False)
    assert [w.version for w in await list_versions(TEAM, "welcome-email", uow)] == [2, 1]
    assert (await get_workflow(TEAM, "welcome-email", uow)).definition.active is False


async def test_putting_a_new_key_creates_version_one() -> None:
    uow = FakeMatcherUnitOfWork()

    workflow, stored = await update_workflow(TEAM, "welcome-email", a_definition(key=""), uow)

    assert (workflow.version, workflow.key, stored) == (1, "welcome-email", True)


async def test_the_body_key_must_match_the_path_key() -> None:
    with pytest.raises(InvalidArgument) as raised:
        await update_workflow(TEAM, "other", a_definition(), FakeMatcherUnitOfWork())
    assert raised.value.reason == "WORKFLOW_KEY_MISMATCH"


async def test_a_deleted_workflow_matches_nothing_and_is_gone_until_created_again() -> None:
    uow = FakeMatcherUnitOfWork()
    await create_workflow(TEAM, a_definition(), uow)
    await update_workflow(TEAM, "welcome-email", a_definition(name="Second"), uow)

    deleted = await delete_workflow(TEAM, "welcome-email", uow)

    assert deleted.version == 2
    assert await match_event(an_event(), uow) == []
    assert await list_workflows(TEAM, uow) == []
    for call in (get_workflow, list_versions, delete_workflow):
        with pytest.raises(NotFound):
            await call(TEAM, "welcome-email", uow)
    recreated = await create_workflow(TEAM, a_definition(), uow)
    assert recreated.version == 4  # after versions 1, 2 and the deletion (3)
    assert [w.version for w in await list_versions(TEAM, "welcome-email", uow)] == [4, 2, 1]
    with pytest.raises(AlreadyExists):
        await create_workflow(TEAM, a_definition(), uow)


async def test_the_condition_data_is_built_only_for_a_workflow_with_a_condition() -> None:
    built: list[int] = []

    def condition_data() -> dict[str, Any]:
        built.append(1)
        return {"event": {"data": {"amount": 5}}}

    event = MatchedEvent(
        uuid.uuid4(), uuid.uuid4(), TEAM, "user_signup", "contact-1", condition_data=condition_data
    )
    plain = await create_workflow(TEAM, a_definition(), FakeMatcherUnitOfWork())
    conditional = await create_workflow(
        TEAM, a_definition(filters=Filters(condition="event.data.amount > 1")), FakeMatcherUnitOfWork()
    )

    assert [d.matched for d in decide(event, [plain])] == [True]
    assert built == []
    assert [d.matched for d in decide(event, [conditional, conditional])] == [True, True]
    assert built == [1]  # once per event, however many conditions read it


async def test_a_chain_of_system_events_is_followed_three_deep_and_no_deeper() -> None:
    third = an_event()
    third.depth = 3
    fourth = an_event()
    fourth.depth = 4

    assert await decision_for(Filters(), third) == (True, "")
    matched, reason = await decision_for(Filters(), fourth)

    assert not matched
    assert reason == (
        "user_signup is the 4th system event in a chain of runs; at most 3 are followed, "
        "so workflows cannot trigger each other for ever"
    )


# --------------------------------------------------------------------------------------------
# segments
# --------------------------------------------------------------------------------------------

PRO = Segment(TEAM, "pro-users", "Pro users", "contact.custom_fields.plan == 'Pro'")


async def with_segment() -> FakeMatcherUnitOfWork:
    uow = FakeMatcherUnitOfWork()
    await put_segment(TEAM, PRO, uow, create_only=True)
    return uow


def entered_events(uow: FakeMatcherUnitOfWork) -> list[event_pb2.Event]:
    return [
        event_pb2.Event.FromString(m.payload)
        for m in uow.published
        if m.subject.endswith(".herald.audience.entered")
    ]


async def test_a_segment_filter_runs_the_workflow_only_for_contacts_in_the_segment() -> None:
    uow = await with_segment()
    await create_workflow(TEAM, a_definition(filters=Filters(segment="pro-users")), uow)

    [inside] = await match_event(an_event(custom_fields={"plan": "Pro"}), uow)
    [outside] = await match_event(an_event(custom_fields={"plan": "Free"}, contact_id="contact-2"), uow)

    assert (inside.matched, outside.matched) == (True, False)
    assert outside.reason == "contact is not in segment 'pro-users'"


async def test_a_contact_newly_in_a_segment_announces_it_once() -> None:
    uow = await with_segment()
    pro = an_event(custom_fields={"plan": "Pro"})

    await match_event(pro, uow)
    [entered] = entered_events(uow)
    await match_event(an_event(custom_fields={"plan": "Pro"}), uow)
    assert len(entered_events(uow)) == 1  # still in: nothing new

    assert (entered.name, entered.depth, entered.contact.id) == ("herald.audience.entered", 1, "contact-1")
    assert dict(entered.data)["segment"] == "pro-users"
    await match_event(an_event(custom_fields={"plan": "Free"}), uow)
    await match_event(an_event(custom_fields={"plan": "Pro"}), uow)
    assert len(entered_events(uow)) == 2  # left, then entered again


async def test_a_batch_records_each_contacts_membership_as_its_last_event_says() -> None:
    uow = await with_segment()
    free, pro = an_event(custom_fields={"plan": "Free"}), an_event(custom_fields={"plan": "Pro"})
    other = an_event(custom_fields={"plan": "Pro"}, contact_id="contact-2")

    await match_events([pro, other, free], uow)  # contact-1: Pro, then Free

    assert sorted(e.contact.id for e in entered_events(uow)) == ["contact-2"]
    await match_events([an_event(custom_fields={"plan": "Pro"})], uow)
    announced = entered_events(uow)
    assert [e.contact.id for e in announced] == ["contact-2", "contact-1"]  # it had left: it enters


async def test_a_dry_run_neither_records_membership_nor_announces_it() -> None:
    uow = await with_segment()
    await create_workflow(TEAM, a_definition(filters=Filters(segment="pro-users")), uow)

    [decision] = await dry_run(an_event(custom_fields={"plan": "Pro"}), uow)

    assert decision.matched
    assert entered_events(uow) == []
    await match_event(an_event(custom_fields={"plan": "Pro"}), uow)
    assert len(entered_events(uow)) == 1


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        (Segment(TEAM, "Pro Users", "Pro", "contact.name == 'x'"), "key: use 1-100 lowercase letters"),
        (Segment(TEAM, "pro", " ", "contact.name == 'x'"), "name: is required"),
        (Segment(TEAM, "pro", "Pro", ""), "condition: is required: a CEL expression over contact"),
        (Segment(TEAM, "pro", "Pro", "event.data.x == 1"), "condition: unknown name 'event'"),
    ],
)
async def test_a_bad_segment_is_refused_naming_the_field(segment: Segment, problem: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await put_segment(TEAM, segment, FakeMatcherUnitOfWork(), create_only=True)
    assert raised.value.reason == "INVALID_SEGMENT"
    assert problem in raised.value.message


async def test_segments_are_created_once_replaced_listed_and_deleted() -> None:
    uow = await with_segment()
    with pytest.raises(AlreadyExists):
        await put_segment(TEAM, PRO, uow, create_only=True)
    await put_segment(TEAM, dataclasses.replace(PRO, name="Paying"), uow, create_only=False)
    assert [(s.key, s.name) for s in await list_segments(TEAM, uow)] == [("pro-users", "Paying")]
    with pytest.raises(InvalidArgument, match=r"filters\.segment: no segment 'ghosts'"):
        await create_workflow(TEAM, a_definition(filters=Filters(segment="ghosts")), uow)
    await delete_segment(TEAM, "pro-users", uow)
    with pytest.raises(NotFound):
        await get_segment(TEAM, "pro-users", uow)
    with pytest.raises(NotFound):
        await delete_segment(TEAM, "pro-users", uow)
