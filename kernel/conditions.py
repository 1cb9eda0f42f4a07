"""Conditions: CEL expressions (cel-python) over JSON data, such as
`event.data.amount > 100.0 && contact.custom_fields.plan == "Pro"`.

Conditions are tenant input. CEL has no unbounded loops, no side effects and no access to
Python objects: it sees only the JSON values it is given. The expression's length is capped, and
only the names a caller allows (`event`, `contact`, `variables`, …) may be used; anything else is
refused when the condition is saved, not when it runs.
"""

from __future__ import annotations

import json
import logging
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, bool_eq, bool_ge, bool_gt, bool_le, bool_lt, bool_ne
from lark import Token, Tree

MAX_CONDITION = 4096
# Macros that bind a variable of their own: `list.exists(x, x > 1)`.
BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
MAX_SHOWN_VALUE = 80

# cel-python logs every evaluation error at ERROR level; the caller reports them itself.
logging.getLogger("celpy").setLevel(logging.CRITICAL)
logging.getLogger("celpy.Evaluator").setLevel(logging.CRITICAL)

_environment = celpy.Environment()
NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)
Comparison = Callable[[Any, Any], Any]


def _numbers(a: Any, b: Any) -> bool:
    return isinstance(a, NUMBERS) and isinstance(b, NUMBERS) and type(a) is not type(b)


def _ordering(compare: Callable[[float, float], bool], same_type: Comparison) -> Comparison:
    """CEL orders numbers across int, uint and double (`149.99 > 100`); cel-python does not,
    and JSON gives `amount: 50` as an int and `149.99` as a double."""

    def ordered(a: Any, b: Any) -> Any:
        if _numbers(a, b):
            return celtypes.BoolType(compare(float(a), float(b)))
        return same_type(a, b)

    return ordered


def _equality(equal: bool, same_type: Comparison) -> Comparison:
    """CEL's equality across types: numbers compare by value, other different types are unequal."""

    def compared(a: Any, b: Any) -> Any:
        if _numbers(a, b):
            return celtypes.BoolType((float(a) == float(b)) is equal)
        try:
            return same_type(a, b)
        except TypeError:
            return celtypes.BoolType(not equal)

    return compared


OPERATORS: dict[str, Comparison] = {
    "_<_": _ordering(operator.lt, bool_lt),
    "_<=_": _ordering(operator.le, bool_le),
    "_>_": _ordering(operator.gt, bool_gt),
    "_>=_": _ordering(operator.ge, bool_ge),
    "_==_": _equality(True, bool_eq),
    "_!=_": _equality(False, bool_ne),
}


class ConditionError(Exception):
    """A condition that does not compile, uses a name it may not, or fails to evaluate."""


@dataclass(frozen=True)
class Condition:
    source: str
    paths: tuple[tuple[str, ...], ...]
    _program: celpy.Runner

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        """The condition's value over `data` (name → JSON value); it must be a boolean."""
        activation = {name: json_to_cel(value) for name, value in data.items()}
        try:
            result = self._program.evaluate(activation)
        except CELEvalError as error:
            raise ConditionError(_first_line(error)) from None
        if isinstance(result, CELEvalError):
            raise ConditionError(_first_line(result))
        if not isinstance(result, celpy.celtypes.BoolType):
            raise ConditionError(f"the condition gave {_shown(result)}, not true or false")
        return bool(result)

    def values_seen(self, data: Mapping[str, Any]) -> str:
        """The values of the fields the condition reads, as a person reads them:
        `event.data.plan = "free", contact.tags = ["beta"]`."""
        shown = []
        for path in self.paths:
            value: Any = data
            for name in path:
                if isinstance(value, Mapping) and name in value:
                    value = value[name]
                else:
                    value = _MISSING
                    break
            shown.append(f"{'.'.join(path)} = {'(missing)' if value is _MISSING else _shown(value)}")
        return ", ".join(shown)


_MISSING = object()


def compile_condition(source: str, names: Sequence[str]) -> Condition:
    """The condition `source`, or a ConditionError saying what to fix."""
    return _compiled(source, tuple(names))


@lru_cache(maxsize=2048)
def _compiled(source: str, names: tuple[str, ...]) -> Condition:
    if not source.strip():
        raise ConditionError("the condition is empty")
    if len(source) > MAX_CONDITION:
        raise ConditionError(f"the condition is {len(source)} characters long; the limit is {MAX_CONDITION}")
    try:
        tree = _environment.compile(source)
    except CELParseError as error:
        raise ConditionError("syntax error: " + " ".join(str(error).split())) from None
    bound = set(_macro_variables(tree))
    for name in _identifiers(tree):
        if name not in names and name not in bound:
            raise ConditionError(f"unknown name {name!r}: a condition can use {', '.join(names)}")
    found = dict.fromkeys(_longest_paths(tree, set(names)))
    paths = tuple(sorted(found, key=lambda path: source.find(".".join(path))))  # as written
    return Condition(source, paths, _environment.program(tree, functions=OPERATORS))


def _identifiers(tree: Tree[Any]) -> Iterator[str]:
    for node in tree.iter_subtrees():
        if node.data == "ident":
            yield str(node.children[0])


def _macro_variables(tree: Tree[Any]) -> Iterator[str]:
    for node in tree.iter_subtrees():
        if node.data != "member_dot_arg" or len(node.children) < 3:
            continue
        method, arguments = node.children[1], node.children[2]
        if str(method) in BINDING_MACROS and isinstance(arguments, Tree) and arguments.children:
            yield from _identifiers(arguments.children[0])


def _dotted(node: Any) -> tuple[str, ...] | None:
    """`event.data.plan` for the member chain that reads it; None for anything else."""
    if not isinstance(node, Tree):
        return None
    if node.data in ("member", "primary") and len(node.children) == 1:
        return _dotted(node.children[0])
    if node.data == "ident":
        return (str(node.children[0]),)
    if node.data == "member_dot" and len(node.children) == 2 and isinstance(node.children[1], Token):
        base = _dotted(node.children[0])
        return (*base, str(node.children[1])) if base else None
    return None


def _longest_paths(tree: Tree[Any], names: set[str]) -> Iterator[tuple[str, ...]]:
    paths = [path for node in tree.iter_subtrees() if (path := _dotted(node)) and path[0] in names]
    for path in paths:
        if not any(len(other) > len(path) and other[: len(path)] == path for other in paths):
            yield path


def _shown(value: Any) -> str:
    try:
        text = json.dumps(_plain(value), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[: MAX_SHOWN_VALUE - 1] + "…"


def _plain(value: Any) -> Any:
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


OPERATOR_NAMES = {
    "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "in": "in",
    "add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%",
}  # fmt: skip
NO_OVERLOAD = re.compile(
    r"no matching overload for Token\('RULE', '(?:relation|addition|multiplication)_(\w+)'\) applied to "
    r"'\(<class '[\w.]*?(\w+?)(?:Type)?'>, <class '[\w.]*?(\w+?)(?:Type)?'>\)'"
)


def _first_line(error: BaseException) -> str:
    detail = error.args[0] if error.args else error
    text = " ".join(str(detail).split())
    overload = NO_OVERLOAD.search(text)
    if overload:
        name, left, right = overload.groups()
        return f"cannot apply {OPERATOR_NAMES.get(name, name)} to {left.lower()} and {right.lower()}"
    return text.replace("no such member in mapping:", "no field")[:300]


# What a segment's condition may read: the contact alone.
SEGMENT_NAMES = ("contact",)


def contact_in_segment(condition: str, contact: Mapping[str, Any]) -> bool:
    """Does the contact document satisfy a segment's condition; one that cannot be evaluated
    on this contact (a missing field) says no."""
    try:
        return compile_condition(condition, SEGMENT_NAMES).evaluate({"contact": contact})
    except ConditionError:
        return False
