"""Tests for the value helpers of kernel.templates: default, upper, lower and date."""

from __future__ import annotations

import ast
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel import templates
from kernel.templates import (
    MAX_NESTING_DEPTH,
    MAX_SOURCE_BYTES,
    RenderLimits,
    TemplateRenderError,
    TemplateSyntaxError,
    compile_template,
    render_template,
)
from tests.unit.test_templates import Trap

HELPER_LIST = "lookup, default, upper, lower and date"

# --------------------------------------------------------------------------------------------
# upper and lower
# --------------------------------------------------------------------------------------------

CASE_CASES: list[tuple[str, dict[str, object], str]] = [
    ("{{upper name}}", {"name": "Ada Lovelace"}, "ADA LOVELACE"),
    ("{{lower name}}", {"name": "Ada Lovelace"}, "ada lovelace"),
    ("{{upper contact.name}}", {"contact": {"name": "ann"}}, "ANN"),
    ("{{upper 'literal'}} {{lower \"LITERAL\"}}", {}, "LITERAL literal"),
    # The same text as {{value}}, then the case change
    ("[{{upper missing}}]", {}, "[]"),
    ("[{{upper v}}]", {"v": None}, "[]"),
    ("{{upper v}}", {"v": True}, "TRUE"),
    ("{{lower v}}", {"v": False}, "false"),
    ("{{upper v}}", {"v": 3}, "3"),
    ("{{upper v}}", {"v": 1e21}, "1E+21"),
    ("{{upper v}}", {"v": 1.5}, "1.5"),
    ("{{upper v}}", {"v": math.nan}, "NAN"),
    ("{{upper v}}", {"v": ["a", ["b", None], 1]}, "A,B,,1"),
    ("{{upper v}}", {"v": {"k": "v"}}, "[OBJECT OBJECT]"),
    ("{{lower v}}", {"v": {"k": "v"}}, "[object object]"),
    ("{{upper 1}} {{upper true}} {{upper null}}|", {}, "1 TRUE |"),
    # Unicode default case mapping, whatever the locale
    ("{{upper v}}", {"v": "straße"}, "STRASSE"),
    ("{{lower v}}", {"v": "ÉCOLE Ω"}, "école ω"),
    ("{{upper v}}", {"v": "istanbul"}, "ISTANBUL"),
    ("{{lower v}}", {"v": "İ"}, "i̇"),
    ("{{upper v}}", {"v": "日本"}, "日本"),
    # Escaping happens after the case change, like any {{...}} output
    ("{{upper v}}", {"v": "<b>&amp;</b>"}, "&lt;B&gt;&amp;AMP;&lt;/B&gt;"),
    ("{{{upper v}}}", {"v": "<b>x</b>"}, "<B>X</B>"),
    ("{{& lower v}}", {"v": "<B>X</B>"}, "<b>x</b>"),
    ("{{lower v}}", {"v": "\"'`="}, "&quot;&#x27;&#x60;&#x3D;"),
    # Inside blocks, with block parameters and data variables
    ("{{#each xs}}{{upper this}} {{/each}}", {"xs": ["a", "b"]}, "A B "),
    ("{{#each xs as |x i|}}{{upper x}}{{i}}{{/each}}", {"xs": ["a", "b"]}, "A0B1"),
    ("{{#each m}}{{upper @key}}={{this}};{{/each}}", {"m": {"a": 1}}, "A=1;"),
    (
        "{{#with p}}{{upper name}} {{lower ../greeting}}{{/with}}",
        {"p": {"name": "x"}, "greeting": "HI"},
        "X hi",
    ),
    ("{{upper @root.name}}", {"name": "root"}, "ROOT"),
]


@pytest.mark.parametrize(("source", "context", "expected"), CASE_CASES)
def test_upper_and_lower(source: str, context: dict[str, object], expected: str) -> None:
    assert render_template(source, context) == expected


def test_case_helpers_are_not_escaped_for_plain_text() -> None:
    assert render_template("{{upper v}}", {"v": "a&b"}, escape_html=False) == "A&B"


def test_case_helpers_use_base_str_methods_of_subclasses() -> None:
    class Shouty(str):
        def upper(self) -> str:
            raise AssertionError("upper() of the data must not be called")

        def lower(self) -> str:
            raise AssertionError("lower() of the data must not be called")

        def __str__(self) -> str:
            raise AssertionError("str() must not be called")

    assert render_template("{{upper v}} {{lower v}}", {"v": Shouty("Ab")}) == "AB ab"


# --------------------------------------------------------------------------------------------
# default
# --------------------------------------------------------------------------------------------

DEFAULT_CASES: list[tuple[str, dict[str, object], str]] = [
    ('{{default name "friend"}}', {"name": "Ann"}, "Ann"),
    ('{{default name "friend"}}', {}, "friend"),
    ('{{default name "friend"}}', {"name": None}, "friend"),
    ('{{default name "friend"}}', {"name": ""}, "friend"),
    ('{{default contact.name "friend"}}', {"contact": {}}, "friend"),
    ('{{default contact.name "friend"}}', {}, "friend"),
    # Only null, missing and "" are gaps: other falsy values are kept
    ('{{default v "x"}}', {"v": 0}, "0"),
    ('{{default v "x"}}', {"v": 0.0}, "0"),
    ('{{default v "x"}}', {"v": False}, "false"),
    ('[{{default v "x"}}]', {"v": []}, "[]"),
    ('{{default v "x"}}', {"v": {}}, "[object Object]"),
    ('[{{default v "x"}}]', {"v": " "}, "[ ]"),
    ('{{default v "x"}}', {"v": "0"}, "0"),
    # The fallback can be any expression and any value
    ("{{default nick name}}", {"name": "Ann"}, "Ann"),
    ("{{default nick 42}}", {}, "42"),
    ("{{default nick false}}", {}, "false"),
    ("[{{default nick null}}]", {}, "[]"),
    ("[{{default nick other}}]", {}, "[]"),
    ("{{default a (default b 'c')}}", {}, "c"),
    ("{{default a (default b 'c')}}", {"b": "B"}, "B"),
    ("{{default (lookup m k) 'none'}}", {"m": {"x": 1}, "k": "y"}, "none"),
    ("{{default (lookup m k) 'none'}}", {"m": {"x": 1}, "k": "x"}, "1"),
    ("{{default @index 'n/a'}}|{{#each xs}}{{default @index 'n/a'}}{{/each}}", {"xs": [1, 2]}, "n/a|01"),
    # The value is kept as it is, not turned into text
    ("{{#each (default items fallback)}}{{this}}{{/each}}", {"fallback": ["a", "b"]}, "ab"),
    ("{{#each (default items fallback)}}{{this}}{{/each}}", {"items": ["x"], "fallback": ["a"]}, "x"),
    ("{{#with (default person anon)}}{{name}}{{/with}}", {"anon": {"name": "anonymous"}}, "anonymous"),
    ("{{#if (default v true)}}y{{else}}n{{/if}}", {"v": 0}, "n"),
    ("{{#if (default v true)}}y{{else}}n{{/if}}", {"v": ""}, "y"),
    ("{{lookup (default m other) 'k'}}", {"other": {"k": "from other"}}, "from other"),
    # Escaping
    ("{{default v '<i>'}} {{{default v '<i>'}}}", {}, "&lt;i&gt; <i>"),
    ("{{default v 'x'}}", {"v": "<b>"}, "&lt;b&gt;"),
]


@pytest.mark.parametrize(("source", "context", "expected"), DEFAULT_CASES)
def test_default(source: str, context: dict[str, object], expected: str) -> None:
    assert render_template(source, context) == expected


def test_default_does_not_evaluate_an_unneeded_fallback() -> None:
    limits = RenderLimits(max_steps=2)  # the node, then default; upper would be a third step
    assert render_template("{{default v (upper w)}}", {"v": "kept"}, limits) == "kept"
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template("{{default v (upper w)}}", {"w": "used"}, limits)


def test_default_reads_the_length_of_a_str_subclass_without_calling_it() -> None:
    class Empty(str):
        def __len__(self) -> int:
            raise AssertionError("len() of the data must not be called")

    assert render_template("{{default v 'fallback'}}", {"v": Empty("")}) == "fallback"
    assert render_template("{{default v 'fallback'}}", {"v": Empty("kept")}) == "kept"


# --------------------------------------------------------------------------------------------
# Sub-expressions and nesting
# --------------------------------------------------------------------------------------------

NESTING_CASES: list[tuple[str, dict[str, object], str]] = [
    ('{{upper (default contact.name "friend")}}', {"contact": {}}, "FRIEND"),
    ('{{upper (default contact.name "friend")}}', {"contact": {"name": "Ann"}}, "ANN"),
    ("{{lower (upper v)}}", {"v": "MiXeD"}, "mixed"),
    ("{{upper (lower (upper (lower v)))}}", {"v": "aB"}, "AB"),
    ("{{#if (lower x)}}yes{{else}}no{{/if}}", {"x": "X"}, "yes"),
    ("{{#if (lower x)}}yes{{else}}no{{/if}}", {}, "no"),
    ("{{#if (upper x)}}yes{{else}}no{{/if}}", {"x": False}, "yes"),  # "FALSE" is a non-empty string
    ("{{#unless (upper x)}}empty{{/unless}}", {"x": None}, "empty"),
    ("{{#if a}}A{{else if (lower b)}}B{{/if}}", {"b": "x"}, "B"),
    ("{{lookup obj (lower key)}}", {"obj": {"vip": "yes"}, "key": "VIP"}, "yes"),
    (
        "{{lookup (lookup obj (lower key)) (upper sub)}}",
        {"obj": {"a": {"B": 1}}, "key": "A", "sub": "b"},
        "1",
    ),
    (
        "{{#each (lookup groups (lower kind))}}{{upper this}}{{/each}}",
        {"groups": {"a": ["x"]}, "kind": "A"},
        "X",
    ),
    ("{{#if n includeZero=(default z true)}}zero{{/if}}", {"n": 0}, "zero"),
    ("{{#if n includeZero=(default z true)}}zero{{/if}}|", {"n": 0, "z": False}, "|"),
    (
        "{{#each xs as |x|}}{{upper (default x.name 'anon')}} {{/each}}",
        {"xs": [{"name": "a"}, {}]},
        "A ANON ",
    ),
    ("{{#with p as |q|}}{{lower (lookup q (default k 'name'))}}{{/with}}", {"p": {"name": "BOB"}}, "bob"),
    ('{{upper (date t "%b")}} {{lower (date t "%A")}}', {"t": "2026-11-23T10:00:00Z"}, "NOV monday"),
    ('{{date (default t "2026-01-01") "%Y"}}', {}, "2026"),
    ('{{date t (default fmt "%d/%m")}}', {"t": "2026-11-23"}, "23/11"),
    ('{{date t (default fmt "%d/%m")}}', {"t": "2026-11-23", "fmt": "%m"}, "11"),
    ('{{default (date t) "no date"}}', {"t": "not a date"}, "no date"),
    ('{{default (date t) "no date"}}', {"t": 0}, "1970-01-01T00:00:00Z"),
    ("{{#if (date t)}}dated{{else}}undated{{/if}}", {"t": "garbage"}, "undated"),
    (
        '{{date (lookup event "occurred_at") "%H:%M"}}',
        {"event": {"occurred_at": "2026-11-23T10:05:00Z"}},
        "10:05",
    ),
]


@pytest.mark.parametrize(("source", "context", "expected"), NESTING_CASES)
def test_helpers_in_sub_expressions(source: str, context: dict[str, object], expected: str) -> None:
    assert render_template(source, context) == expected


def nested_calls(helper: str, depth: int) -> str:
    expression = "v"
    for _ in range(depth):
        expression = f"({helper} {expression})"
    return "{{" + helper + " " + expression + "}}"


@pytest.mark.parametrize("helper", ["upper", "lower", "date"])
def test_helper_sub_expression_nesting_is_limited(helper: str) -> None:
    compile_template(nested_calls(helper, MAX_NESTING_DEPTH))
    with pytest.raises(TemplateSyntaxError, match="sub-expressions are nested more than 32 levels deep"):
        compile_template(nested_calls(helper, MAX_NESTING_DEPTH + 1))


def test_deepest_nesting_renders() -> None:
    assert render_template(nested_calls("upper", MAX_NESTING_DEPTH), {"v": "deep"}) == "DEEP"
    # The default format reads back as the same moment, however often it is applied.
    assert render_template(nested_calls("date", MAX_NESTING_DEPTH), {"v": 0}) == "1970-01-01T00:00:00Z"
    source = "{{default a " + "(default a " * MAX_NESTING_DEPTH + "'end'" + ")" * MAX_NESTING_DEPTH + "}}"
    assert render_template(source, {}) == "end"


# --------------------------------------------------------------------------------------------
# A helper name alone is data
# --------------------------------------------------------------------------------------------

DATA_CASES: list[tuple[str, dict[str, object], str]] = [
    ("{{date}}", {"date": "tomorrow"}, "tomorrow"),
    ("{{upper}}|{{lower}}|{{default}}", {"upper": "U", "lower": "L", "default": "D"}, "U|L|D"),
    ("[{{date}}]", {}, "[]"),
    ("{{{date}}} {{& upper}}", {"date": "<d>", "upper": "<u>"}, "<d> <u>"),
    ("{{date}}", {"date": "<d>"}, "&lt;d&gt;"),
    ("{{#if date}}has date{{/if}}", {"date": 1}, "has date"),
    ("{{#each upper}}{{this}}{{/each}}", {"upper": ["A", "B"]}, "AB"),
    ("{{#with default}}{{x}}{{/with}}", {"default": {"x": "inner"}}, "inner"),
    ("{{date.year}} {{upper.[0]}}", {"date": {"year": 2026}, "upper": ["U"]}, "2026 U"),
    ("{{this.date}} {{./upper}} {{[lower]}}", {"date": "d", "upper": "u", "lower": "l"}, "d u l"),
    ("{{lookup this 'date'}}", {"date": "looked up"}, "looked up"),
    ("{{upper date}}", {"date": "today"}, "TODAY"),
    ("{{date date}}", {"date": "2026-11-23T10:00:00Z"}, "2026-11-23T10:00:00Z"),
    ("{{default default upper}}", {"upper": "from upper"}, "from upper"),
    # A block parameter with a helper's name is data too
    ("{{#each xs as |date|}}{{date}};{{/each}}", {"xs": ["a", "b"]}, "a;b;"),
    ("{{#each xs as |upper|}}{{lower upper}}{{/each}}", {"xs": ["A", "B"]}, "ab"),
    ("{{#with x as |default|}}{{default}}{{/with}}", {"x": "bp"}, "bp"),
]


@pytest.mark.parametrize(("source", "context", "expected"), DATA_CASES)
def test_helper_names_alone_are_data(source: str, context: dict[str, object], expected: str) -> None:
    assert render_template(source, context) == expected


# --------------------------------------------------------------------------------------------
# date: values
# --------------------------------------------------------------------------------------------


def other_digits(text: str, zero: str) -> str:
    """``text`` with its ASCII digits replaced by the digits of another script."""
    return "".join(chr(ord(zero) + int(char)) if char in "0123456789" else char for char in text)


DATE_VALUES: list[tuple[object, str]] = [
    # RFC 3339 and ISO 8601 strings; the default format is RFC 3339 in the written offset
    ("2026-11-23T10:00:00Z", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00z", "2026-11-23T10:00:00Z"),
    ("2026-11-23t10:00:00Z", "2026-11-23T10:00:00Z"),
    ("2026-11-23 10:00:00Z", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00.000Z", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00,5Z", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00.123456789+02:00", "2026-11-23T10:00:00+02:00"),
    ("2026-11-23T10:00:00+02:00", "2026-11-23T10:00:00+02:00"),
    ("2026-11-23T10:00:00+0530", "2026-11-23T10:00:00+05:30"),
    ("2026-11-23T10:00:00-08", "2026-11-23T10:00:00-08:00"),
    ("2026-11-23T10:00:00-03:30", "2026-11-23T10:00:00-03:30"),
    ("2026-11-23T10:00:00+00:00", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00-00:00", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00:00+23:59", "2026-11-23T10:00:00+23:59"),
    ("2026-11-23T10:00:00", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00", "2026-11-23T10:00:00Z"),
    ("2026-11-23T10:00+01:00", "2026-11-23T10:00:00+01:00"),
    ("2026-11-23", "2026-11-23T00:00:00Z"),
    ("2024-02-29", "2024-02-29T00:00:00Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59Z"),
    # Numbers are seconds since the epoch, shown in UTC
    (0, "1970-01-01T00:00:00Z"),
    (1_700_000_000, "2023-11-14T22:13:20Z"),
    (1_700_000_000.75, "2023-11-14T22:13:20Z"),
    (-1, "1969-12-31T23:59:59Z"),
    (-0.5, "1969-12-31T23:59:59Z"),
    (253_402_300_799, "9999-12-31T23:59:59Z"),
    (-62_135_596_800, "0001-01-01T00:00:00Z"),
    (2**40, ""),  # in the year 36812
    # Not timestamps: rendered as "", like a missing value
    ("", ""),
    ("tomorrow", ""),
    ("2026-11-23T10", ""),
    ("2026-11-23T10:00:00+2", ""),
    ("2026-11-23T10:00:00+02:0", ""),
    ("2026-11-23T10:00:00 Z", ""),
    ("2026-11-23Z", ""),
    ("20261123T100000Z", ""),
    ("2026-W48-1", ""),
    ("2026-327", ""),
    ("26-11-23", ""),
    ("2026-1-23", ""),
    (" 2026-11-23", ""),
    ("2026-11-23 ", ""),
    ("2026-11-23\n", ""),
    ("2026-11-23T10:00:00.Z", ""),
    ("2026-11-23T10:00:00.1234567890Z", ""),
    ("2026-13-01", ""),
    ("2026-00-10", ""),
    ("2026-02-29", ""),
    ("2026-02-30", ""),
    ("2026-11-31", ""),
    ("0000-01-01", ""),
    ("2026-11-23T24:00:00Z", ""),
    ("2026-11-23T23:60:00Z", ""),
    ("2026-11-23T23:59:60Z", ""),
    ("2026-11-23T10:00:00+24:00", ""),
    ("2026-11-23T10:00:00+05:60", ""),
    (other_digits("2026-11-23", zero="\uff10"), ""),  # full-width digits
    (other_digits("2026-11-23", zero="\u0660"), ""),  # Arabic-Indic digits
    ("1700000000", ""),  # a string of digits is not a number of seconds
    ("2026-11-23T10:00:00.000000000+00:00:00", ""),
    (True, ""),
    (False, ""),
    (None, ""),
    ([], ""),
    (["2026-11-23"], ""),
    ({}, ""),
    ({"date": "2026-11-23"}, ""),
    (math.nan, ""),
    (math.inf, ""),
    (-math.inf, ""),
    (1e300, ""),
    (253_402_300_800, ""),
    (253_402_300_799.5, ""),
    (-62_135_596_801, ""),
    (10**30, ""),
    (-(10**30), ""),
]


@pytest.mark.parametrize(("value", "expected"), DATE_VALUES)
def test_date_values(value: object, expected: str) -> None:
    assert render_template("{{date v}}", {"v": value}) == expected


def test_date_of_huge_values_is_empty() -> None:
    long_fraction = "2026-11-23T10:00:00." + "0" * 100 + "Z"
    for value in (long_fraction, "2" * 1_000_000, "2026-11-23" * 100_000, 10**5000, -(10**5000)):
        assert render_template("[{{date v}}]", {"v": value}) == "[]"


def test_date_of_a_missing_value_is_empty() -> None:
    assert render_template("[{{date missing}}][{{date a.b.c '%Y'}}][{{date null}}]", {}) == "[][][]"


def test_date_literals() -> None:
    assert render_template("{{date '2026-11-23' '%d.%m.%Y'}} {{date 0 '%Y'}}", {}) == "23.11.2026 1970"
    assert render_template("[{{date true}}{{date -1.5 '%S'}}]", {}) == "[58]"


def test_date_of_a_str_or_int_subclass_uses_its_base_value() -> None:
    class Stamp(str):
        def __str__(self) -> str:
            raise AssertionError("str() must not be called")

        def __len__(self) -> int:
            raise AssertionError("len() must not be called")

    class Seconds(int):
        def __int__(self) -> int:
            raise AssertionError("int() must not be called")

        def __index__(self) -> int:
            raise AssertionError("index() must not be called")

        def __le__(self, other: object) -> bool:
            raise AssertionError("<= must not be called")

        def __ge__(self, other: object) -> bool:
            raise AssertionError(">= must not be called")

    context = {"s": Stamp("2026-11-23"), "n": Seconds(86_400)}
    assert render_template("{{date s '%d'}} {{date n '%d'}}", context) == "23 02"


def test_date_of_a_non_json_value_is_a_render_error() -> None:
    with pytest.raises(TemplateRenderError, match="cannot render a value of type datetime"):
        render_template("{{date v}}", {"v": datetime(2026, 11, 23, tzinfo=UTC)})
    with pytest.raises(TemplateRenderError, match="type set"):
        render_template("{{date v}}", {"v": {1}})


def test_date_output_is_escaped_like_any_output() -> None:
    source = "{{date t '<%Y> & \"%m\"'}}|{{{date t '<%Y>'}}}"
    assert render_template(source, {"t": "2026-11-23"}) == "&lt;2026&gt; &amp; &quot;11&quot;|<2026>"


def test_the_default_format_is_rfc3339_in_the_written_offset() -> None:
    context = {"event": {"occurred_at": "2024-12-10T10:00:00.120Z"}, "local": "2024-12-10T11:00:00+01:00"}
    source = "{{date event.occurred_at}} {{date local}}"
    assert render_template(source, context) == "2024-12-10T10:00:00Z 2024-12-10T11:00:00+01:00"


# --------------------------------------------------------------------------------------------
# date: formats
# --------------------------------------------------------------------------------------------

MORNING = "2026-03-05T07:08:09Z"  # a Thursday, day 64 of the year

FORMATS: list[tuple[str, str, str]] = [
    (MORNING, "%Y", "2026"),
    (MORNING, "%y", "26"),
    (MORNING, "%m", "03"),
    (MORNING, "%d", "05"),
    (MORNING, "%j", "064"),
    (MORNING, "%H", "07"),
    (MORNING, "%I", "07"),
    (MORNING, "%M", "08"),
    (MORNING, "%S", "09"),
    (MORNING, "%B", "March"),
    (MORNING, "%b", "Mar"),
    (MORNING, "%A", "Thursday"),
    (MORNING, "%a", "Thu"),
    (MORNING, "%p", "AM"),
    (MORNING, "%Z", "UTC"),
    (MORNING, "%z", "+0000"),
    (MORNING, "%%", "%"),
    (MORNING, "%%Y", "%Y"),
    (MORNING, "100%%", "100%"),
    (MORNING, "%-m/%-d/%-y %-H:%-M:%-S %-j", "3/5/26 7:8:9 64"),
    (MORNING, "%-Y", "2026"),
    (MORNING, "%-I%p", "7AM"),
    (MORNING, "%A, %-d %B %Y at %H:%M", "Thursday, 5 March 2026 at 07:08"),
    (MORNING, "%Y-%m-%dT%H:%M:%S%z", "2026-03-05T07:08:09+0000"),
    (MORNING, "", ""),
    (MORNING, "no directives at all", "no directives at all"),
    (MORNING, "ünïcödé %Y ✓", "ünïcödé 2026 ✓"),
    (MORNING, "line\nbreak %d", "line\nbreak 05"),
    ("2026-03-05T00:30:00Z", "%I:%M %p", "12:30 AM"),
    ("2026-03-05T12:00:00Z", "%I:%M %p", "12:00 PM"),
    ("2026-03-05T13:45:00Z", "%I:%M %p %-I", "01:45 PM 1"),
    ("2026-03-05T23:59:59Z", "%I %p", "11 PM"),
    ("0009-01-01", "%Y %y", "0009 09"),
    ("0999-12-31", "%Y %-Y %j", "0999 999 365"),
    ("2024-12-31", "%j", "366"),
    ("2026-11-23T10:00:00+02:00", "%H:%M %Z %z", "10:00 UTC+02:00 +0200"),
    ("2026-11-23T10:00:00-05:30", "%H:%M %Z %z", "10:00 UTC-05:30 -0530"),
    ("2026-11-23T23:30:00-01:00", "%A %d %H", "Monday 23 23"),  # the written offset's own day
    ("2026-11-23T10:00:00-00:00", "%Z %z", "UTC +0000"),
    ("2026-01-01", "%B %b", "January Jan"),
    ("2026-05-01", "%B %b", "May May"),
    ("2026-09-01", "%B %b %A %a", "September Sep Tuesday Tue"),
    ("2026-11-22", "%A %a", "Sunday Sun"),
    ("2026-11-21", "%A %a", "Saturday Sat"),
]


@pytest.mark.parametrize(("value", "format_text", "expected"), FORMATS)
def test_date_formats(value: str, format_text: str, expected: str) -> None:
    assert render_template("{{{date v f}}}", {"v": value, "f": format_text}) == expected
    assert render_template('{{{date v "' + format_text + '"}}}', {"v": value}) == expected


def test_engine_formats_dates_itself_without_strftime_or_locale() -> None:
    source = Path(templates.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert attributes & {"strftime", "strptime", "fromisoformat", "setlocale", "isoformat"} == set()
    assert imported & {"locale", "time", "calendar"} == set()


def test_date_with_a_format_from_the_data() -> None:
    context = {"t": "2026-11-23T10:00:00Z", "formats": {"en": "%B %-d", "de": "%-d. %B"}}
    source = "{{date t (lookup formats lang)}}"
    assert render_template(source, {**context, "lang": "en"}) == "November 23"
    assert render_template(source, {**context, "lang": "de"}) == "23. November"
    assert render_template(source, {**context, "lang": "xx"}) == "2026-11-23T10:00:00Z"  # missing: default
    assert render_template("{{date t f}}", {"t": 0, "f": None}) == "1970-01-01T00:00:00Z"
    assert render_template("{{date t f}}", {"t": 0, "f": ""}) == ""


@pytest.mark.parametrize(
    ("format_value", "message"),
    [
        ("%Q", "invalid date format: unsupported directive '%Q'"),
        ("%c", "unsupported directive '%c'"),
        ("%Y-%m-%d %", "'%' at the end of the format is incomplete"),
        ("%-B", "'-' only goes with a number directive"),
        ("x" * 201, "the format is 201 characters long; the maximum is 200"),
        (5, "the format of date must be a string"),
        (True, "the format of date must be a string"),
        (["%Y"], "the format of date must be a string"),
        ({"f": "%Y"}, "the format of date must be a string"),
    ],
)
def test_an_invalid_format_from_the_data_is_a_render_error(format_value: object, message: str) -> None:
    template = compile_template("{{date t f}}")
    with pytest.raises(TemplateRenderError, match=message):
        template.render({"t": MORNING, "f": format_value})
    with pytest.raises(TemplateRenderError, match=message):  # even when there is no timestamp
        template.render({"t": "not a date", "f": format_value})


def test_a_huge_format_from_the_data_fails_fast_with_a_short_message() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_template("{{date t f}}", {"t": MORNING, "f": "%Y" * 5_000_000})
    assert "the format is 10000000 characters long" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_a_format_from_a_non_json_value_is_refused_without_touching_it() -> None:
    Trap.touched.clear()
    with pytest.raises(TemplateRenderError, match="must be a string"):
        render_template("{{date t f}}", {"t": MORNING, "f": Trap()})
    assert Trap.touched == []


def test_a_format_at_the_length_limit_is_accepted_and_its_output_is_bounded() -> None:
    widest = "%B" * 100  # "September" for each: the longest output a format can make
    assert render_template("{{date t f}}", {"t": "2026-09-01", "f": widest}) == "September" * 100
    compile_template('{{date t "' + widest + '"}}')


# --------------------------------------------------------------------------------------------
# Compile-time errors: message, line and column
# --------------------------------------------------------------------------------------------

HELPER_SYNTAX_ERRORS: list[tuple[str, str, int, int]] = [
    # Argument counts
    ("{{upper a b}}", "upper takes exactly one argument, got 2, as in {{upper value}}", 1, 3),
    ("{{lower a b c}}", "lower takes exactly one argument, got 3", 1, 3),
    ("{{default a}}", 'default takes exactly two arguments, got 1, as in {{default value "fallback"}}', 1, 3),
    ("{{default a b c}}", "default takes exactly two arguments, got 3", 1, 3),
    ("{{date a b c}}", 'date takes one or two arguments, got 3, as in {{date value "%d %B %Y"}}', 1, 3),
    ("{{lookup a}}", "lookup takes exactly two arguments, got 1", 1, 3),
    ("Hi\n  {{upper (lower)}}", "lower takes exactly one argument, got 0", 2, 12),
    ("{{upper (default)}}", "default takes exactly two arguments, got 0", 1, 10),
    ("{{upper (date)}}", "date takes one or two arguments, got 0", 1, 10),
    ("{{#if (upper)}}{{/if}}", "upper takes exactly one argument, got 0", 1, 8),
    ("{{#each xs}}\n{{lookup . (upper a b)}}\n{{/each}}", "upper takes exactly one argument, got 2", 2, 13),
    ("{{#if a includeZero=(default x)}}{{/if}}", "default takes exactly two arguments, got 1", 1, 22),
    # Options and block parameters
    ("{{upper a x=1}}", "upper does not accept key=value options; write it as {{upper value}}", 1, 11),
    ("{{upper x=1}}", "upper does not accept key=value options", 1, 9),
    ("{{date t format='%Y'}}", "date does not accept key=value options", 1, 10),
    ("{{lookup a b c=1}}", "lookup does not accept key=value options", 1, 14),
    ("{{upper (lower a k=v)}}", "lower does not accept key=value options", 1, 18),
    ("{{upper a as |x|}}", "'as |...|' is only allowed on {{#each ...}} and {{#with ...}}", 1, 3),
    ("{{date as |x|}}", "'as |...|' is only allowed on {{#each ...}} and {{#with ...}}", 1, 3),
    # Not block helpers
    ("{{#upper x}}{{/upper}}", "'upper' is not a block helper; write {{upper value}} without '#'", 1, 4),
    ("{{#lower}}{{/lower}}", "'lower' is not a block helper", 1, 4),
    ("{{#default a b}}{{/default}}", "'default' is not a block helper", 1, 4),
    ("{{#date t}}{{/date}}", "or use it in a sub-expression as in {{#if (date ...)}}", 1, 4),
    ("{{#if a}}{{else upper b}}{{/if}}", "'upper' is not a block helper", 1, 17),
    # Date formats written in the template
    ('{{date t "%Q"}}', "invalid date format: unsupported directive '%Q'; use %Y %y %m %d", 1, 10),
    ("x\n{{date t '%Y-%m-%e'}}", "unsupported directive '%e'", 2, 10),
    ('{{date t "%"}}', "'%' at the end of the format is incomplete; write %% for a percent sign", 1, 10),
    ('{{date t "%Y%-"}}', "'%-' at the end of the format is incomplete", 1, 10),
    ('{{date t "%-A"}}', "'%-A': '-' only goes with a number directive, as in %-d", 1, 10),
    ('{{date t "%-%"}}', "'%-%': '-' only goes with a number directive", 1, 10),
    ('{{date t "%--d"}}', "unsupported directive '%--'", 1, 10),
    ('{{date t "%%%"}}', "'%' at the end of the format is incomplete", 1, 10),
    ('{{upper (date t "%s")}}', "unsupported directive '%s'", 1, 17),
    ("{{date t 5}}", 'the format of date must be a string, as in {{date value "%d %B %Y"}}', 1, 10),
    ("{{date t true}}", "the format of date must be a string", 1, 10),
    ("{{date t null}}", "the format of date must be a string", 1, 10),
    ('{{date t "' + "x" * 201 + '"}}', "invalid date format: the format is 201 characters long", 1, 10),
    # Block parameters named after helpers are data, so they cannot be called
    (
        "{{#each xs as |upper|}}{{upper x}}{{/each}}",
        "'upper' is a block parameter here, so it cannot be called as the upper helper",
        1,
        26,
    ),
    ("{{#each xs as |date|}}{{lower (date x)}}{{/each}}", "'date' is a block parameter here", 1, 32),
    # Unknown helpers name the available ones
    ("{{shout x}}", f"unknown helper 'shout'; the helpers that take arguments are {HELPER_LIST}", 1, 3),
    (
        "{{upper (shout x)}}",
        f"unknown helper 'shout' in sub-expression; the helpers that take arguments are {HELPER_LIST}",
        1,
        10,
    ),
    ("{{upper (if x)}}", "unknown helper 'if' in sub-expression", 1, 10),
    ("{{Upper x}}", "unknown helper 'Upper'", 1, 3),
    ("{{[upper] x}}", "unknown helper '[upper]'", 1, 3),
    ("{{this.upper x}}", "unknown helper 'this.upper'", 1, 3),
    ('{{"upper" x}}', "unknown helper '\"upper\"'", 1, 3),
    ("{{upper (lookup a b) (date)}}", "upper takes exactly one argument, got 2", 1, 3),
    ("{{default (date) 'x'}}", "date takes one or two arguments, got 0", 1, 12),
]


@pytest.mark.parametrize(("source", "message", "line", "column"), HELPER_SYNTAX_ERRORS)
def test_helper_syntax_errors_say_what_and_where(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template(source)
    error = caught.value
    assert message in error.message
    assert (error.line, error.column) == (line, column)


def test_helper_errors_are_found_in_branches_that_would_never_render() -> None:
    with pytest.raises(TemplateSyntaxError, match="unsupported directive"):
        compile_template("{{#if false}}{{date t '%c'}}{{/if}}")


def test_a_huge_literal_format_is_a_syntax_error() -> None:
    source = '{{date t "' + "%Y" * ((MAX_SOURCE_BYTES - 20) // 2) + '"}}'
    with pytest.raises(TemplateSyntaxError, match="the maximum is 200") as caught:
        compile_template(source)
    assert len(caught.value.message) < 200


@pytest.mark.parametrize(
    "directive", [*"aAbBcCdDeEfFgGhHIjklmMnNOpPqQrRsStTuUvVwWxXyYzZ", "+", ":", "%", " ", "\n", "é"]
)
def test_only_the_documented_directives_are_accepted(directive: str) -> None:
    source = "{{date t '%" + directive + "'}}"
    if directive in "YymdjHIMSBbAapZz%":
        compile_template(source)
    else:
        with pytest.raises(TemplateSyntaxError, match="unsupported directive"):
            compile_template(source)


# --------------------------------------------------------------------------------------------
# Render-time limits
# --------------------------------------------------------------------------------------------


def test_every_helper_call_is_a_step() -> None:
    template = compile_template("{{lower (upper (default v 'x'))}}")  # one node and three calls
    assert template.render({}, RenderLimits(max_steps=4)) == "x"
    with pytest.raises(TemplateRenderError, match="more than 3 steps"):
        template.render({}, RenderLimits(max_steps=3))
    dated = compile_template("{{date t}}")
    assert dated.render({"t": 0}, RenderLimits(max_steps=2)) == "1970-01-01T00:00:00Z"
    with pytest.raises(TemplateRenderError, match="steps"):
        dated.render({"t": 0}, RenderLimits(max_steps=1))


def test_helpers_in_a_loop_exhaust_the_step_budget() -> None:
    source = "{{#each xs}}{{#if (upper (lower (default this 'x')))}}{{/if}}{{/each}}"
    with pytest.raises(TemplateRenderError, match="more than 100000 steps"):
        render_template(source, {"xs": [""] * 20_000})


def test_case_helper_text_is_bounded_even_when_not_output() -> None:
    with pytest.raises(TemplateRenderError, match="the text of upper is longer than the output limit"):
        render_template("{{#if (upper v)}}y{{/if}}", {"v": "a" * 300_000})
    limits = RenderLimits(max_output_chars=10)
    assert render_template("{{#if (upper v)}}y{{/if}}", {"v": "ß" * 5}, limits) == "y"
    with pytest.raises(TemplateRenderError, match="the text of upper is longer"):
        render_template("{{#if (upper v)}}y{{/if}}", {"v": "ß" * 6}, limits)  # 12 characters once upper


def test_case_helper_output_counts_towards_the_output_limit() -> None:
    limits = RenderLimits(max_output_chars=10)
    assert render_template("{{upper v}}", {"v": "<<"}, limits) == "&lt;&lt;"
    with pytest.raises(TemplateRenderError, match="longer than the limit of 10 characters"):
        render_template("{{upper v}}", {"v": "<<<"}, limits)
    with pytest.raises(TemplateRenderError, match="longer than the limit"):
        render_template("{{date t}}", {"t": 0}, limits)


def test_case_helpers_on_huge_or_deep_lists_fail_cleanly() -> None:
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template("{{#if (lower v)}}{{/if}}", {"v": [1] * 200_000})
    deep: list[object] = ["end"]
    for _ in range(100):
        deep = [deep]
    with pytest.raises(TemplateRenderError, match="nested more than"):
        render_template("{{upper v}}", {"v": deep})


# --------------------------------------------------------------------------------------------
# Safety: data objects are never introspected
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{#if (default trap 'x')}}kept{{/if}}", "kept"),
        ("{{#with (default trap 'x')}}[{{secret}}]{{/with}}", "[]"),
        ("{{default missing 'x'}}", "x"),
        ("{{upper (lookup trap 'secret')}}|{{date (lookup trap 'at')}}|", "||"),
        ("{{upper trap.__class__}}|{{lower trap.upper}}|{{date trap.year}}|", "|||"),
        ("{{lookup holder (lower 'T')}}|", "found|"),
    ],
)
def test_helpers_never_introspect_data_objects(source: str, expected: str) -> None:
    Trap.touched.clear()
    context = {"trap": Trap(), "holder": {"t": "found"}}
    assert render_template(source, context) == expected
    assert Trap.touched == []


@pytest.mark.parametrize(
    "source",
    ["{{upper trap}}", "{{lower trap}}", "{{date trap}}", "{{date trap '%Y'}}", "{{default trap 'x'}}"],
)
def test_helpers_refuse_opaque_objects_without_touching_them(source: str) -> None:
    Trap.touched.clear()
    with pytest.raises(TemplateRenderError, match="type Trap"):
        render_template(source, {"trap": Trap()})
    assert Trap.touched == []


def test_python_names_are_not_helpers() -> None:
    for name in ("str", "format", "getattr", "eval", "print", "len", "strftime", "capitalize", "title"):
        with pytest.raises(TemplateSyntaxError, match=f"unknown helper '{name}'"):
            compile_template("{{" + name + " x}}")


def test_a_compiled_template_with_helpers_renders_concurrently_and_repeatedly() -> None:
    template = compile_template("{{upper (default name 'friend')}} {{date at '%-d %b'}}")
    for day in range(1, 29):
        context = {"name": f"n{day}", "at": f"2026-02-{day:02d}"}
        assert template.render(context) == f"N{day} {day} Feb"
    assert template.render({}) == "FRIEND "
