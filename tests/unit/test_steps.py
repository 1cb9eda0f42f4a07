"""kernel.steps: the fields of each step type, their checks, forward-only jumps, reachability, and
the step's JSON document and protobuf forms."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from herald.workflow.v1 import workflow_pb2
from kernel.errors import InvalidArgument
from kernel.steps import (
    FIELDS_OF_TYPE,
    MAX_HEADERS,
    STEP_TYPES,
    Problems,
    StepSpec,
    step_from_proto,
    step_to_proto,
    successors,
    validated_steps,
)

UNCLOSED_IF = "{{#if contact.name}}Hi"
UNCLOSED_IF_ERROR = "line 1, column 1: unclosed {{#if}} block opened here; close it with {{/if}}"
UNREACHABLE = "is unreachable: no step leads to it"

# The smallest valid step of each type.
MINIMAL: dict[str, StepSpec] = {
    "email": StepSpec(id="s", type="email", subject="Welcome", body="Hi {{contact.first_name}}"),
    "sms": StepSpec(id="s", type="sms", body="Your code is {{event.data.code}}"),
    "push": StepSpec(id="s", type="push", body="You have a new message"),
    "in_app": StepSpec(id="s", type="in_app", body="You have a new message"),
    "webhook": StepSpec(id="s", type="webhook", url="https://example.com/hook"),
    "delay": StepSpec(id="s", type="delay", duration="P1D"),
    "wait_for_event": StepSpec(id="s", type="wait_for_event", event="user.activated", timeout="P3D"),
    "branch": StepSpec(id="s", type="branch", condition="contact.custom_fields.plan == 'Pro'"),
    "exit": StepSpec(id="s", type="exit"),
}
# A value for each field, set where the field does not apply.
STRAY_VALUE: dict[str, Any] = {"body": "text", "headers": {"X-Trace": "1"}, "max_attempts": 3}
JSON_NAME = {"else_": "else"}

# The workflow of the product issue: every step type's main shape, jumps by on_timeout and branch.
EXAMPLE = (
    StepSpec(
        id="welcome", type="email", subject="Welcome, {{contact.first_name}}", body="Glad you are here."
    ),
    StepSpec(id="pause", type="delay", duration="P1D"),
    StepSpec(
        id="activated",
        type="wait_for_event",
        event="user.activated",
        timeout="P3D",
        match="event.data.plan != ''",
        on_timeout="nudge",
    ),
    StepSpec(
        id="check", type="branch", condition="contact.custom_fields.plan == 'Pro'", then="hook", else_="done"
    ),
    StepSpec(id="nudge", type="sms", body="Activate your account, {{contact.first_name}}!"),
    StepSpec(
        id="hook",
        type="webhook",
        url="https://example.com/hook",
        method="POST",
        body={"order": "{{event.data.order_id}}"},
        max_attempts=5,
    ),
    StepSpec(id="done", type="exit"),
)


def problems_of(*steps: StepSpec) -> list[str]:
    problems = Problems()
    validated_steps(steps, problems)
    return problems.problems


def webhook(**fields: Any) -> StepSpec:
    return dataclasses.replace(MINIMAL["webhook"], **fields)


def sms(step_id: str) -> StepSpec:
    return StepSpec(id=step_id, type="sms", body="Hello")


# Types and fields


@pytest.mark.parametrize("step_type", STEP_TYPES)
def test_the_smallest_step_of_each_type_is_valid(step_type: str) -> None:
    assert problems_of(MINIMAL[step_type]) == []


def test_every_step_type_has_a_minimal_example() -> None:
    assert set(MINIMAL) == set(STEP_TYPES) == set(FIELDS_OF_TYPE)


@pytest.mark.parametrize(
    "steps",
    [
        (
            StepSpec(
                id="s", type="email", subject="S", body="B", html="<p>{{contact.name}}</p>", max_attempts=3
            ),
        ),
        (StepSpec(id="s", type="sms", body="B", max_attempts=20),),
        (
            StepSpec(
                id="s", type="push", title="T", body="B", url="https://example.com/{{x}}", max_attempts=1
            ),
        ),
        (
            StepSpec(
                id="s", type="in_app", title="T", body="B", url="/inbox/{{event.data.id}}", max_attempts=2
            ),
        ),
        (
            StepSpec(
                id="s",
                type="webhook",
                url="https://example.com/hook",
                method="PUT",
                headers={"Authorization": "Bearer {{variables.token}}", "Content-Type": "application/json"},
                body={"id": "{{event.data.id}}", "count": 3, "tags": ["a", "{{contact.email}}"], "ok": True},
                max_attempts=20,
            ),
        ),
        (StepSpec(id="s", type="delay", until="{{event.data.starts_at}}"),),
        (
            StepSpec(
                id="s",
                type="wait_for_event",
                event="order.completed",
                timeout="PT12H",
                match="event.data.amount > 100.0",
                on_timeout="later",
            ),
            sms("next"),
            sms("later"),
        ),
        (
            StepSpec(id="s", type="branch", condition="variables.vip == true", then="yes", else_="no"),
            StepSpec(id="yes", type="exit"),
            StepSpec(id="no", type="exit"),
        ),
    ],
    ids=lambda steps: steps[0].type,
)
def test_every_field_a_type_accepts_may_be_set(steps: tuple[StepSpec, ...]) -> None:
    assert problems_of(*steps) == []


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            StepSpec(id="s", type="email"),
            [
                "steps[0].subject: is required for an email step and must be a string",
                "steps[0].body: is required for an email step and must be a string",
            ],
        ),
        (
            StepSpec(id="s", type="email", subject="  ", body="B"),
            ["steps[0].subject: is required for an email step and must be a string"],
        ),
        (StepSpec(id="s", type="sms"), ["steps[0].body: is required for a sms step and must be a string"]),
        (
            StepSpec(id="s", type="sms", body={"text": "hi"}),
            ["steps[0].body: is required for a sms step and must be a string"],
        ),
        (
            StepSpec(id="s", type="push", title="T"),
            ["steps[0].body: is required for a push step and must be a string"],
        ),
        (
            StepSpec(id="s", type="in_app"),
            ["steps[0].body: is required for an in_app step and must be a string"],
        ),
        (StepSpec(id="s", type="webhook"), ["steps[0].url: is required for a webhook step"]),
        (
            StepSpec(id="s", type="delay"),
            ["steps[0]: a delay step needs either duration (e.g. P1D) or until (a timestamp template)"],
        ),
        (
            StepSpec(id="s", type="wait_for_event"),
            [
                "steps[0].event: is required: the event name to wait for",
                "steps[0].timeout: is required: how long to wait (e.g. P3D)",
            ],
        ),
        (StepSpec(id="s", type="branch"), ["steps[0].condition: is required for a branch step"]),
    ],
    ids=lambda value: value.type if isinstance(value, StepSpec) else "",
)
def test_a_missing_required_field_is_reported(step: StepSpec, expected: list[str]) -> None:
    assert problems_of(step) == expected


STRAY_FIELDS = [
    (step_type, item.name)
    for step_type in STEP_TYPES
    for item in dataclasses.fields(StepSpec)
    if item.name not in ("id", "type") and item.name not in FIELDS_OF_TYPE[step_type]
]


@pytest.mark.parametrize(("step_type", "name"), STRAY_FIELDS, ids=[f"{t}-{n}" for t, n in STRAY_FIELDS])
def test_a_field_that_does_not_apply_to_the_type_is_reported(step_type: str, name: str) -> None:
    step = dataclasses.replace(MINIMAL[step_type], **{name: STRAY_VALUE.get(name, "x")})

    article = "an" if step_type[0] in "aeiou" else "a"
    assert (
        f"steps[0].{JSON_NAME.get(name, name)}: does not apply to {article} {step_type} step"
        in problems_of(step)
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            dataclasses.replace(MINIMAL["sms"], subject="Hello"),
            ["steps[0].subject: does not apply to a sms step"],
        ),
        (
            dataclasses.replace(MINIMAL["delay"], max_attempts=3),
            ["steps[0].max_attempts: does not apply to a delay step"],
        ),
        (
            dataclasses.replace(MINIMAL["exit"], body="bye", title="T"),
            [
                "steps[0].body: does not apply to an exit step",
                "steps[0].title: does not apply to an exit step",
            ],
        ),
        (
            dataclasses.replace(MINIMAL["email"], headers={"X-A": "1"}, method="POST"),
            [
                "steps[0].headers: does not apply to an email step",
                "steps[0].method: does not apply to an email step",
            ],
        ),
    ],
    ids=["subject-on-sms", "max_attempts-on-delay", "body-title-on-exit", "headers-method-on-email"],
)
def test_only_the_stray_fields_are_reported(step: StepSpec, expected: list[str]) -> None:
    assert problems_of(step) == expected


def test_a_stray_else_is_reported_under_its_json_name() -> None:
    steps = (dataclasses.replace(MINIMAL["wait_for_event"], else_="done"), StepSpec(id="done", type="exit"))

    assert problems_of(*steps) == ["steps[0].else: does not apply to a wait_for_event step"]


@pytest.mark.parametrize(("step_type", "shown"), [("fax", "'fax'"), ("", "'(empty)'"), ("Email", "'Email'")])
def test_an_unknown_type_is_reported_with_the_known_ones(step_type: str, shown: str) -> None:
    assert problems_of(StepSpec(id="s", type=step_type, subject="ignored")) == [
        f"steps[0].type: {shown} is not a step type "
        "(email, sms, push, webhook, in_app, delay, wait_for_event, branch, exit)"
    ]


# Ids


def test_a_step_without_an_id_is_named_after_its_position() -> None:
    steps = (StepSpec(id="", type="sms", body="a"), sms("second"), StepSpec(id="", type="exit"))
    problems = Problems()

    named = validated_steps(steps, problems)

    assert [step.id for step in named] == ["step-1", "second", "step-3"]
    assert named[0] == dataclasses.replace(steps[0], id="step-1")
    assert problems.problems == []


def test_a_jump_may_name_a_default_id() -> None:
    steps = (
        StepSpec(id="", type="branch", condition="true", then="step-3"),
        StepSpec(id="", type="sms", body="b"),
        StepSpec(id="", type="exit"),
    )

    assert problems_of(*steps) == []


def test_a_duplicate_id_is_reported_at_the_later_step() -> None:
    assert problems_of(sms("hello"), sms("other"), sms("hello")) == [
        "steps[2].id: 'hello' is used by an earlier step"
    ]


def test_an_explicit_id_may_collide_with_a_default_one() -> None:
    assert problems_of(sms("step-2"), StepSpec(id="", type="sms", body="b")) == [
        "steps[1].id: 'step-2' is used by an earlier step"
    ]


@pytest.mark.parametrize(
    "step_id", ["has space", "-dash-first", "_underscore_first", "a.b", "a/b", "é", "a" * 65]
)
def test_an_id_with_other_characters_is_reported(step_id: str) -> None:
    assert problems_of(sms(step_id)) == ["steps[0].id: use 1-64 letters, digits, '-' or '_'"]


@pytest.mark.parametrize("step_id", ["a", "9", "Send-Welcome_2", "a" * 64])
def test_an_id_of_letters_digits_dashes_and_underscores_is_valid(step_id: str) -> None:
    assert problems_of(sms(step_id)) == []


# Templates


@pytest.mark.parametrize(
    ("step", "where"),
    [
        (dataclasses.replace(MINIMAL["email"], subject=UNCLOSED_IF), "steps[0].subject"),
        (dataclasses.replace(MINIMAL["email"], body=UNCLOSED_IF), "steps[0].body"),
        (dataclasses.replace(MINIMAL["email"], html=UNCLOSED_IF), "steps[0].html"),
        (dataclasses.replace(MINIMAL["sms"], body=UNCLOSED_IF), "steps[0].body"),
        (dataclasses.replace(MINIMAL["push"], title=UNCLOSED_IF), "steps[0].title"),
        (dataclasses.replace(MINIMAL["push"], body=UNCLOSED_IF), "steps[0].body"),
        (dataclasses.replace(MINIMAL["push"], url=UNCLOSED_IF), "steps[0].url"),
        (dataclasses.replace(MINIMAL["in_app"], title=UNCLOSED_IF), "steps[0].title"),
        (dataclasses.replace(MINIMAL["in_app"], body=UNCLOSED_IF), "steps[0].body"),
        (dataclasses.replace(MINIMAL["in_app"], url=UNCLOSED_IF), "steps[0].url"),
        (webhook(url=UNCLOSED_IF), "steps[0].url"),
        (webhook(headers={"X-Name": UNCLOSED_IF}), "steps[0].headers.X-Name"),
        (webhook(body=UNCLOSED_IF), "steps[0].body"),
        (webhook(body={"order": {"note": UNCLOSED_IF}}), "steps[0].body.order.note"),
        (webhook(body={"items": ["ok", {"name": UNCLOSED_IF}]}), "steps[0].body.items[1].name"),
        (webhook(body=[1, None, True, UNCLOSED_IF]), "steps[0].body[3]"),
        (StepSpec(id="s", type="delay", until=UNCLOSED_IF), "steps[0].until"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.type,
)
def test_a_bad_template_is_reported_where_it_is(step: StepSpec, where: str) -> None:
    assert problems_of(step) == [f"{where}: {UNCLOSED_IF_ERROR}"]


def test_every_bad_string_of_a_webhook_body_is_reported() -> None:
    body = {"a": UNCLOSED_IF, "b": {"c": [UNCLOSED_IF, 2.5, "{{fine}}"]}, "d": None}

    assert problems_of(webhook(body=body)) == [
        f"steps[0].body.a: {UNCLOSED_IF_ERROR}",
        f"steps[0].body.b.c[0]: {UNCLOSED_IF_ERROR}",
    ]


# Webhooks


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://localhost:8080/hook?x=1",
        "http://[::1]:8080/",
        "{{variables.hook_url}}",
        "https://{{variables.host}}/orders/{{event.data.id}}",
    ],
)
def test_a_webhook_url_is_http_https_or_a_template(url: str) -> None:
    assert problems_of(webhook(url=url)) == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "example.com/hook", "https://", "mailto:ops@example.com", "http://[::1"]
)
def test_a_webhook_url_that_is_not_http_is_reported(url: str) -> None:
    assert problems_of(webhook(url=url)) == [f"steps[0].url: {url!r} is not an http:// or https:// URL"]


@pytest.mark.parametrize("method", ["", "POST", "PUT", "PATCH", "DELETE", "GET"])
def test_a_webhook_method_is_empty_or_one_of_five(method: str) -> None:
    assert problems_of(webhook(method=method)) == []


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PO ST"])
def test_another_webhook_method_is_reported(method: str) -> None:
    assert problems_of(webhook(method=method)) == [
        f"steps[0].method: {method!r} is not one of POST, PUT, PATCH, DELETE, GET"
    ]


def test_a_lowercase_webhook_method_is_upper_cased_from_the_proto() -> None:
    message = workflow_pb2.Step(id="hook", type="webhook", url="https://example.com/hook", method=" patch ")

    step = step_from_proto(message)

    assert step.method == "PATCH"
    assert problems_of(step) == []


@pytest.mark.parametrize("name", ["X Bad", "X:Colon", "", "Ünicode", "a" * 101])
def test_an_invalid_header_name_is_reported(name: str) -> None:
    assert problems_of(webhook(headers={name: "1"})) == [
        f"steps[0].headers: {name[:100]!r} is not a valid header name"
    ]


@pytest.mark.parametrize(
    "name",
    [
        "webhook-id",
        "Webhook-Signature",
        "WEBHOOK-TIMESTAMP",
        "Host",
        "content-length",
        "idempotency-key",
        "Transfer-Encoding",
        "Connection",
    ],
)
def test_a_header_herald_sets_is_reported(name: str) -> None:
    assert problems_of(webhook(headers={name: "1"})) == [f"steps[0].headers.{name}: is set by Herald"]


@pytest.mark.parametrize("name", ["Authorization", "Content-Type", "X-Webhook-Id", "X-Host", "If-Match"])
def test_other_header_names_are_accepted(name: str) -> None:
    assert problems_of(webhook(headers={name: "value {{event.data.id}}"})) == []


def test_at_most_twenty_headers() -> None:
    headers = {f"X-Header-{number}": "v" for number in range(MAX_HEADERS)}

    assert problems_of(webhook(headers=headers)) == []
    assert problems_of(webhook(headers={**headers, "X-One-More": "v"})) == [
        "steps[0].headers: at most 20 headers"
    ]


# Delays and durations


def test_a_delay_with_both_duration_and_until_is_reported() -> None:
    step = StepSpec(id="s", type="delay", duration="P1D", until="{{event.data.at}}")

    assert problems_of(step) == [
        "steps[0]: a delay step needs either duration (e.g. P1D) or until (a timestamp template)"
    ]


@pytest.mark.parametrize("duration", ["P1D", "PT30M", "PT1S", "P1W", "P366D", "PT1.5S"])
def test_a_duration_from_a_second_to_366_days_is_valid(duration: str) -> None:
    assert problems_of(StepSpec(id="s", type="delay", duration=duration)) == []
    assert problems_of(dataclasses.replace(MINIMAL["wait_for_event"], timeout=duration)) == []


@pytest.mark.parametrize(
    ("duration", "what"),
    [
        ("P1M", "'P1M': years and months have no fixed length; use days (P30D, not P1M)"),
        ("P1Y", "'P1Y': years and months have no fixed length; use days (P30D, not P1M)"),
        ("0", "'0' is not an ISO 8601 duration such as PT24H or P7D"),
        ("garbage", "'garbage' is not an ISO 8601 duration such as PT24H or P7D"),
        ("1 day", "'1 day' is not an ISO 8601 duration such as PT24H or P7D"),
        ("PT0S", "must be longer than zero and at most 366 days"),
        ("P0D", "must be longer than zero and at most 366 days"),
        ("-P1D", "must be longer than zero and at most 366 days"),
        ("P367D", "must be longer than zero and at most 366 days"),
        ("PT8785H", "must be longer than zero and at most 366 days"),
    ],
)
def test_a_bad_duration_is_reported(duration: str, what: str) -> None:
    assert problems_of(StepSpec(id="s", type="delay", duration=duration)) == [f"steps[0].duration: {what}"]
    assert problems_of(dataclasses.replace(MINIMAL["wait_for_event"], timeout=duration)) == [
        f"steps[0].timeout: {what}"
    ]


# Waiting for an event


@pytest.mark.parametrize(
    "event", ["user.activated", "user_signup", "billing.payment_failed", "herald.run_failed"]
)
def test_a_well_formed_event_name_may_be_awaited(event: str) -> None:
    assert problems_of(dataclasses.replace(MINIMAL["wait_for_event"], event=event)) == []


@pytest.mark.parametrize("event", ["User.Activated", "1st.event", "user..activated", "user activated"])
def test_a_malformed_event_name_is_reported(event: str) -> None:
    problems = problems_of(dataclasses.replace(MINIMAL["wait_for_event"], event=event))

    assert len(problems) == 1
    assert problems[0].startswith(f"steps[0].event: Invalid event name {event!r}: use lowercase")


def test_a_too_long_event_name_is_reported() -> None:
    event = "a" * 129

    assert problems_of(dataclasses.replace(MINIMAL["wait_for_event"], event=event)) == [
        "steps[0].event: Event name is too long (129 characters): at most 128"
    ]


@pytest.mark.parametrize(("step_type", "name"), [("wait_for_event", "match"), ("branch", "condition")])
@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("order.total > 100", "unknown name 'order': a condition can use event, contact, variables"),
        (
            "event.data.plan == 'Pro' && secret",
            "unknown name 'secret': a condition can use event, contact, variables",
        ),
        ("event.data.plan ==", "syntax error: "),
        ("event.data.plan == 'Pro", "syntax error: "),
    ],
)
def test_a_bad_condition_is_reported(step_type: str, name: str, source: str, what: str) -> None:
    changes: dict[str, Any] = {name: source}
    problems = problems_of(dataclasses.replace(MINIMAL[step_type], **changes))

    assert len(problems) == 1
    assert problems[0].startswith(f"steps[0].{name}: {what}")


@pytest.mark.parametrize(
    "source",
    [
        "event.data.plan != ''",
        "contact.custom_fields.plan == 'Pro' && variables.threshold < event.data.amount",
        "contact.tags.exists(tag, tag == 'vip')",
    ],
)
def test_a_condition_over_event_contact_and_variables_is_valid(source: str) -> None:
    assert problems_of(dataclasses.replace(MINIMAL["wait_for_event"], match=source)) == []
    assert problems_of(dataclasses.replace(MINIMAL["branch"], condition=source)) == []


# Jumps and reachability


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            (StepSpec(id="check", type="branch", condition="true", then="nope"), sms("a")),
            ["steps[0].then: no step has the id 'nope'"],
        ),
        (
            (sms("a"), StepSpec(id="check", type="branch", condition="true", else_="check"), sms("b")),
            ["steps[1].else: 'check' is not a later step: steps only jump forward"],
        ),
        (
            (sms("a"), StepSpec(id="check", type="branch", condition="true", then="a"), sms("b")),
            ["steps[1].then: 'a' is not a later step: steps only jump forward"],
        ),
        (
            (sms("a"), dataclasses.replace(MINIMAL["wait_for_event"], id="wait", on_timeout="a")),
            ["steps[1].on_timeout: 'a' is not a later step: steps only jump forward"],
        ),
        (
            (dataclasses.replace(MINIMAL["wait_for_event"], id="wait", on_timeout="wait"), sms("a")),
            ["steps[0].on_timeout: 'wait' is not a later step: steps only jump forward"],
        ),
        (
            (dataclasses.replace(MINIMAL["wait_for_event"], id="wait", on_timeout=""), sms("a")),
            [],
        ),
    ],
    ids=["missing", "itself", "earlier-then", "earlier-on_timeout", "on_timeout-itself", "no-on_timeout"],
)
def test_a_jump_must_name_a_later_step(steps: tuple[StepSpec, ...], expected: list[str]) -> None:
    assert problems_of(*steps) == expected


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            (sms("a"), StepSpec(id="end", type="exit"), sms("after")),
            [f"steps[2]: 'after' {UNREACHABLE}"],
        ),
        (
            (
                StepSpec(id="check", type="branch", condition="true", then="target", else_="target"),
                sms("skipped"),
                sms("target"),
            ),
            [f"steps[1]: 'skipped' {UNREACHABLE}"],
        ),
        (
            (sms("a"), StepSpec(id="end", type="exit"), sms("b"), sms("c")),
            [f"steps[2]: 'b' {UNREACHABLE}", f"steps[3]: 'c' {UNREACHABLE}"],
        ),
        (
            (StepSpec(id="end", type="exit"), sms("b"), StepSpec(id="c", type="branch", condition="true")),
            [f"steps[1]: 'b' {UNREACHABLE}", f"steps[2]: 'c' {UNREACHABLE}"],
        ),
    ],
    ids=["after-exit", "jumped-over-by-both-sides", "only-from-unreachable", "only-from-unreachable-branch"],
)
def test_an_unreachable_step_is_reported(steps: tuple[StepSpec, ...], expected: list[str]) -> None:
    assert problems_of(*steps) == expected


@pytest.mark.parametrize(
    "steps",
    [
        (
            dataclasses.replace(MINIMAL["wait_for_event"], id="wait", on_timeout="nudge"),
            StepSpec(id="end", type="exit"),
            sms("nudge"),
        ),
        (
            StepSpec(id="check", type="branch", condition="true", then="pro"),
            StepSpec(id="end", type="exit"),
            sms("pro"),
        ),
        (
            StepSpec(id="check", type="branch", condition="true", else_="free"),
            StepSpec(id="end", type="exit"),
            sms("free"),
        ),
        (
            StepSpec(id="check", type="branch", condition="true", then="pro", else_="free"),
            sms("pro"),
            StepSpec(id="end", type="exit"),
            sms("free"),
        ),
    ],
    ids=["on_timeout", "then", "else", "then-and-else"],
)
def test_a_step_reached_only_by_a_jump_is_reachable(steps: tuple[StepSpec, ...]) -> None:
    assert problems_of(*steps) == []


def test_the_example_workflow_of_the_product_issue_is_valid() -> None:
    problems = Problems()

    named = validated_steps(EXAMPLE, problems)

    assert problems.problems == []
    assert named == EXAMPLE


def test_every_problem_of_a_workflow_is_reported_in_order() -> None:
    steps = (
        StepSpec(id="bad id", type="sms", body=UNCLOSED_IF, max_attempts=21),
        StepSpec(id="check", type="branch", condition="order.total > 1", then="nope"),
        StepSpec(id="end", type="exit", subject="x"),
        sms("lost"),
    )

    assert problems_of(*steps) == [
        "steps[0].id: use 1-64 letters, digits, '-' or '_'",
        f"steps[0].body: {UNCLOSED_IF_ERROR}",
        "steps[0].max_attempts: must be between 1 and 20 (0: the default)",
        "steps[1].condition: unknown name 'order': a condition can use event, contact, variables",
        "steps[1].then: no step has the id 'nope'",
        "steps[2].subject: does not apply to an exit step",
        f"steps[3]: 'lost' {UNREACHABLE}",
    ]


def test_an_empty_step_list_is_reported() -> None:
    problems = Problems()

    assert validated_steps((), problems) == ()
    assert problems.problems == ["steps: a workflow needs at least one step"]


# Attempts


@pytest.mark.parametrize("step_type", ["email", "sms", "push", "in_app", "webhook"])
@pytest.mark.parametrize("max_attempts", [0, 1, 5, 20])
def test_max_attempts_from_1_to_20_or_0_for_the_default_is_valid(step_type: str, max_attempts: int) -> None:
    assert problems_of(dataclasses.replace(MINIMAL[step_type], max_attempts=max_attempts)) == []


@pytest.mark.parametrize("step_type", ["email", "sms", "push", "in_app", "webhook"])
@pytest.mark.parametrize("max_attempts", [21, 1000, -1])
def test_max_attempts_out_of_range_is_reported(step_type: str, max_attempts: int) -> None:
    assert problems_of(dataclasses.replace(MINIMAL[step_type], max_attempts=max_attempts)) == [
        "steps[0].max_attempts: must be between 1 and 20 (0: the default)"
    ]


# Successors


def test_the_successors_of_each_step_of_the_example() -> None:
    position = {step.id: index for index, step in enumerate(EXAMPLE)}

    assert [successors(EXAMPLE, index, position) for index in range(len(EXAMPLE))] == [
        {1},  # welcome (email) → pause
        {2},  # pause (delay) → activated
        {3, 4},  # activated (wait_for_event): the event → check, the timeout → nudge
        {5, 6},  # check (branch): then → hook, else → done
        {5},  # nudge (sms) → hook
        {6},  # hook (webhook) → done
        set(),  # done (exit)
    ]


@pytest.mark.parametrize(
    ("steps", "index", "expected"),
    [
        ((StepSpec(id="b", type="branch", condition="true"), sms("a")), 0, {1}),
        ((StepSpec(id="b", type="branch", condition="true", then="c"), sms("a"), sms("c")), 0, {1, 2}),
        ((StepSpec(id="b", type="branch", condition="true", else_="c"), sms("a"), sms("c")), 0, {1, 2}),
        ((StepSpec(id="b", type="branch", condition="true", then="nope"), sms("a")), 0, {1}),
        ((sms("a"), StepSpec(id="b", type="branch", condition="true")), 1, set()),
        ((MINIMAL["wait_for_event"], sms("a")), 0, {1}),
        ((MINIMAL["wait_for_event"],), 0, set()),
        ((dataclasses.replace(MINIMAL["wait_for_event"], on_timeout="t"), sms("t")), 0, {1}),
        ((sms("a"), sms("b")), 1, set()),
        ((MINIMAL["delay"], sms("a")), 0, {1}),
        ((StepSpec(id="s", type="exit"), sms("a")), 0, set()),
        ((StepSpec(id="s", type="fax"), sms("a")), 0, {1}),
        ((dataclasses.replace(MINIMAL["sms"], then="c"), sms("a"), sms("c")), 0, {1}),
    ],
    ids=[
        "branch-no-targets",
        "branch-then",
        "branch-else",
        "branch-missing-target",
        "branch-last",
        "wait-no-on_timeout",
        "wait-last",
        "wait-on_timeout-next",
        "message-last",
        "delay",
        "exit",
        "unknown-type",
        "stray-then-ignored",
    ],
)
def test_successors(steps: tuple[StepSpec, ...], index: int, expected: set[int]) -> None:
    position = {step.id: number for number, step in enumerate(steps)}

    assert successors(steps, index, position) == expected


# Properties


@pytest.mark.parametrize(
    ("step_type", "channel"),
    [
        ("email", "email"),
        ("sms", "sms"),
        ("push", "push"),
        ("webhook", "webhook"),
        ("in_app", "in_app"),
        ("delay", None),
        ("wait_for_event", None),
        ("branch", None),
        ("exit", None),
    ],
)
def test_the_channel_of_a_step(step_type: str, channel: str | None) -> None:
    assert MINIMAL[step_type].channel == channel


def test_the_jumps_of_a_step() -> None:
    assert EXAMPLE[2].jumps == ("nudge",)
    assert EXAMPLE[3].jumps == ("hook", "done")
    assert EXAMPLE[0].jumps == ()


# JSON documents


def test_a_document_holds_only_the_fields_that_are_set() -> None:
    assert StepSpec(id="done", type="exit").document() == {"id": "done", "type": "exit"}
    assert EXAMPLE[5].document() == {
        "id": "hook",
        "type": "webhook",
        "body": {"order": "{{event.data.order_id}}"},
        "url": "https://example.com/hook",
        "method": "POST",
        "max_attempts": 5,
    }


def test_a_document_writes_else_and_headers_as_json() -> None:
    branch = StepSpec(id="check", type="branch", condition="true", then="a", else_="b")
    hook = webhook(headers={"X-A": "1"})

    assert branch.document() == {
        "id": "check",
        "type": "branch",
        "condition": "true",
        "then": "a",
        "else": "b",
    }
    assert hook.document()["headers"] == {"X-A": "1"}
    assert hook.document()["headers"] is not hook.headers


@pytest.mark.parametrize(
    "step",
    [
        *EXAMPLE,
        StepSpec(
            id="s", type="webhook", url="https://e.com", headers={"X-A": "{{a}}", "X-B": "2"}, body=[1, "x"]
        ),
        StepSpec(id="s", type="delay", until="{{event.data.at}}"),
        StepSpec(id="s", type="push", title="T", body="B", url="/x", max_attempts=2),
    ],
    ids=lambda step: f"{step.type}-{step.id}",
)
def test_a_step_survives_its_document(step: StepSpec) -> None:
    assert StepSpec.from_document(step.document()) == step


def test_from_document_reads_else_and_ignores_unknown_keys() -> None:
    document = {
        "id": "check",
        "type": "branch",
        "condition": "true",
        "then": "a",
        "else": "b",
        "colour": "red",
        "position": {"x": 1},
    }

    assert StepSpec.from_document(document) == StepSpec(
        id="check", type="branch", condition="true", then="a", else_="b"
    )


# Protobuf


@pytest.mark.parametrize(
    "step",
    [
        *EXAMPLE,
        StepSpec(
            id="s",
            type="webhook",
            url="https://example.com/{{x}}",
            method="DELETE",
            headers={"X-A": "{{a}}", "Authorization": "Bearer t"},
            body={"n": 95, "f": 2.5, "list": [1, None, True, {"k": "v"}], "s": "{{event.data.id}}"},
            max_attempts=20,
        ),
        StepSpec(id="s", type="email", subject="S", body="B", html="<b>{{x}}</b>", max_attempts=1),
        StepSpec(id="s", type="in_app", title="T", body="B", url="/inbox"),
        StepSpec(id="s", type="delay", until="{{event.data.at}}"),
        StepSpec(id="s", type="branch", condition="true", then="a", else_="b"),
        StepSpec(id="s", type="exit"),
    ],
    ids=lambda step: f"{step.type}-{step.id}",
)
def test_a_step_survives_its_proto(step: StepSpec) -> None:
    message = workflow_pb2.Step()

    step_to_proto(step, message)

    assert step_from_proto(message) == step


def test_else_is_written_to_the_proto_field_named_else() -> None:
    message = workflow_pb2.Step()

    step_to_proto(EXAMPLE[3], message)

    assert (message.then, getattr(message, "else")) == ("hook", "done")


def test_unset_fields_stay_unset_in_the_proto() -> None:
    message = workflow_pb2.Step()

    step_to_proto(StepSpec(id="done", type="exit"), message)

    assert message == workflow_pb2.Step(id="done", type="exit")
    assert not message.HasField("body")


def test_a_proto_step_is_read_trimmed_with_its_body_as_json() -> None:
    message = workflow_pb2.Step(
        id=" hook ",
        type=" webhook ",
        url=" https://example.com/hook ",
        method="post",
        headers={"X-A": " keep "},
        on_timeout=" t ",
        then=" a ",
        condition=" true ",
        subject=" kept as written ",
    )
    message.body.struct_value.update({"n": 95, "s": " x "})
    setattr(message, "else", " b ")  # `else` is a Python keyword

    step = step_from_proto(message)

    assert step == StepSpec(
        id="hook",
        type="webhook",
        url="https://example.com/hook",
        method="POST",
        headers={"X-A": " keep "},
        on_timeout="t",
        then="a",
        else_="b",
        condition="true",
        subject=" kept as written ",
        body={"n": 95, "s": " x "},
    )
    assert isinstance(step.body["n"], int)


def test_a_proto_step_without_a_body_has_none() -> None:
    assert step_from_proto(workflow_pb2.Step(id="s", type="exit")).body is None


# Problems


def test_no_problems_raise_nothing() -> None:
    Problems().raise_if_any()


def test_problems_raise_invalid_argument_with_every_problem() -> None:
    problems = Problems()
    problems.add("steps[0].body", "is required")
    problems.add("steps[2]", "'x' is unreachable")

    with pytest.raises(InvalidArgument) as raised:
        problems.raise_if_any()

    assert raised.value.reason == "INVALID_WORKFLOW"
    assert (
        raised.value.message == "Invalid workflow: steps[0].body: is required; steps[2]: 'x' is unreachable"
    )
    assert raised.value.metadata == {"problems": "steps[0].body: is required | steps[2]: 'x' is unreachable"}


def test_problems_name_what_they_are_about() -> None:
    problems = Problems()
    problems.add("cooldown", "too long")

    with pytest.raises(InvalidArgument) as raised:
        problems.raise_if_any("policy")

    assert (raised.value.reason, raised.value.message) == (
        "INVALID_POLICY",
        "Invalid policy: cooldown: too long",
    )


def test_the_problems_metadata_is_capped() -> None:
    problems = Problems()
    for index in range(100):
        problems.add(f"steps[{index}]", "x" * 50)

    with pytest.raises(InvalidArgument) as raised:
        problems.raise_if_any()

    assert len(raised.value.metadata["problems"]) == 2000
    assert raised.value.message.count("x" * 50) == 100


def test_validation_problems_raise_together() -> None:
    problems = Problems()
    validated_steps((StepSpec(id="s", type="sms"), StepSpec(id="s", type="exit")), problems)

    with pytest.raises(InvalidArgument) as raised:
        problems.raise_if_any()

    assert raised.value.reason == "INVALID_WORKFLOW"
    assert raised.value.message == (
        "Invalid workflow: steps[1].id: 's' is used by an earlier step; "
        "steps[0].body: is required for a sms step and must be a string"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            StepSpec("pause", "delay", duration="P99999999999D"),
            "steps[0].duration: 'P99999999999D' is not an ISO 8601 duration such as PT24H or P7D",
        ),
        (
            StepSpec("pause", "delay", until="tomorrow"),
            "steps[0].until: 'tomorrow' is not an RFC 3339 timestamp with a time zone",
        ),
        (
            StepSpec("pause", "delay", until="2026-12-01T10:00:00"),
            "steps[0].until: '2026-12-01T10:00:00' is not an RFC 3339 timestamp with a time zone",
        ),
        (
            StepSpec("hook", "webhook", url="https://example.com", headers={"X-A": "a\r\nX-B: 1"}),
            "steps[0].headers.X-A: a value has at most 4096 characters and no line breaks",
        ),
    ],
)
def test_values_that_could_never_work_are_refused_when_saved(spec: StepSpec, expected: str) -> None:
    assert problems_of(spec) == [expected]


def test_a_literal_until_with_a_time_zone_and_a_lowercase_method_are_fine() -> None:
    problems = Problems()
    steps = validated_steps(
        (
            StepSpec("pause", "delay", until="2026-12-01T10:00:00Z"),
            StepSpec("hook", "webhook", url="https://example.com", method="put"),
        ),
        problems,
    )

    assert problems.problems == []
    assert steps[1].method == "PUT"
