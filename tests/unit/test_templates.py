"""Tests for kernel.templates, the safe Handlebars engine for tenant-written templates."""

from __future__ import annotations

import ast
import dataclasses
import math
import pickle
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, NoReturn

import pytest

from kernel import templates
from kernel.templates import (
    MAX_NESTING_DEPTH,
    MAX_SOURCE_BYTES,
    RenderLimits,
    Template,
    TemplateError,
    TemplateRenderError,
    TemplateSyntaxError,
    compile_template,
    render_template,
)

# --------------------------------------------------------------------------------------------
# Output compared with what Handlebars.js 4.x prints for the same template and data
# --------------------------------------------------------------------------------------------

AUTHOR = {"first": "Yehuda", "last": "Katz"}
PEOPLE = [{"name": "Ann"}, {"name": "Bob"}, {"name": "Cy"}]

HANDLEBARS_CASES: list[tuple[str, dict[str, object], str]] = [
    # Plain values and paths
    ("Hello, {{name}}!", {"name": "Ada"}, "Hello, Ada!"),
    ("{{greeting}} {{missing}}|", {"greeting": "Hi"}, "Hi |"),
    ("{{user.profile.name}}", {"user": {"profile": {"name": "Ada"}}}, "Ada"),
    ("{{user.missing.name}}", {"user": {}}, ""),
    ("{{ name }}", {"name": "spaces inside"}, "spaces inside"),
    ("{{./name}} {{this.name}} {{this/name}} {{a/b}}", {"name": "n", "a": {"b": "ab"}}, "n n n ab"),
    ("{{items.[0]}} {{items.[1].name}}", {"items": ["zero", {"name": "one"}]}, "zero one"),
    ("{{[first name]}} {{person.[last name]}}", {"first name": "Ada", "person": {"last name": "L"}}, "Ada L"),
    ('{{"key with spaces"}}', {"key with spaces": "literal name"}, "literal name"),
    # Escaping
    ("{{{html}}} {{html}}", {"html": "<b>Hi</b>"}, "<b>Hi</b> &lt;b&gt;Hi&lt;/b&gt;"),
    ("{{&html}} {{& html}}", {"html": "<i>"}, "<i> <i>"),
    ("{{s}}", {"s": "&<>\"'`="}, "&amp;&lt;&gt;&quot;&#x27;&#x60;&#x3D;"),
    ("\\{{name}} \\\\{{name}}", {"name": "x"}, "{{name}} \\x"),
    # Value rendering
    ("{{v}}", {"v": 1.0}, "1"),
    ("{{v}}", {"v": 1.5}, "1.5"),
    ("{{v}}", {"v": 0.1 + 0.2}, "0.30000000000000004"),
    ("{{v}}", {"v": 1e21}, "1e+21"),
    ("{{v}}", {"v": 1e-7}, "1e-7"),
    ("{{v}}", {"v": 0}, "0"),
    ("{{v}}", {"v": -3}, "-3"),
    ("{{v}}", {"v": True}, "true"),
    ("{{v}}", {"v": False}, "false"),
    ("{{v}}", {"v": None}, ""),
    ("{{v}}", {"v": ["a", "b"]}, "a,b"),
    ("{{v}}", {"v": [1, [2, None], "x"]}, "1,2,,x"),
    ("{{v}}", {"v": {"a": 1}}, "[object Object]"),
    ("{{v}}", {"v": [{"a": 1}, {}]}, "[object Object],[object Object]"),
    ("{{v}}", {"v": ["<a>"]}, "&lt;a&gt;"),
    # #if / #unless / else chains
    ("{{#if active}}on{{else}}off{{/if}}", {"active": True}, "on"),
    ("{{#if active}}on{{else}}off{{/if}}", {"active": False}, "off"),
    ("{{#unless active}}off{{else}}on{{/unless}}", {"active": False}, "off"),
    ("{{#unless active}}off{{else}}on{{/unless}}", {"active": 1}, "on"),
    ("{{#if count}}has{{else}}none{{/if}}", {"count": 0}, "none"),
    ("{{#if count includeZero=true}}has{{else}}none{{/if}}", {"count": 0}, "has"),
    ("{{#if list}}y{{else}}n{{/if}}", {"list": []}, "n"),
    ("{{#if obj}}y{{else}}n{{/if}}", {"obj": {}}, "y"),
    ('{{#if "0"}}yes{{/if}}', {}, "yes"),
    ("{{#if true}}t{{/if}}{{#if false}}f{{/if}}{{#if null}}n{{/if}}{{#if 1}}1{{/if}}", {}, "t1"),
    ("{{#if a}}A{{else if b}}B{{else}}C{{/if}}", {"a": 1}, "A"),
    ("{{#if a}}A{{else if b}}B{{else}}C{{/if}}", {"b": 1}, "B"),
    ("{{#if a}}A{{else if b}}B{{else}}C{{/if}}", {}, "C"),
    ("{{#if a}}A{{else unless b}}not b{{/if}}", {}, "not b"),
    ("{{#if x}}{{../y}}{{/if}}|", {"x": 1, "y": "Y"}, "|"),
    # #each over lists
    ("{{#each items}}{{this}},{{/each}}", {"items": ["a", "b", "c"]}, "a,b,c,"),
    ("{{#each items}}{{.}}{{/each}}", {"items": [1.0, 2.5]}, "12.5"),
    ("{{#each people}}{{@index}}:{{name}} {{/each}}", {"people": PEOPLE}, "0:Ann 1:Bob 2:Cy "),
    ("{{#each items}}{{@key}}{{/each}}", {"items": ["a", "b"]}, "01"),
    (
        "{{#each items}}{{#if @first}}[{{/if}}{{this}}{{#if @last}}]{{else}},{{/if}}{{/each}}",
        {"items": ["a", "b", "c"]},
        "[a,b,c]",
    ),
    (
        "{{#each people}}{{name}}{{#unless @last}}, {{/unless}}{{/each}}",
        {"people": PEOPLE},
        "Ann, Bob, Cy",
    ),
    ("{{#each items}}x{{else}}none{{/each}}", {"items": []}, "none"),
    ("{{#each missing}}x{{else}}none{{/each}}", {}, "none"),
    ("{{#each items}}x{{else if fallback}}F{{else}}N{{/each}}", {"items": [], "fallback": 1}, "F"),
    (
        "{{#each people as |person i|}}{{i}}={{person.name}} {{/each}}",
        {"people": PEOPLE},
        "0=Ann 1=Bob 2=Cy ",
    ),
    # #each over objects: array-index keys first, ascending, like Object.keys
    ("{{#each scores}}{{@key}}={{this}};{{/each}}", {"scores": {"ann": 3, "bob": 5}}, "ann=3;bob=5;"),
    ("{{#each this}}{{@key}} {{/each}}", {"b": 1, "a": 2, "10": 3, "2": 4}, "2 10 b a "),
    (
        "{{#each scores as |score who|}}{{who}}:{{score}}{{#unless @last}},{{/unless}}{{/each}}",
        {"scores": {"ann": 3, "bob": 5}},
        "ann:3,bob:5",
    ),
    (
        "{{#each scores}}{{#if @first}}<{{/if}}{{@index}}{{#if @last}}>{{/if}}{{/each}}",
        {"scores": {"a": 1, "b": 2}},
        "<01>",
    ),
    ("{{#each obj}}x{{else}}empty{{/each}}", {"obj": {}}, "empty"),
    # Parent contexts and @root
    (
        "{{#each groups}}{{#each members}}{{../name}}:{{this}} {{/each}}{{/each}}",
        {"groups": [{"name": "g1", "members": ["a", "b"]}, {"name": "g2", "members": ["c"]}]},
        "g1:a g1:b g2:c ",
    ),
    (
        "{{#each outer}}{{#each inner}}{{@../index}}.{{@index}} {{/each}}{{/each}}",
        {"outer": [{"inner": [1, 2]}, {"inner": [3]}]},
        "0.0 0.1 1.0 ",
    ),
    (
        "{{#each items}}{{@root.currency}}{{price}} {{/each}}",
        {"currency": "$", "items": [{"price": 1}, {"price": 2}]},
        "$1 $2 ",
    ),
    (
        "{{#with a}}{{#with b}}{{../../top}}{{../x}}{{c}}{{/with}}{{/with}}",
        {"top": "T", "a": {"x": "X", "b": {"c": "C"}}},
        "TXC",
    ),
    ("{{#each items}}{{../prefix}}{{this}} {{/each}}", {"prefix": "#", "items": ["a", "b"]}, "#a #b "),
    # #with
    ("{{#with author}}{{first}} {{last}}{{/with}}", {"author": AUTHOR}, "Yehuda Katz"),
    ("{{#with author}}{{first}}{{else}}anonymous{{/with}}", {}, "anonymous"),
    ("{{#with author as |a|}}{{a.first}} {{last}}{{/with}}", {"author": AUTHOR}, "Yehuda Katz"),
    ("{{#with 0}}zero:{{this}}{{else}}empty{{/with}}", {}, "zero:0"),
    ("{{#with list}}y{{else}}empty{{/with}}", {"list": []}, "empty"),
    # lookup
    ("{{lookup scores who}}", {"scores": {"ann": 3}, "who": "ann"}, "3"),
    (
        "{{#each ids}}{{lookup ../names this}} {{/each}}",
        {"ids": ["a", "b"], "names": {"a": "Ann", "b": "Bob"}},
        "Ann Bob ",
    ),
    ("{{#each items}}{{lookup ../labels @index}}{{/each}}", {"items": [1, 2], "labels": ["x", "y"]}, "xy"),
    ("{{lookup items 1}}", {"items": ["a", "b"]}, "b"),
    ("{{lookup missing 'x'}}|", {}, "|"),
    ("{{#each (lookup groups kind)}}{{this}}{{/each}}", {"groups": {"vip": ["a", "b"]}, "kind": "vip"}, "ab"),
    ("{{#with (lookup people 1)}}{{name}}{{/with}}", {"people": PEOPLE}, "Bob"),
    # Comments
    ("a{{! short }}b{{!-- long with }} inside --}}c", {}, "abc"),
    # Standalone lines: block, else and comment tags alone on a line leave no blank line
    (
        "<ul>\n  {{#each items}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>\n",
        {"items": ["a", "b"]},
        "<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>\n",
    ),
    ("{{#if show}}\nshown\n{{else}}\nhidden\n{{/if}}\n", {"show": False}, "hidden\n"),
    ("{{#if show}}\nshown\n{{else}}\nhidden\n{{/if}}\n", {"show": True}, "shown\n"),
    ("Hello\n{{! a comment }}\nWorld", {}, "Hello\nWorld"),
    ("Hello\n  {{!-- a }} comment --}}  \nWorld\n", {}, "Hello\nWorld\n"),
    ("a {{#if x}}b{{/if}} c\n", {"x": True}, "a b c\n"),
    ("{{#if a}}\r\nyes\r\n{{/if}}\r\n", {"a": True}, "yes\r\n"),
    (
        "{{#each groups}}\n  <h2>{{name}}</h2>\n  {{#each members}}\n"
        "    <p>{{this}}</p>\n  {{/each}}\n{{/each}}\n",
        {"groups": [{"name": "G", "members": ["a", "b"]}]},
        "  <h2>G</h2>\n    <p>a</p>\n    <p>b</p>\n",
    ),
    # Whitespace control with ~
    ("{{#each nums~}}\n  {{this}}\n{{~/each}}", {"nums": [1, 2, 3]}, "123"),
    ("a  {{~x~}}  b", {"x": "-"}, "a-b"),
    ("a \n {{~{x}~}} \n b", {"x": "<>"}, "a<>b"),
    ("a {{~& x ~}} b", {"x": "<>"}, "a<>b"),
    ("{{#if a~}}  yes  {{~else~}}  no  {{~/if}}", {"a": True}, "yes"),
    ("{{#if a~}}  yes  {{~else~}}  no  {{~/if}}", {"a": False}, "no"),
    ("x {{~! drop ~}} y {{~!-- drop --~}} z", {}, "xyz"),
    ("{{# if a }}A{{ else }}B{{/ if }}", {"a": False}, "B"),
]


@pytest.mark.parametrize(("source", "context", "expected"), HANDLEBARS_CASES)
def test_renders_like_handlebars_js(source: str, context: dict[str, object], expected: str) -> None:
    assert render_template(source, context) == expected


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def test_numeric_segments_index_into_lists() -> None:
    context = {"items": [{"name": "first"}, {"name": "second"}]}
    assert render_template("{{items.0.name}} {{items.1.name}} {{items.2.name}}|", context) == "first second |"
    assert render_template("{{items.1}}", {"items": ["a", "b"]}) == "b"


def test_non_canonical_indexes_do_not_index_lists() -> None:
    context = {"items": ["a", "b"]}
    assert render_template("{{items.01}}|{{items.[-1]}}|{{lookup items -1}}", context) == "||"


def test_numeric_segment_on_a_mapping_is_a_key() -> None:
    assert render_template("{{codes.404}}", {"codes": {"404": "Not Found"}}) == "Not Found"


def test_this_and_dot_render_the_current_context() -> None:
    assert render_template("{{#each xs}}[{{this}}|{{.}}]{{/each}}", {"xs": ["a", 2]}) == "[a|a][2|2]"
    assert render_template("{{this}}", {"a": 1}) == "[object Object]"


def test_dot_dot_alone_is_the_parent_context() -> None:
    assert render_template("{{#each xs}}{{..}}{{/each}}", {"xs": [1]}) == "[object Object]"


def test_parent_beyond_root_is_missing() -> None:
    assert render_template("{{../x}}|{{../../x}}|", {"x": "root"}) == "||"


def test_bracketed_segments_allow_any_key() -> None:
    context = {"a-b": 1, "odd": {"x.y": 2, "]": 3}, "this": "literal this", "if": "keyword"}
    source = "{{a-b}} {{odd.[x.y]}} {{odd.[\\]]}} {{[this]}} {{[if]}}"
    assert render_template(source, context) == "1 2 3 literal this keyword"


def test_literals_in_name_position_look_up_keys() -> None:
    assert (
        render_template("{{1}} {{true}} {{'q'}}", {"1": "one", "true": "yes", "q": "quoted"})
        == "one yes quoted"
    )


def test_root_data_variable() -> None:
    context = {"brand": "Herald", "items": [{"brand": "inner"}]}
    assert render_template("{{#each items}}{{brand}}/{{@root.brand}}{{/each}}", context) == "inner/Herald"
    assert render_template("{{@root.brand}}", context) == "Herald"


def test_data_variables_outside_each_are_missing() -> None:
    assert render_template("[{{@index}}{{@key}}{{@first}}{{@last}}]", {}) == "[]"


def test_data_variables_survive_with_and_if_inside_each() -> None:
    source = "{{#each xs}}{{#with this}}{{#if @last}}{{@index}}{{/if}}{{/with}}{{/each}}"
    assert render_template(source, {"xs": [{"a": 1}, {"a": 2}]}) == "1"


def test_data_parent_reaches_outer_each_key() -> None:
    source = "{{#each rows}}{{#each this}}{{@../key}}{{@key}} {{/each}}{{/each}}"
    assert render_template(source, {"rows": {"r1": {"c1": 1, "c2": 2}}}) == "r1c1 r1c2 "


# --------------------------------------------------------------------------------------------
# Block parameters
# --------------------------------------------------------------------------------------------


def test_nested_block_params_see_outer_params() -> None:
    source = "{{#each rows as |row r|}}{{#each row as |cell c|}}{{r}}{{c}}={{cell}} {{/each}}{{/each}}"
    assert render_template(source, {"rows": [["a", "b"], ["c"]]}) == "00=a 01=b 10=c "


def test_block_params_of_with_do_not_hide_context() -> None:
    source = "{{#with user as |u|}}{{u.name}}/{{name}}/{{../site}}{{/with}}"
    assert render_template(source, {"user": {"name": "Ann"}, "site": "S"}) == "Ann/Ann/S"


def test_block_params_are_not_visible_in_else() -> None:
    source = "{{#each xs as |x|}}{{x}}{{else}}{{x}}{{/each}}"
    assert render_template(source, {"xs": [], "x": "from context"}) == "from context"


def test_scoped_paths_bypass_block_params() -> None:
    source = "{{#each xs as |name|}}{{name}}/{{this.name}}/{{./name}} {{/each}}"
    assert render_template(source, {"xs": [{"name": "inner"}]}) == "[object Object]/inner/inner "


def test_block_params_shadow_helper_names() -> None:
    assert render_template("{{#each xs as |lookup|}}{{lookup}}{{/each}}", {"xs": ["a", "b"]}) == "ab"


def test_inner_block_param_shadows_outer() -> None:
    source = "{{#each a as |x|}}{{#each @root.b as |x|}}{{x}}{{/each}}{{x}}{{/each}}"
    assert render_template(source, {"a": ["A"], "b": ["b1", "b2"]}) == "b1b2A"


def test_else_chain_with_its_own_block_params() -> None:
    source = "{{#each a as |x|}}{{x}}{{else each b as |y i|}}{{i}}{{y}}{{else}}none{{/each}}"
    assert render_template(source, {"a": [], "b": ["p", "q"]}) == "0p1q"
    assert render_template(source, {"a": [], "b": []}) == "none"


# --------------------------------------------------------------------------------------------
# Helpers and truthiness
# --------------------------------------------------------------------------------------------

FALSY_VALUES: list[object] = [None, False, "", 0, 0.0, -0.0, math.nan, []]
TRUTHY_VALUES: list[object] = ["0", "false", " ", 1, -1, 0.5, [0], [None], {}, {"a": 1}, True, math.inf]


@pytest.mark.parametrize("value", FALSY_VALUES, ids=repr)
def test_if_treats_value_as_falsy(value: object) -> None:
    assert render_template("{{#if v}}T{{else}}F{{/if}}", {"v": value}) == "F"
    assert render_template("{{#unless v}}U{{else}}E{{/unless}}", {"v": value}) == "U"


@pytest.mark.parametrize("value", TRUTHY_VALUES, ids=repr)
def test_if_treats_value_as_truthy(value: object) -> None:
    assert render_template("{{#if v}}T{{else}}F{{/if}}", {"v": value}) == "T"
    assert render_template("{{#unless v}}U{{else}}E{{/unless}}", {"v": value}) == "E"


def test_missing_value_is_falsy() -> None:
    assert render_template("{{#if nope}}T{{else}}F{{/if}}", {}) == "F"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "T"), (0.0, "T"), (None, "F"), (False, "F"), ("", "F"), ([], "F"), (math.nan, "F")],
)
def test_include_zero_only_rescues_zero(value: object, expected: str) -> None:
    assert render_template("{{#if v includeZero=true}}T{{else}}F{{/if}}", {"v": value}) == expected


def test_include_zero_on_unless_and_from_data() -> None:
    assert render_template("{{#unless v includeZero=true}}U{{else}}E{{/unless}}", {"v": 0}) == "E"
    assert render_template("{{#if v includeZero=flag}}T{{else}}F{{/if}}", {"v": 0, "flag": True}) == "T"
    assert render_template("{{#if v includeZero=flag}}T{{else}}F{{/if}}", {"v": 0, "flag": False}) == "F"
    assert render_template("{{#if v includeZero=false}}T{{else}}F{{/if}}", {"v": 0}) == "F"


def test_long_else_if_chain_picks_first_match() -> None:
    branches = "".join(f"{{{{else if c{i}}}}}{i}" for i in range(1, 200))
    source = "{{#if c0}}0" + branches + "{{else}}none{{/if}}"
    assert render_template(source, {"c150": True, "c170": True}) == "150"
    assert render_template(source, {}) == "none"


def test_each_over_mapping_proxy_and_tuple() -> None:
    assert render_template("{{#each m}}{{@key}}{{this}}{{/each}}", {"m": MappingProxyType({"a": 1})}) == "a1"
    assert render_template("{{#each t}}{{this}}{{/each}}|{{t.1}}", {"t": ("x", "y")}) == "xy|y"


@pytest.mark.parametrize("value", ["abc", 5, True, 1.5])
def test_each_over_scalars_renders_else(value: object) -> None:
    assert (
        render_template("{{#each v}}item{{else}}not a collection{{/each}}", {"v": value})
        == "not a collection"
    )


def test_each_literal_arguments() -> None:
    assert render_template('{{#each "abc"}}x{{else}}no{{/each}}', {}) == "no"
    assert render_template("{{#with 'text'}}{{this}}{{/with}}", {}) == "text"


def test_with_changes_context_and_else_keeps_it() -> None:
    source = "{{#with person}}{{name}}{{else}}{{fallback}}{{/with}}"
    assert render_template(source, {"person": {"name": "Ann"}}) == "Ann"
    assert render_template(source, {"person": None, "fallback": "nobody"}) == "nobody"


def test_lookup_keys_are_converted_like_javascript() -> None:
    context = {"m": {"1": "one", "true": "yes", "1.5": "one and a half"}, "xs": ["a", "b"]}
    source = "{{lookup m 1}} {{lookup m true}} {{lookup m 1.5}} {{lookup xs '1'}} {{lookup xs 1.0}}"
    assert render_template(source, context) == "one yes one and a half b b"


def test_lookup_with_unusable_keys_is_missing() -> None:
    context = {"m": {"None": "x", "null": "y"}, "k": None, "l": ["a"]}
    assert render_template("[{{lookup m k}}{{lookup m l}}{{lookup m null}}]", context) == "[]"


def test_lookup_output_is_escaped_unless_triple() -> None:
    context = {"m": {"k": "<b>"}}
    assert render_template("{{lookup m 'k'}} {{{lookup m 'k'}}}", context) == "&lt;b&gt; <b>"


def test_nested_lookup_subexpressions() -> None:
    context = {"users": {"u1": {"team": "t1"}}, "teams": {"t1": {"name": "Core"}}, "id": "u1"}
    assert (
        render_template("{{lookup (lookup teams (lookup (lookup users id) 'team')) 'name'}}", context)
        == "Core"
    )


# --------------------------------------------------------------------------------------------
# Value rendering
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (100.0, "100"),
        (-2.5, "-2.5"),
        (-0.0, "0"),
        (0.000001, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (123e-20, "1.23e-18"),
        (1e20, "100000000000000000000"),
        (1.2345678901234568e20, "123456789012345680000"),
        (1.5e300, "1.5e+300"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (2**70, "1180591620717411303424"),
    ],
)
def test_numbers_render_like_javascript(value: float, expected: str) -> None:
    assert render_template("{{v}}", {"v": value}) == expected


def test_lists_render_recursively_like_array_to_string() -> None:
    assert (
        render_template("{{v}}", {"v": [[1, 2], [3, [4.0, None]], True, {"k": 1}]})
        == "1,2,3,4,,true,[object Object]"
    )
    assert render_template("{{v}}|", {"v": []}) == "|"


def test_html_escaping_covers_every_handlebars_character() -> None:
    text = "Tom & \"Jerry\" <script>alert('x')</script> `a=b`"
    expected = (
        "Tom &amp; &quot;Jerry&quot; &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &#x60;a&#x3D;b&#x60;"
    )
    assert render_template("{{t}}", {"t": text}) == expected
    assert render_template("{{{t}}}", {"t": text}) == text
    assert render_template("{{&t}}", {"t": text}) == text


def test_template_text_itself_is_not_escaped() -> None:
    assert render_template('<p class="x">&amp; {{v}}</p>', {"v": "<"}) == '<p class="x">&amp; &lt;</p>'


def test_non_json_values_cannot_be_rendered() -> None:
    class Custom:
        def __str__(self) -> str:
            raise AssertionError("str() must not be called")

    with pytest.raises(TemplateRenderError, match="cannot render a value of type Custom"):
        render_template("{{v}}", {"v": Custom()})
    with pytest.raises(TemplateRenderError, match="type set"):
        render_template("{{v}}", {"v": [1, {2}]})


def test_subclasses_of_json_types_render_as_their_base_type() -> None:
    class Name(str):
        def __str__(self) -> str:
            raise AssertionError("str() must not be called")

    class Count(int):
        def __repr__(self) -> str:
            raise AssertionError("repr() must not be called")

    assert render_template("{{n}} {{c}}", {"n": Name("Ann"), "c": Count(3)}) == "Ann 3"


# --------------------------------------------------------------------------------------------
# Safety: no Python attribute is ever reached
# --------------------------------------------------------------------------------------------


class Trap:
    """Records and refuses every way Python code could be reached through this object."""

    touched: ClassVar[list[str]] = []

    def __getattribute__(self, name: str) -> NoReturn:
        Trap.touched.append(name)
        raise AssertionError(f"template engine read attribute {name!r}")

    @property
    def secret(self) -> NoReturn:
        Trap.touched.append("secret property")
        raise AssertionError("property called")

    def _refuse(self, name: str) -> NoReturn:
        Trap.touched.append(name)
        raise AssertionError(f"template engine called {name}")

    def __str__(self) -> str:
        Trap.touched.append("__str__")
        raise AssertionError("str() called")

    def __repr__(self) -> str:
        Trap.touched.append("__repr__")
        raise AssertionError("repr() called")

    def __bool__(self) -> bool:
        Trap.touched.append("__bool__")
        raise AssertionError("bool() called")

    def __len__(self) -> int:
        Trap.touched.append("__len__")
        raise AssertionError("len() called")

    def __iter__(self) -> Iterator[object]:
        Trap.touched.append("__iter__")
        raise AssertionError("iter() called")

    def __getitem__(self, key: object) -> NoReturn:
        Trap.touched.append("__getitem__")
        raise AssertionError("indexing called")

    def __eq__(self, other: object) -> bool:
        Trap.touched.append("__eq__")
        raise AssertionError("== called")

    def __hash__(self) -> int:
        Trap.touched.append("__hash__")
        raise AssertionError("hash() called")

    def __format__(self, spec: str) -> str:
        Trap.touched.append("__format__")
        raise AssertionError("format() called")

    def __int__(self) -> int:
        Trap.touched.append("__int__")
        raise AssertionError("int() called")

    def __float__(self) -> float:
        Trap.touched.append("__float__")
        raise AssertionError("float() called")


TRAP_TEMPLATES = [
    ("{{trap.secret}}|", "|"),
    ("{{trap.__class__}}|{{trap.__dict__}}|{{trap.__init__.__globals__}}|", "|||"),
    ("{{lookup trap 'secret'}}|{{lookup trap 0}}|", "||"),
    ("{{#if trap}}truthy{{else}}falsy{{/if}}", "truthy"),
    ("{{#unless trap}}falsy{{else}}truthy{{/unless}}", "truthy"),
    ("{{#each trap}}item{{else}}not iterable{{/each}}", "not iterable"),
    ("{{#with trap}}[{{secret}}{{this.secret}}{{__class__}}]{{/with}}", "[]"),
    ("{{#with trap as |t|}}[{{t.secret}}]{{/with}}", "[]"),
    ("{{#each list}}[{{secret}}]{{/each}}", "[]"),
    ("{{#if trap.secret}}yes{{else}}no{{/if}}", "no"),
    ("{{#each holder}}{{@key}}:{{#with this}}{{secret}}{{/with}};{{/each}}", "t:;"),
]


@pytest.mark.parametrize(("source", "expected"), TRAP_TEMPLATES)
def test_objects_in_data_are_never_introspected(source: str, expected: str) -> None:
    Trap.touched.clear()
    trap = Trap()
    context = {"trap": trap, "list": [trap], "holder": {"t": trap}}
    assert render_template(source, context) == expected
    assert Trap.touched == []


def test_rendering_an_opaque_object_fails_without_touching_it() -> None:
    Trap.touched.clear()
    with pytest.raises(TemplateRenderError, match="type Trap"):
        render_template("{{trap}}", {"trap": Trap()})
    with pytest.raises(TemplateRenderError, match="type Trap"):
        render_template("{{{list}}}", {"list": ["ok", Trap()]})
    assert Trap.touched == []


class RaisingProperties(dict[str, object]):
    """A real dict whose Python attributes must stay out of reach."""

    @property
    def secret(self) -> NoReturn:
        raise AssertionError("property called")

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"attribute {name!r} read")


def test_dict_subclass_exposes_only_its_keys() -> None:
    data = RaisingProperties(name="Ann")
    source = (
        "{{d.name}}|{{d.secret}}|{{d.keys}}|{{d.items}}|{{d.get}}|{{d.__class__.__name__}}|{{d.__dict__}}"
    )
    assert render_template(source, {"d": data}) == "Ann||||||"


@pytest.mark.parametrize(
    "source",
    [
        "{{__class__}}",
        "{{__class__.__name__}}",
        "{{constructor}}",
        "{{constructor.name}}",
        "{{this.__dict__}}",
        "{{__proto__}}",
        "{{name.__class__}}",
        "{{name.upper}}",
        "{{name.length}}",
        "{{name.[0]}}",
        "{{items.__len__}}",
        "{{items.pop}}",
        "{{items.length}}",
        "{{@root.__class__}}",
        "{{lookup this '__class__'}}",
        "{{lookup name '__class__'}}",
        "{{lookup (lookup this '__init__') '__globals__'}}",
        "{{#with __builtins__}}reached{{/with}}",
        "{{#each __globals__}}reached{{/each}}",
        "{{#if __class__}}reached{{/if}}",
    ],
)
def test_python_attribute_paths_render_empty(source: str) -> None:
    assert render_template(source, {"name": "Ann", "items": [1, 2]}) == ""


def test_dunder_keys_that_are_really_in_the_data_are_just_data() -> None:
    assert render_template("{{__class__}}", {"__class__": "plain data"}) == "plain data"


def test_engine_source_never_evaluates_code_or_uses_getattr() -> None:
    tree = ast.parse(Path(templates.__file__).read_text(encoding="utf-8"))
    forbidden = {"eval", "exec", "compile", "getattr", "setattr", "__import__", "vars", "globals"}
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert called & forbidden == set()
    assert not any("pybars" in name or "jinja" in name for name in imported)


# --------------------------------------------------------------------------------------------
# Syntax errors: message, line and column
# --------------------------------------------------------------------------------------------

SYNTAX_ERRORS: list[tuple[str, str, int, int]] = [
    # Unterminated tags and comments
    ("Hi {{name", "unterminated tag: add '}}'", 1, 4),
    ("Hi {{name\nand more text", "unterminated tag", 1, 4),
    ("{{name Hello {{other}}", "unterminated tag", 1, 1),
    ("{{{name}}", "'{{{' must be closed with '}}}'", 1, 8),
    ("{{{name", "unterminated tag: add '}}}'", 1, 1),
    ("a\n{{! unfinished", "unterminated comment: add '}}'", 2, 1),
    ("{{!-- has }} but never closes", "unterminated comment: add '--}}'", 1, 1),
    ('{{lookup a "b}}', "unterminated string", 1, 12),
    ("{{a.[b}}", "unterminated '[' in path", 1, 5),
    # Block structure
    ("line 1\n{{#each items}}\n  x\n", "unclosed {{#each}} block opened here; close it with {{/each}}", 2, 1),
    (
        "{{#if a}}\n  {{#with b}}\n{{/if}}",
        "{{/if}} does not match {{#with}} opened at line 2, column 3",
        3,
        1,
    ),
    (
        "{{#if a}}\n{{/each}}",
        "{{/each}} does not match {{#if}} opened at line 1, column 1; close it with {{/if}}",
        2,
        1,
    ),
    ("{{#if a}}{{else}}\n", "unclosed {{#if}} block", 1, 1),
    ("text {{/if}}", "{{/if}} has no matching {{#if}}", 1, 6),
    ("a\n  {{else}}", "{{else}} outside of a block", 2, 3),
    ("{{#if a}}x{{else}}y{{else}}z{{/if}}", "a {{#if}} block can have only one {{else}}", 1, 20),
    ("{{#if a}}x{{else}}y{{else if b}}z{{/if}}", "must come before the plain {{else}}", 1, 20),
    ("{{#if a}}{{/if b}}", "{{/if}} takes no arguments", 1, 10),
    ('{{#if a}}{{/"if"}}', "does not match {{#if}}", 1, 10),
    # Helpers
    ("{{shout name}}", "unknown helper 'shout'", 1, 3),
    ("{{a.b c}}", "unknown helper 'a.b'", 1, 3),
    ("{{shout x=1}}", "unknown helper 'shout'", 1, 3),
    ("{{#shout}}x{{/shout}}", "unknown block helper 'shout'; use #if, #unless, #each or #with", 1, 4),
    ("{{#each xs}}{{else shout y}}{{/each}}", "unknown block helper 'shout'", 1, 20),
    ("{{#lookup a b}}{{/lookup}}", "'lookup' is not a block helper", 1, 4),
    ("{{if a}}", "'if' is a block helper; write {{#if ...}}...{{/if}}", 1, 3),
    ("{{each}}", "'each' is a block helper", 1, 3),
    ("{{{with x}}}", "'with' is a block helper", 1, 4),
    ("{{lookup a}}", "lookup takes exactly two arguments", 1, 3),
    ("{{lookup a b c}}", "lookup takes exactly two arguments", 1, 3),
    ("{{lookup}}", "lookup takes exactly two arguments", 1, 3),
    ("{{lookup (shout a) b}}", "unknown helper 'shout' in sub-expression", 1, 11),
    ("{{lookup (lookup a b c}}", "unclosed '('", 1, 23),
    ("{{#if}}{{/if}}", "{{#if}} takes exactly one argument, got 0", 1, 4),
    ("{{#if a b}}{{/if}}", "{{#if}} takes exactly one argument, got 2", 1, 4),
    ("{{#each}}{{/each}}", "{{#each}} takes exactly one argument, got 0", 1, 4),
    ("{{#if a}}{{else if}}{{/if}}", "{{else if}} takes exactly one argument, got 0", 1, 17),
    ("{{#if a foo=1}}{{/if}}", "{{#if}} accepts only the option includeZero=true", 1, 9),
    (
        "{{#if a includeZero=true includeZero=true}}{{/if}}",
        "accepts only the option includeZero=true, once",
        1,
        26,
    ),
    ("{{#each a includeZero=true}}{{/each}}", "{{#each}} does not accept key=value options", 1, 11),
    ("{{#if a includeZero=}}{{/if}}", "expected a value after 'includeZero='", 1, 9),
    ("{{lookup a x=1 b}}", "arguments must come before key=value options", 1, 16),
    ("{{#if a as |x|}}{{/if}}", "{{#if}} does not take block parameters", 1, 4),
    ("{{#each a as |x y z|}}{{/each}}", "{{#each}} takes at most 2 block parameters", 1, 4),
    ("{{#with a as |x y|}}{{/with}}", "{{#with}} takes at most 1 block parameter", 1, 4),
    ("{{#each a as ||}}{{/each}}", "needs at least one name", 1, 11),
    ("{{#each a as |x| b}}{{/each}}", "'as |...|' must come last", 1, 18),
    ("{{name as |x|}}", "'as |...|' is only allowed on {{#each ...}} and {{#with ...}}", 1, 3),
    # Paths
    ("{{a..b}}", "expected a name after 'a.'", 1, 5),
    ("{{a.}}", "expected a name after 'a.'", 1, 5),
    ("{{a/this}}", "invalid path 'a/this': 'this' may only appear at the start", 1, 3),
    ("{{a.../b}}", "invalid path", 1, 3),
    ("{{@}}", "expected a data variable name after '@'", 1, 4),
    ("{{@foo}}", "unknown data variable '@foo'; use @root, @index, @key, @first or @last", 1, 3),
    ("{{items[0]}}", "unexpected '[' after 'items'; write 'items.[...]'", 1, 8),
    ("{{a %}}", "unexpected character '%'", 1, 5),
    ("{{a}b}}", "unexpected character '}'", 1, 4),
    ("{{(lookup a b)}}", "a sub-expression '( ... )' cannot be used as a name", 1, 3),
    ('{{lookup a "b"c}}', "unexpected character 'c'", 1, 15),
    # Empty and unsupported tags
    ("{{}}", "empty tag", 1, 1),
    ("x {{ }}", "empty tag", 1, 3),
    ("{{{}}}", "empty tag", 1, 1),
    ("{{#}}", "expected a block helper name after '{{#'", 1, 1),
    ("{{/}}", "expected a block name after '{{/'", 1, 1),
    ("{{> partial}}", "partials '{{> ...}}' are not supported", 1, 1),
    ("{{#> layout}}{{/layout}}", "partial blocks", 1, 1),
    ("{{^items}}none{{/items}}", "inverted sections", 1, 1),
    ("{{* decorator}}", "decorators", 1, 1),
    ("{{{{raw}}}}x{{{{/raw}}}}", "raw blocks", 1, 1),
    # Errors deep in the source are located precisely
    ("Dear {{name}},\n\nYour order:\n  {{#each order.items}}\n    {{title}}\n", "unclosed {{#each}}", 4, 3),
    (
        "a\nb\n   {{#if x}}{{else}}{{/iff}}",
        "{{/iff}} does not match {{#if}} opened at line 3, column 4",
        3,
        21,
    ),
]


@pytest.mark.parametrize(("source", "message", "line", "column"), SYNTAX_ERRORS)
def test_syntax_errors_say_what_and_where(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template(source)
    error = caught.value
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    assert str(error) == f"line {line}, column {column}: {error.message}"


def test_syntax_errors_are_found_in_branches_that_would_never_render() -> None:
    with pytest.raises(TemplateSyntaxError, match="unknown helper 'shout'"):
        compile_template("{{#if false}}{{shout x}}{{/if}}")


def test_a_bare_unknown_name_is_a_path_not_an_error() -> None:
    assert render_template("{{shout}}|{{log}}|{{helperMissing}}", {"shout": "HEY"}) == "HEY||"


def test_syntax_error_is_a_template_error_and_pickles() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template("{{#if a}}")
    error = caught.value
    assert isinstance(error, TemplateSyntaxError)
    restored = pickle.loads(pickle.dumps(error))
    assert isinstance(restored, TemplateSyntaxError)
    assert (restored.message, restored.line, restored.column) == (error.message, 1, 1)
    assert str(restored) == str(error)


def test_render_error_is_a_template_error() -> None:
    assert issubclass(TemplateRenderError, TemplateError)
    assert not issubclass(TemplateRenderError, TemplateSyntaxError)


# --------------------------------------------------------------------------------------------
# Compile-time limits
# --------------------------------------------------------------------------------------------


def nested_ifs(depth: int) -> str:
    return "{{#if a}}" * depth + "x" + "{{/if}}" * depth


def test_nesting_up_to_the_limit_compiles_and_renders() -> None:
    assert render_template(nested_ifs(MAX_NESTING_DEPTH), {"a": True}) == "x"


def test_nesting_deeper_than_the_limit_is_rejected_where_it_happens() -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template(nested_ifs(MAX_NESTING_DEPTH + 1))
    assert "nested more than 32 levels deep" in caught.value.message
    assert (caught.value.line, caught.value.column) == (1, MAX_NESTING_DEPTH * len("{{#if a}}") + 1)


def test_else_if_chains_do_not_count_as_nesting() -> None:
    source = "{{#if a}}" + "{{else if a}}" * 100 + "{{/if}}"
    assert compile_template(source).render({}) == ""


def nested_lookups(depth: int) -> str:
    expression = "obj"
    for _ in range(depth):
        expression = f"(lookup {expression} 'k')"
    return "{{lookup " + expression + " 'k'}}"


def test_subexpression_nesting_is_limited() -> None:
    data: dict[str, object] = {"k": "end"}
    for _ in range(MAX_NESTING_DEPTH):
        data = {"k": data}
    assert render_template(nested_lookups(MAX_NESTING_DEPTH), {"obj": data}) == "end"
    with pytest.raises(TemplateSyntaxError, match="sub-expressions are nested more than 32 levels deep"):
        compile_template(nested_lookups(MAX_NESTING_DEPTH + 1))


def test_source_size_limit() -> None:
    assert compile_template("x" * MAX_SOURCE_BYTES).source == "x" * MAX_SOURCE_BYTES
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template("x" * (MAX_SOURCE_BYTES + 1))
    assert "the maximum is 65536 bytes (64 KiB)" in caught.value.message
    assert (caught.value.line, caught.value.column) == (1, 1)


def test_source_size_limit_counts_utf8_bytes() -> None:
    with pytest.raises(TemplateSyntaxError, match="template is 80000 bytes"):
        compile_template("é" * 40_000)


# --------------------------------------------------------------------------------------------
# Render-time limits
# --------------------------------------------------------------------------------------------


def test_render_limits_defaults_and_immutability() -> None:
    limits = RenderLimits()
    assert (limits.max_output_chars, limits.max_steps) == (262_144, 100_000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_steps = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="must not be negative"):
        RenderLimits(max_steps=-1)


def test_each_over_huge_data_exceeds_step_budget() -> None:
    with pytest.raises(TemplateRenderError, match="more than 100000 steps"):
        render_template("{{#each items}}{{/each}}", {"items": list(range(200_000))})


def test_nested_eaches_exceed_step_budget_even_when_each_list_is_small() -> None:
    items = list(range(400))
    source = "{{#each items}}{{#each @root.items}}{{/each}}{{/each}}"
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template(source, {"items": items})


def test_step_budget_is_configurable() -> None:
    template = compile_template("{{#each items}}{{this}}{{/each}}")
    context = {"items": ["a", "b", "c"]}
    assert template.render(context, RenderLimits(max_steps=7)) == "abc"
    with pytest.raises(TemplateRenderError):
        template.render(context, RenderLimits(max_steps=6))


def test_rendering_a_huge_list_counts_steps() -> None:
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template("{{items}}", {"items": [1] * 200_000})


def test_big_output_exceeds_output_limit() -> None:
    context = {"items": ["x" * 1000] * 300}
    with pytest.raises(TemplateRenderError, match="longer than the limit of 262144 characters"):
        render_template("{{#each items}}{{this}}{{/each}}", context)


def test_single_huge_value_exceeds_output_limit() -> None:
    for source, size in (("{{v}}", 300_000), ("{{{v}}}", 300_000), ("{{v}}{{v}}", 150_000)):
        with pytest.raises(TemplateRenderError, match="longer than the limit"):
            render_template(source, {"v": "y" * size})


def test_escaping_counts_towards_output_limit() -> None:
    limits = RenderLimits(max_output_chars=100)
    assert render_template("{{v}}", {"v": "&" * 20}, limits) == "&amp;" * 20
    with pytest.raises(TemplateRenderError):
        render_template("{{v}}", {"v": "&" * 21}, limits)


def test_output_exactly_at_the_limit_is_allowed() -> None:
    limits = RenderLimits(max_output_chars=5)
    assert render_template("hel{{v}}", {"v": "lo"}, limits) == "hello"
    with pytest.raises(TemplateRenderError):
        render_template("hel{{v}}!", {"v": "lo"}, limits)


def test_deeply_nested_or_cyclic_lists_fail_cleanly() -> None:
    deep: list[object] = ["end"]
    for _ in range(100):
        deep = [deep]
    with pytest.raises(TemplateRenderError, match="nested more than"):
        render_template("{{v}}", {"v": deep})
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(TemplateRenderError):
        render_template("{{v}}", {"v": cyclic})


def test_each_over_cyclic_data_is_bounded() -> None:
    node: dict[str, object] = {"name": "n"}
    node["children"] = [node, node]
    template = "{{#each children}}" * 20 + "{{name}}" + "{{/each}}" * 20
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template(template, node)


# --------------------------------------------------------------------------------------------
# API, immutability and concurrency
# --------------------------------------------------------------------------------------------


def test_compiled_template_keeps_source_and_is_immutable() -> None:
    template = compile_template("Hi {{name}}")
    assert template.source == "Hi {{name}}"
    assert template == Template("Hi {{name}}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.source = "other"  # type: ignore[misc]
    assert template.render({"name": "Ann"}) == "Hi Ann"
    assert template.render({"name": "Bob"}) == "Hi Bob"


def test_template_constructor_compiles() -> None:
    with pytest.raises(TemplateSyntaxError):
        Template("{{#if}}")


def test_render_accepts_any_mapping() -> None:
    context: Mapping[str, object] = MappingProxyType({"name": "Ann"})
    assert compile_template("{{name}}").render(context) == "Ann"


def test_render_does_not_mutate_context() -> None:
    context: dict[str, object] = {"items": [{"a": 1}], "b": {"c": 2}}
    snapshot = repr(context)
    render_template("{{#each items}}{{a}}{{@index}}{{/each}}{{#with b}}{{c}}{{/with}}", context)
    assert repr(context) == snapshot


def test_one_template_renders_concurrently_from_many_threads() -> None:
    template = compile_template(
        "{{#each items as |item i|}}{{@root.who}}:{{i}}={{item}}{{#unless @last}},{{/unless}}{{/each}}"
    )
    barrier = threading.Barrier(8)

    def render(worker: int) -> tuple[str, str]:
        barrier.wait()
        context = {"who": f"w{worker}", "items": list(range(worker, worker + 50))}
        expected = ",".join(f"w{worker}:{i}={worker + i}" for i in range(50))
        results = {template.render(context) for _ in range(20)}
        assert len(results) == 1
        return results.pop(), expected

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(render, range(8)))
    for rendered, expected in outcomes:
        assert rendered == expected


def test_limits_are_per_render_not_per_template() -> None:
    template = compile_template("{{#each items}}{{this}}{{/each}}")
    limits = RenderLimits(max_steps=25)
    context = {"items": list(range(10))}
    for _ in range(5):
        assert template.render(context, limits) == "0123456789"
