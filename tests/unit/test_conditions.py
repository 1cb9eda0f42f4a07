"""kernel.conditions: CEL over JSON, the names a condition may use, and readable errors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kernel.conditions import MAX_CONDITION, ConditionError, compile_condition

NAMES = ("event", "contact", "variables")
DATA: dict[str, Any] = {
    "event": {"name": "order.completed", "data": {"amount": 149.99, "count": 3, "items": ["a", "b"]}},
    "contact": {"tags": ["vip"], "custom_fields": {"plan": "Pro"}},
    "variables": {"coupon": "SPRING"},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro'", True),
        ("event.data.amount > 100", True),  # a double against an int
        ("event.data.count == 3.0", True),  # an int against a double
        ("event.data.count < 2", False),
        ("event.data.amount == 'a lot'", False),  # different types are unequal, not an error
        ("event.data.amount != 'a lot'", True),
        ("'vip' in contact.tags", True),
        ("contact.tags.exists(tag, tag.startsWith('v'))", True),
        ("event.data.items.all(item, size(item) == 1)", True),
        ("has(event.data.coupon) || variables.coupon == 'SPRING'", True),
        ("event.name.matches('^order\\\\.')", True),
    ],
)
def test_a_condition_evaluates_over_json(source: str, expected: bool) -> None:
    assert compile_condition(source, NAMES).evaluate(DATA) is expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "the condition is empty"),
        ("event.data.amount >", "syntax error"),
        ("order.total > 1", "unknown name 'order': a condition can use event, contact, variables"),
        ("event.data.x == 1 && __import__ == 1", "unknown name '__import__'"),
        ("x" * (MAX_CONDITION + 1), f"the condition is {MAX_CONDITION + 1} characters long"),
    ],
)
def test_a_bad_condition_is_refused_when_compiled(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(message)):
        compile_condition(source, NAMES)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("event.data.missing == 1", "no field 'missing'"),
        ("contact.custom_fields.plan > 3", "cannot apply > to string and int"),
        ("event.data.amount + 1", "the condition gave 150.99, not true or false"),
    ],
)
def test_a_condition_that_fails_on_the_data_says_why(source: str, message: str) -> None:
    with pytest.raises(ConditionError) as raised:
        compile_condition(source, NAMES).evaluate(DATA)
    assert str(raised.value) == message


def test_the_values_a_condition_read_are_shown() -> None:
    condition = compile_condition(
        "event.data.amount > 100.0 && contact.custom_fields.plan == 'Pro' && has(event.data.nope)", NAMES
    )
    assert condition.values_seen(DATA) == (
        'event.data.amount = 149.99, contact.custom_fields.plan = "Pro", event.data.nope = (missing)'
    )


def test_a_macro_variable_is_not_an_unknown_name() -> None:
    condition = compile_condition("contact.tags.exists(t, t == 'vip')", NAMES)
    assert condition.evaluate(DATA) is True
    assert condition.values_seen(DATA) == 'contact.tags = ["vip"]'
