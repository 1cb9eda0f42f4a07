"""Safe Handlebars templates for tenant-authored messages.

Tenants write message templates in a subset of Handlebars. Templates come from untrusted users,
so Herald uses this small engine instead of a library that turns templates into Python source
(pybars3 does that).

Safety model
------------
* A template is parsed once into an immutable tree of frozen dataclasses (the AST). Rendering
  walks that tree. No Python source is ever generated, and nothing is passed to ``eval`` or
  ``exec``.
* Templates can only read JSON-like data: ``Mapping``, ``list``/``tuple``, ``str``, ``int``,
  ``float``, ``bool`` and ``None``. A path segment is looked up as a ``Mapping`` key or, when
  it is a canonical array index such as ``0``, as a ``list``/``tuple`` index. That is the only
  kind of lookup. There is no ``getattr``, and no attribute, method or property is ever read.
  Values are classified through ``type(value)``, so not even an object's ``__class__`` is read.
  ``{{__class__}}``, ``{{constructor}}`` and ``{{this.__dict__}}`` are just keys that are
  missing from the data, so they render as an empty string.
* The only helpers are the built-in blocks ``#if``, ``#unless``, ``#each`` and ``#with``, and
  the value helpers ``lookup``, ``default``, ``upper``, ``lower`` and ``date`` (see "Value
  helpers" below). Each is plain Python in this module that works on JSON values; none runs
  tenant code. Any other helper, and any malformed tag, is rejected at compile time with a
  :class:`TemplateSyntaxError` that gives the line and column.
* The work is bounded. Sources larger than 64 KiB, blocks nested more than 32 levels deep and
  sub-expressions nested more than 32 levels deep are rejected at compile time. Rendering stops
  with :class:`TemplateRenderError` when the output or the number of evaluation steps goes over
  :class:`RenderLimits`. Every helper call is a step, and the text ``upper`` or ``lower`` makes
  may not be longer than the output limit even when it is not output.
* A compiled :class:`Template` is immutable and keeps no per-render state, so several threads
  or tasks can render one template at the same time.

Value helpers
-------------
A value helper is written as a tag (``{{upper contact.name}}``), as an unescaped tag
(``{{{upper x}}}``) or as a sub-expression wherever an expression is accepted
(``{{upper (default contact.name "friend")}}``, ``{{#if (lower x)}}``, ``{{lookup obj (lower
key)}}``). Its result is output like any other value, so ``{{...}}`` HTML-escapes it. None is a
block helper: ``{{#upper x}}`` is a compile error.

* ``lookup object key``: ``object[key]``, with the key converted to text as JavaScript does.
* ``default value fallback``: ``value`` unchanged, unless it is null, missing or the empty string;
  then ``fallback`` (which is only evaluated in that case). ``false``, ``0``, ``[]`` and ``{}``
  are kept: they are values, not gaps.
* ``upper value`` / ``lower value``: the value's text, exactly as ``{{value}}`` would show it
  (null and missing give ""; ``true`` gives "true", so ``upper`` gives "TRUE"), upper- or
  lower-cased with Unicode's default case mapping, which never depends on the process locale.
  The result is always a string.
* ``date value [format]``: ``value`` is a timestamp string in RFC 3339 / ISO 8601 extended form,
  or a number of seconds (not milliseconds) since 1970-01-01T00:00:00Z. The string is a date
  ``YYYY-MM-DD`` (midnight), optionally followed by ``T``, ``t`` or a space, ``hh:mm``, optional
  ``:ss`` and fraction (up to 9 digits, cut to microseconds) and an optional offset ``Z``,
  ``+02:00``, ``+0200`` or ``+02``: ``2026-11-23T10:00:00Z``, ``2026-11-23T10:00:00.250+02:00``,
  ``2026-11-23 10:00``. The time is shown in the offset the string was written with; a string
  without an offset and a number are UTC. Anything else (another string, a string over 64
  characters, a boolean, null, a list, an object, a date or time that does not exist such as
  ``2026-02-30`` or ``23:59:60``, a year outside 1-9999) renders as "", like a missing value,
  so one bad field does not fail a delivery. A value that is not JSON at all is a
  :class:`TemplateRenderError`, as for ``{{value}}``.

  ``format`` is text with these directives, and nothing else: ``%Y`` year (2026), ``%y`` year
  in two digits (26), ``%m`` month (01-12), ``%d`` day (01-31), ``%j`` day of the year
  (001-366), ``%H`` hour (00-23), ``%I`` hour (01-12), ``%M`` minute, ``%S`` second, ``%B``
  month name (November), ``%b`` short month name (Nov), ``%A`` weekday name (Monday), ``%a``
  short weekday name (Mon), ``%p`` AM or PM, ``%Z`` zone name (UTC, or UTC+02:00), ``%z``
  offset (+0000, +0200) and ``%%`` for a percent sign. A ``-`` after ``%`` drops the leading
  zeros of a number directive (``%-d`` gives 3, not 03). Names are always English. A format is
  at most 200 characters long. Without a format, the result is RFC 3339:
  ``2026-11-23T10:00:00Z``, or ``2026-11-23T10:00:00+02:00`` when written with that offset.

  A literal format is checked at compile time (:class:`TemplateSyntaxError`). A format computed
  from the data, as in ``{{date at (lookup formats lang)}}``, is checked when rendering: one
  that is not a string, is too long or uses another directive raises
  :class:`TemplateRenderError`; a null or missing one means the default format.

A helper name written alone stays a data lookup: ``{{date}}`` and ``{{#if upper}}`` read the keys
"date" and "upper", so templates written before these helpers existed keep their meaning. The
same goes for a block parameter with a helper's name, as in ``{{#each xs as |date|}}{{date}}``.
Wrong argument counts, ``key=value`` options and ``as |...|`` on a value helper are compile
errors.

Where this engine differs from Handlebars.js
---------------------------------------------
* ``{{items.length}}`` and ``{{name.[0]}}`` on a string render an empty string. Lookups never
  go past ``Mapping`` keys and list indexes.
* A number segment at the end of a path, such as ``{{items.0}}``, is accepted. Handlebars.js
  only accepts ``{{items.[0]}}`` there.
* ``default``, ``upper``, ``lower`` and ``date`` are built in here; Handlebars.js has none of
  them built in.
* Things Handlebars.js reports only at render time, or ignores, are compile errors here: unknown
  helpers, unknown ``@variables``, block helpers used without ``#``, extra arguments, options
  other than ``includeZero``, and more block parameters than a helper provides.
* A bracketed name such as ``{{[if]}}`` is always a data lookup, never a helper call.
* Every block with a new context (``#each``, ``#with``) adds a level for ``../``. Handlebars.js
  skips the level when the new context is the very same object as the old one.
* Whitespace in "standalone" lines is removed by one rule everywhere: a block, ``else``,
  closing or comment tag that is alone on its line takes that line's indentation and line
  break with it. Handlebars.js applies the rule a little differently inside
  ``{{else if}}`` chains.
* Python ints render exactly. JavaScript would round numbers above 2**53.
* Rendering a value that is not JSON-like (for example a ``datetime``) raises
  :class:`TemplateRenderError`. Python code is never called to turn it into text.
"""

from __future__ import annotations

import functools
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Final, TypeAlias, TypeGuard

__all__ = [
    "MAX_NESTING_DEPTH",
    "MAX_SOURCE_BYTES",
    "RenderLimits",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "compile_template",
    "render_template",
]

MAX_SOURCE_BYTES: Final = 64 * 1024
"""Largest accepted template source, in UTF-8 bytes."""

MAX_NESTING_DEPTH: Final = 32
"""Deepest accepted nesting of blocks, and separately of ``( ... )`` sub-expressions."""

_MAX_VALUE_DEPTH: Final = 32
"""Deepest list nesting that is turned into text (``[[1, 2], 3]`` has depth 2)."""


# --------------------------------------------------------------------------------------------
# Errors and limits
# --------------------------------------------------------------------------------------------


class TemplateError(Exception):
    """Base class of every error raised by this module."""


class TemplateSyntaxError(TemplateError):
    """The template source is invalid. ``line`` and ``column`` (1-based) point at the problem."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class TemplateRenderError(TemplateError):
    """Rendering stopped: a limit was exceeded, or the data holds a value that cannot be shown."""


@dataclass(frozen=True)
class RenderLimits:
    """Limits on the work that one :meth:`Template.render` call may do.

    ``max_output_chars`` limits the length of the rendered text. ``max_steps`` limits the
    number of evaluation steps. A step is one template node rendered, one ``#each``
    iteration, one helper call or one list element turned into text.
    """

    max_output_chars: int = 262_144
    max_steps: int = 100_000

    def __post_init__(self) -> None:
        if self.max_output_chars < 0 or self.max_steps < 0:
            raise ValueError("render limits must not be negative")


# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------

ConstantValue: TypeAlias = "str | int | float | bool | None"


@dataclass(frozen=True)
class Constant:
    """A literal argument: ``"text"``, ``'text'``, ``3``, ``-1.5``, ``true``, ``false``, ``null``."""

    value: ConstantValue


@dataclass(frozen=True)
class ContextPath:
    """A path that starts at the current context, such as ``user.name``, ``this``, ``../title``.

    ``depth`` is the number of leading ``../``. ``keys`` are looked up one after another.
    """

    depth: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class DataVariable:
    """``@root``, ``@index``, ``@key``, ``@first`` or ``@last``, optionally followed by ``keys``.

    ``depth`` counts ``../`` (``@../index`` is the index of the enclosing ``#each``).
    """

    depth: int
    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class BlockParam:
    """A name declared with ``as |item index|``, resolved at compile time.

    ``frame`` is the number of blocks that declare parameters between this use and the
    declaration. ``position`` is the name's place in the declaration.
    """

    frame: int
    position: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Lookup:
    """``lookup target key``, written as a tag or as a ``(lookup ...)`` sub-expression."""

    target: Expression
    key: Expression


@dataclass(frozen=True)
class Default:
    """``default value fallback``: ``value``, or ``fallback`` when ``value`` is null, missing or ""."""

    value: Expression
    fallback: Expression


@dataclass(frozen=True)
class ChangeCase:
    """``upper value`` (``upper`` is true) or ``lower value``: the value's text in that case."""

    value: Expression
    upper: bool


@dataclass(frozen=True)
class DateField:
    """One directive of a date format: ``directive`` is ``Y`` for ``%Y``; ``%-d`` is not ``padded``."""

    directive: str
    padded: bool


@dataclass(frozen=True)
class DatePattern:
    """A checked date format: literal text and fields, in order."""

    pieces: tuple[str | DateField, ...]


@dataclass(frozen=True)
class FormatDate:
    """``date value [format]``.

    ``pattern`` is the format checked at compile time, or, when the format is computed from the
    data, the expression that computes it (checked at render time).
    """

    value: Expression
    pattern: DatePattern | Expression


Expression: TypeAlias = (
    "Constant | ContextPath | DataVariable | BlockParam | Lookup | Default | ChangeCase | FormatDate"
)


@dataclass(frozen=True)
class Text:
    """Literal template text, copied to the output as is."""

    text: str


@dataclass(frozen=True)
class Output:
    """``{{expression}}`` (``escape`` is true) or ``{{{expression}}}`` / ``{{& expression}}``."""

    expression: Expression
    escape: bool


@dataclass(frozen=True)
class ConditionBranch:
    """``#if condition``, or ``#unless condition`` when ``negated``."""

    condition: Expression
    negated: bool
    include_zero: Expression | None
    body: Body


@dataclass(frozen=True)
class EachBranch:
    """``#each collection``: renders ``body`` once for each item of a list or each entry of an object."""

    collection: Expression
    declares_block_params: bool
    body: Body


@dataclass(frozen=True)
class WithBranch:
    """``#with subject``: renders ``body`` with ``subject`` as the context, unless it is empty."""

    subject: Expression
    declares_block_params: bool
    body: Body


Branch: TypeAlias = "ConditionBranch | EachBranch | WithBranch"


@dataclass(frozen=True)
class Block:
    """A block and its ``{{else ...}}`` chain.

    The first branch that applies renders. If none does, ``otherwise`` (the body after a plain
    ``{{else}}``) renders. ``{{#if a}}x{{else if b}}y{{else}}z{{/if}}`` has two branches.
    """

    branches: tuple[Branch, ...]
    otherwise: Body


Node: TypeAlias = "Text | Output | Block"
Body: TypeAlias = "tuple[Node, ...]"

_BLOCK_HELPERS: Final = ("if", "unless", "each", "with")
_MAX_BLOCK_PARAMS: Final = {"if": 0, "unless": 0, "each": 2, "with": 1}
_DATA_VARIABLES: Final = ("root", "index", "key", "first", "last")


@dataclass(frozen=True)
class _HelperSignature:
    """How many arguments a value helper takes, in words for error messages, and an example call."""

    min_arguments: int
    max_arguments: int
    arity: str
    example: str


_VALUE_HELPERS: Final[Mapping[str, _HelperSignature]] = {
    "lookup": _HelperSignature(2, 2, "exactly two arguments", "{{lookup object key}}"),
    "default": _HelperSignature(2, 2, "exactly two arguments", '{{default value "fallback"}}'),
    "upper": _HelperSignature(1, 1, "exactly one argument", "{{upper value}}"),
    "lower": _HelperSignature(1, 1, "exactly one argument", "{{lower value}}"),
    "date": _HelperSignature(1, 2, "one or two arguments", '{{date value "%d %B %Y"}}'),
}
_VALUE_HELPER_LIST: Final = "lookup, default, upper, lower and date"


# --------------------------------------------------------------------------------------------
# Source positions
# --------------------------------------------------------------------------------------------


class _Locator:
    """Turns offsets in the source into 1-based line and column numbers for error messages."""

    def __init__(self, source: str) -> None:
        self._line_starts = [0, *(match.end() for match in re.finditer("\n", source))]

    def position(self, offset: int) -> tuple[int, int]:
        line_index = bisect_right(self._line_starts, offset) - 1
        return line_index + 1, offset - self._line_starts[line_index] + 1

    def describe(self, offset: int) -> str:
        line, column = self.position(offset)
        return f"line {line}, column {column}"

    def error(self, offset: int, message: str) -> TemplateSyntaxError:
        line, column = self.position(offset)
        return TemplateSyntaxError(message, line, column)


# --------------------------------------------------------------------------------------------
# Tokens: the template split into text and tags
# --------------------------------------------------------------------------------------------


class _TagKind(Enum):
    OUTPUT = "output"  # {{value}}, HTML-escaped
    RAW_OUTPUT = "raw output"  # {{{value}}} or {{& value}}
    COMMENT = "comment"  # {{! ... }} or {{!-- ... --}}
    OPEN_BLOCK = "open block"  # {{#helper ...}}
    ELSE = "else"  # {{else}} or {{else helper ...}}
    CLOSE_BLOCK = "close block"  # {{/helper}}


_STANDALONE_KINDS: Final = frozenset(
    {_TagKind.COMMENT, _TagKind.OPEN_BLOCK, _TagKind.ELSE, _TagKind.CLOSE_BLOCK}
)


@dataclass(frozen=True)
class _RawPath:
    """A path as written in a tag, before block parameters are resolved."""

    original: str
    offset: int
    is_data: bool
    depth: int
    parts: tuple[str, ...]
    scoped: bool  # starts with this, . or ..
    simple_name: str | None  # set for a lone plain name such as `if` or `user`: a possible helper


@dataclass(frozen=True)
class _RawConstant:
    value: ConstantValue
    original: str
    offset: int


@dataclass(frozen=True)
class _RawOption:
    """A ``key=value`` hash argument."""

    key: str
    value: _RawExpression
    offset: int


@dataclass(frozen=True)
class _RawCall:
    """The contents of a tag or of a ``( ... )`` sub-expression."""

    name: _RawPath | _RawConstant
    params: tuple[_RawExpression, ...]
    options: tuple[_RawOption, ...]
    block_params: tuple[str, ...]
    offset: int


_RawExpression: TypeAlias = "_RawPath | _RawConstant | _RawCall"


@dataclass
class _TextToken:
    """Literal text between tags. Whitespace control shortens ``text``; ``original`` stays."""

    original: str
    text: str


@dataclass(frozen=True)
class _TagToken:
    kind: _TagKind
    offset: int
    strip_before: bool  # {{~
    strip_after: bool  # ~}}
    call: _RawCall | None  # None for comments and for a plain {{else}}


_Token: TypeAlias = "_TextToken | _TagToken"

# Characters of a name, as in Handlebars: anything but whitespace and !"#%&'()*+,./;<=>@[\]^`{|}~
_NAME = re.compile(r"[^\s!\"#%&'()*+,./;<=>@\[\\\]^`{|}~]+")
_AFTER_DOT_SEGMENT = re.compile(r"[=~}\s/.)|]|\Z")
_AFTER_PATH = re.compile(r"[~}\s)|]|\Z")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?=[~}\s)]|\Z)")
_KEYWORD = re.compile(r"(?:true|false|null|undefined)(?=[~}\s)]|\Z)")
_KEYWORD_VALUES: Final[Mapping[str, ConstantValue]] = {
    "true": True,
    "false": False,
    "null": None,
    "undefined": None,
}
_OPTION = re.compile(r"([^\s!\"#%&'()*+,./;<=>@\[\\\]^`{|}~]+)\s*=")
_BLOCK_PARAMS_OPEN = re.compile(r"as\s+\|")
_ELSE = re.compile(r"\s*else(?=\s|~?\}\})")
_LONG_COMMENT_END = re.compile(r"--(~?)\}\}")

_UNSUPPORTED_TAGS: Final = {
    ">": "partials '{{> ...}}' are not supported",
    "^": "inverted sections '{{^...}}' are not supported; use {{else}} or {{#unless ...}}",
    "*": "decorators '{{* ...}}' are not supported",
    "#>": "partial blocks '{{#> ...}}' are not supported",
    "#*": "inline partials '{{#* ...}}' are not supported",
}


class _TagReader:
    """Reads the inside of one tag: a name, then arguments, ``key=value`` options and ``as |...|``."""

    def __init__(self, source: str, position: int, tag_offset: int, triple: bool, locator: _Locator) -> None:
        self._source = source
        self._position = position
        self._tag_offset = tag_offset
        self._triple = triple
        self._locator = locator

    def is_empty(self) -> bool:
        self._skip_whitespace()
        self._require_more()
        return self._at_close()

    def read_call(self) -> _RawCall:
        return self._read_call(depth=0, in_parentheses=False)

    def read_close(self) -> tuple[bool, int]:
        """Consume the closing braces; return whether they strip whitespace and where the tag ends."""
        self._skip_whitespace()
        self._require_more()
        source, position = self._source, self._position
        if self._triple:
            if source.startswith("}}}", position):
                return False, position + 3
            if source.startswith("}~}}", position):
                return True, position + 4
            if source.startswith(("}}", "~}}"), position):
                raise self._locator.error(position, "'{{{' must be closed with '}}}'")
        else:
            if source.startswith("}}", position):
                return False, position + 2
            if source.startswith("~}}", position):
                return True, position + 3
        raise self._unexpected()

    # -- calls ----------------------------------------------------------------------------

    def _read_call(self, depth: int, in_parentheses: bool) -> _RawCall:
        self._skip_whitespace()
        self._require_more()
        offset = self._position
        if self._source[offset] == "(":
            raise self._locator.error(offset, "a sub-expression '( ... )' cannot be used as a name")
        name = self._read_expression(depth)
        assert not isinstance(name, _RawCall)
        params: list[_RawExpression] = []
        options: list[_RawOption] = []
        block_params: tuple[str, ...] = ()
        while True:
            separated = self._skip_whitespace()
            if self._at_call_end(in_parentheses):
                break
            if not separated:
                raise self._unexpected()
            if block_params:
                raise self._locator.error(self._position, "'as |...|' must come last in the tag")
            block_params_open = _BLOCK_PARAMS_OPEN.match(self._source, self._position)
            if block_params_open and not in_parentheses:
                block_params = self._read_block_params(block_params_open)
                continue
            option = _OPTION.match(self._source, self._position)
            if option:
                options.append(self._read_option(option, depth))
                continue
            if options:
                raise self._locator.error(self._position, "arguments must come before key=value options")
            params.append(self._read_expression(depth))
        return _RawCall(name, tuple(params), tuple(options), block_params, offset)

    def _at_call_end(self, in_parentheses: bool) -> bool:
        self._require_more()
        if not in_parentheses:
            return self._at_close()
        if self._source[self._position] == ")":
            return True
        if self._at_close():
            raise self._locator.error(self._position, "unclosed '(': add ')' to end the sub-expression")
        return False

    def _read_option(self, option: re.Match[str], depth: int) -> _RawOption:
        offset = self._position
        self._position = option.end()
        self._skip_whitespace()
        if self._at_call_end(in_parentheses=False) or self._source[self._position] == ")":
            raise self._locator.error(offset, f"expected a value after '{option.group(1)}='")
        return _RawOption(option.group(1), self._read_expression(depth), offset)

    def _read_block_params(self, opening: re.Match[str]) -> tuple[str, ...]:
        offset = self._position
        self._position = opening.end()
        names: list[str] = []
        while True:
            self._skip_whitespace()
            self._require_more()
            if self._source[self._position] == "|":
                self._position += 1
                break
            name = _NAME.match(self._source, self._position)
            if name is None:
                raise self._locator.error(self._position, "expected a block parameter name or '|'")
            names.append(name.group())
            self._position = name.end()
        if not names:
            raise self._locator.error(offset, "'as | |' needs at least one name between the bars")
        return tuple(names)

    # -- expressions ----------------------------------------------------------------------

    def _read_expression(self, depth: int) -> _RawExpression:
        self._require_more()
        source, offset = self._source, self._position
        char = source[offset]
        if char == "(":
            if depth >= MAX_NESTING_DEPTH:
                raise self._locator.error(
                    offset, f"sub-expressions are nested more than {MAX_NESTING_DEPTH} levels deep"
                )
            self._position += 1
            call = self._read_call(depth + 1, in_parentheses=True)
            self._position += 1  # the closing ')'
            return call
        if char in "\"'":
            return self._read_string()
        number = _NUMBER.match(source, offset)
        if number:
            self._position = number.end()
            return _RawConstant(self._number_value(number.group(), offset), number.group(), offset)
        keyword = _KEYWORD.match(source, offset)
        if keyword:
            self._position = keyword.end()
            return _RawConstant(_KEYWORD_VALUES[keyword.group()], keyword.group(), offset)
        return self._read_path()

    def _number_value(self, text: str, offset: int) -> int | float:
        if "." in text:
            return float(text)
        try:
            return int(text)
        except ValueError:  # more digits than int() accepts
            raise self._locator.error(offset, "number literal is too long") from None

    def _read_string(self) -> _RawConstant:
        source, offset = self._source, self._position
        quote = source[offset]
        characters: list[str] = []
        position = offset + 1
        while position < len(source):
            char = source[position]
            if char == "\\" and source.startswith(quote, position + 1):
                characters.append(quote)
                position += 2
            elif char == quote:
                self._position = position + 1
                return _RawConstant("".join(characters), source[offset : position + 1], offset)
            else:
                characters.append(char)
                position += 1
        raise self._locator.error(offset, f"unterminated string: add the closing {quote}")

    def _read_path(self) -> _RawPath:
        source, offset = self._source, self._position
        is_data = source.startswith("@", offset)
        if is_data:
            self._position += 1
        segments = [self._read_segment(offset)]
        while self._position < len(source) and source[self._position] in "./":
            self._position += 1
            segments.append(self._read_segment(offset))
        original = source[offset : self._position]
        if not _AFTER_PATH.match(source, self._position):
            char = source[self._position]
            hint = f"; write '{original}.[...]' to look up a key" if char == "[" else ""
            raise self._locator.error(self._position, f"unexpected {char!r} after '{original}'{hint}")
        return self._build_path(original, offset, is_data, segments)

    def _read_segment(self, path_offset: int) -> tuple[str, bool]:
        """Read one path segment; return its text and whether it was written as ``[literal]``."""
        source, position = self._source, self._position
        if source.startswith("..", position):
            self._position += 2
            return "..", False
        if source.startswith(".", position) and _AFTER_DOT_SEGMENT.match(source, position + 1):
            self._position += 1
            return ".", False
        if source.startswith("[", position):
            return self._read_bracketed_segment(), True
        name = _NAME.match(source, position)
        if name:
            self._position = name.end()
            return name.group(), False
        if position == path_offset:
            raise self._unexpected()
        self._require_more()
        written = source[path_offset:position]
        if written == "@":
            raise self._locator.error(position, "expected a data variable name after '@'")
        raise self._locator.error(position, f"expected a name after '{written}'")

    def _read_bracketed_segment(self) -> str:
        source, offset = self._source, self._position
        characters: list[str] = []
        position = offset + 1
        while position < len(source):
            char = source[position]
            if char == "\\" and source.startswith(("]", "\\"), position + 1):
                characters.append(source[position + 1])
                position += 2
            elif char == "]":
                self._position = position + 1
                return "".join(characters)
            else:
                characters.append(char)
                position += 1
        raise self._locator.error(offset, "unterminated '[' in path: add the closing ']'")

    def _build_path(
        self, original: str, offset: int, is_data: bool, segments: list[tuple[str, bool]]
    ) -> _RawPath:
        depth = 0
        scoped = False
        parts: list[str] = []
        for text, bracketed in segments:
            if not bracketed and text in (".", "..", "this"):
                if parts:
                    raise self._locator.error(
                        offset, f"invalid path '{original}': '{text}' may only appear at the start"
                    )
                scoped = True
                depth += text == ".."
            else:
                parts.append(text)
        simple = not (is_data or scoped) and len(segments) == 1 and not segments[0][1]
        return _RawPath(original, offset, is_data, depth, tuple(parts), scoped, parts[0] if simple else None)

    # -- low-level scanning ---------------------------------------------------------------

    def _skip_whitespace(self) -> bool:
        start = self._position
        source = self._source
        while self._position < len(source) and source[self._position].isspace():
            self._position += 1
        return self._position > start

    def _require_more(self) -> None:
        if self._position >= len(self._source):
            closer = "}}}" if self._triple else "}}"
            raise self._locator.error(
                self._tag_offset, f"unterminated tag: add '{closer}' to close the tag opened here"
            )

    def _at_close(self) -> bool:
        return self._source.startswith(("}}", "~}}", "}~}}"), self._position)

    def _unexpected(self) -> TemplateSyntaxError:
        self._require_more()
        char = self._source[self._position]
        if char == "{":
            closer = "}}}" if self._triple else "}}"
            return self._locator.error(
                self._tag_offset, f"unterminated tag: add '{closer}' to close the tag opened here"
            )
        return self._locator.error(self._position, f"unexpected character {char!r} in tag")


class _Scanner:
    """Splits a template source into text tokens and tag tokens."""

    def __init__(self, source: str, locator: _Locator) -> None:
        self._source = source
        self._locator = locator

    def scan(self) -> list[_Token]:
        source = self._source
        tokens: list[_Token] = []
        pending_text: list[str] = []
        position = 0
        while True:
            tag_offset = source.find("{{", position)
            if tag_offset == -1:
                pending_text.append(source[position:])
                break
            before = source[position:tag_offset]
            if before.endswith("\\\\"):  # \\{{ is a backslash followed by a real tag
                pending_text.append(before[:-1])
            elif before.endswith("\\"):  # \{{ is literal braces
                pending_text.append(before[:-1] + "{{")
                position = tag_offset + 2
                continue
            else:
                pending_text.append(before)
            text = "".join(pending_text)
            pending_text.clear()
            if text:
                tokens.append(_TextToken(text, text))
            tag, position = self._read_tag(tag_offset)
            tokens.append(tag)
        text = "".join(pending_text)
        if text:
            tokens.append(_TextToken(text, text))
        return tokens

    def _read_tag(self, offset: int) -> tuple[_TagToken, int]:
        source = self._source
        position = offset + 2
        if source.startswith("{{", position):
            raise self._locator.error(
                offset, "raw blocks '{{{{' are not supported; write \\{{ to show literal braces"
            )
        strip_before = source.startswith("~", position)
        position += strip_before
        if source.startswith("!", position):
            return self._read_comment(offset, position, strip_before)
        for marker, message in _UNSUPPORTED_TAGS.items():
            if source.startswith(marker, position):
                raise self._locator.error(offset, message)

        triple = False
        else_keyword = _ELSE.match(source, position)
        if source.startswith("{", position):
            kind, triple, position = _TagKind.RAW_OUTPUT, True, position + 1
        elif source.startswith("&", position):
            kind, position = _TagKind.RAW_OUTPUT, position + 1
        elif source.startswith("#", position):
            kind, position = _TagKind.OPEN_BLOCK, position + 1
        elif source.startswith("/", position):
            kind, position = _TagKind.CLOSE_BLOCK, position + 1
        elif else_keyword:
            kind, position = _TagKind.ELSE, else_keyword.end()
        else:
            kind = _TagKind.OUTPUT

        reader = _TagReader(source, position, offset, triple, self._locator)
        call: _RawCall | None = None
        if reader.is_empty():
            if kind is not _TagKind.ELSE:
                raise self._locator.error(offset, _EMPTY_TAG_MESSAGES[kind])
        else:
            call = reader.read_call()
        strip_after, end = reader.read_close()
        return _TagToken(kind, offset, strip_before, strip_after, call), end

    def _read_comment(self, offset: int, position: int, strip_before: bool) -> tuple[_TagToken, int]:
        source = self._source
        if source.startswith("!--", position):
            end = _LONG_COMMENT_END.search(source, position + 3)
            if end is None:
                raise self._locator.error(offset, "unterminated comment: add '--}}' to close it")
            token = _TagToken(_TagKind.COMMENT, offset, strip_before, bool(end.group(1)), None)
            return token, end.end()
        close = source.find("}}", position + 1)
        if close == -1:
            raise self._locator.error(offset, "unterminated comment: add '}}' to close it")
        token = _TagToken(_TagKind.COMMENT, offset, strip_before, source[close - 1] == "~", None)
        return token, close + 2


_EMPTY_TAG_MESSAGES: Final = {
    _TagKind.OUTPUT: "empty tag '{{}}': put a name between the braces",
    _TagKind.RAW_OUTPUT: "empty tag: put a name between the braces",
    _TagKind.OPEN_BLOCK: "expected a block helper name after '{{#', e.g. {{#if ...}}",
    _TagKind.CLOSE_BLOCK: "expected a block name after '{{/', e.g. {{/if}}",
}


# --------------------------------------------------------------------------------------------
# Whitespace control: {{~ ... ~}} and standalone lines
# --------------------------------------------------------------------------------------------

_LEADING_WHITESPACE = re.compile(r"\A\s+")
_TRAILING_WHITESPACE = re.compile(r"\s+\Z")
_STANDALONE_LINE_END = re.compile(r"\A[ \t]*\r?\n?")
_STANDALONE_INDENT = re.compile(r"[ \t]+\Z")


def _apply_whitespace_control(tokens: list[_Token]) -> None:
    """Trim text next to tags the way Handlebars does.

    ``{{~`` removes all whitespace before the tag and ``~}}`` all whitespace after it. A block,
    ``else``, closing or comment tag that stands alone on its line also removes the line's
    indentation and its line break, so block tags do not leave blank lines in the output.
    """
    for index, token in enumerate(tokens):
        if not isinstance(token, _TagToken):
            continue
        standalone = token.kind in _STANDALONE_KINDS and _is_standalone(tokens, index)
        before = tokens[index - 1] if index > 0 else None
        if isinstance(before, _TextToken):
            if token.strip_before:
                before.text = _TRAILING_WHITESPACE.sub("", before.text)
            elif standalone:
                before.text = _STANDALONE_INDENT.sub("", before.text)
        after = tokens[index + 1] if index + 1 < len(tokens) else None
        if isinstance(after, _TextToken):
            if token.strip_after:
                after.text = _LEADING_WHITESPACE.sub("", after.text)
            elif standalone:
                after.text = _STANDALONE_LINE_END.sub("", after.text, count=1)


def _is_standalone(tokens: list[_Token], index: int) -> bool:
    """Whether only whitespace surrounds ``tokens[index]`` on its line (judged on the original text)."""
    if index > 0:
        before = tokens[index - 1]
        if not isinstance(before, _TextToken):
            return False
        text = before.original
        last_newline = text.rfind("\n")
        if last_newline == -1 and index - 1 > 0:
            return False
        if text[last_newline + 1 :].strip():
            return False
    if index + 1 < len(tokens):
        after = tokens[index + 1]
        if not isinstance(after, _TextToken):
            return False
        text = after.original
        first_newline = text.find("\n")
        if first_newline == -1 and index + 1 < len(tokens) - 1:
            return False
        if text[: first_newline if first_newline != -1 else len(text)].strip():
            return False
    return True


# --------------------------------------------------------------------------------------------
# Parser: tokens to AST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BranchHead:
    """A validated ``{{#helper ...}}`` or ``{{else helper ...}}`` tag, waiting for its body."""

    helper: str
    argument: Expression
    include_zero: Expression | None
    block_params: tuple[str, ...]

    def with_body(self, body: Body) -> Branch:
        if self.helper in ("if", "unless"):
            return ConditionBranch(self.argument, self.helper == "unless", self.include_zero, body)
        if self.helper == "each":
            return EachBranch(self.argument, bool(self.block_params), body)
        return WithBranch(self.argument, bool(self.block_params), body)


class _Parser:
    """Builds the AST from tokens, checking block structure and helper usage."""

    def __init__(self, tokens: list[_Token], locator: _Locator) -> None:
        self._tokens = tokens
        self._next = 0
        self._locator = locator
        self._block_params: list[tuple[str, ...]] = []  # innermost declaration last

    def parse(self) -> Body:
        body, stop = self._parse_body(depth=0)
        if stop is None:
            return body
        if stop.kind is _TagKind.ELSE:
            raise self._locator.error(
                stop.offset,
                "{{else}} outside of a block: it belongs inside {{#if}}, {{#unless}}, {{#each}} or {{#with}}",
            )
        name = _close_name(stop)
        raise self._locator.error(stop.offset, f"{{{{/{name}}}}} has no matching {{{{#{name}}}}}")

    def _parse_body(self, depth: int) -> tuple[Body, _TagToken | None]:
        """Parse nodes up to an ``else`` or closing tag, which is returned (None at the end)."""
        nodes: list[Node] = []
        while self._next < len(self._tokens):
            token = self._tokens[self._next]
            self._next += 1
            if isinstance(token, _TextToken):
                if token.text:
                    nodes.append(Text(token.text))
            elif token.kind is _TagKind.OUTPUT or token.kind is _TagKind.RAW_OUTPUT:
                nodes.append(self._output(token))
            elif token.kind is _TagKind.OPEN_BLOCK:
                nodes.append(self._parse_block(token, depth + 1))
            elif token.kind is _TagKind.ELSE or token.kind is _TagKind.CLOSE_BLOCK:
                return tuple(nodes), token
            # Comments leave nothing behind.
        return tuple(nodes), None

    def _parse_block(self, opening: _TagToken, depth: int) -> Block:
        assert opening.call is not None
        if depth > MAX_NESTING_DEPTH:
            raise self._locator.error(
                opening.offset,
                f"blocks are nested more than {MAX_NESTING_DEPTH} levels deep; simplify the template",
            )
        head = self._branch_head(opening.call, "#")
        name = head.helper
        branches: list[Branch] = []
        while True:
            self._block_params.append(head.block_params)
            body, stop = self._parse_body(depth)
            self._block_params.pop()
            branches.append(head.with_body(body))
            if stop is None:
                raise self._unclosed(opening, name)
            if stop.kind is not _TagKind.ELSE or stop.call is None:
                break
            head = self._branch_head(stop.call, "else ")
        otherwise: Body = ()
        if stop.kind is _TagKind.ELSE:
            otherwise, stop = self._parse_body(depth)
            if stop is None:
                raise self._unclosed(opening, name)
            if stop.kind is _TagKind.ELSE:
                message = (
                    f"a {{{{#{name}}}}} block can have only one {{{{else}}}}"
                    if stop.call is None
                    else "{{else ...}} with a condition must come before the plain {{else}}"
                )
                raise self._locator.error(stop.offset, message)
        self._check_close(stop, opening, name)
        return Block(tuple(branches), otherwise)

    def _unclosed(self, opening: _TagToken, name: str) -> TemplateSyntaxError:
        return self._locator.error(
            opening.offset, f"unclosed {{{{#{name}}}}} block opened here; close it with {{{{/{name}}}}}"
        )

    def _check_close(self, closing: _TagToken, opening: _TagToken, name: str) -> None:
        assert closing.call is not None
        closing_name = _close_name(closing)
        if closing_name != name:
            raise self._locator.error(
                closing.offset,
                f"{{{{/{closing_name}}}}} does not match {{{{#{name}}}}} opened at "
                f"{self._locator.describe(opening.offset)}; close it with {{{{/{name}}}}}",
            )
        call = closing.call
        if call.params or call.options or call.block_params:
            raise self._locator.error(closing.offset, f"{{{{/{name}}}}} takes no arguments")

    def _branch_head(self, call: _RawCall, prefix: str) -> _BranchHead:
        name = call.name.simple_name if isinstance(call.name, _RawPath) else None
        if name is not None and name in _VALUE_HELPERS:
            raise self._locator.error(
                call.offset,
                f"'{name}' is not a block helper; write {_VALUE_HELPERS[name].example} without '#', "
                f"or use it in a sub-expression as in {{{{#if ({name} ...)}}}}",
            )
        if name is None or name not in _BLOCK_HELPERS:
            raise self._locator.error(
                call.offset,
                f"unknown block helper '{call.name.original}'; use #if, #unless, #each or #with",
            )
        label = f"{{{{{prefix}{name}}}}}"
        if len(call.params) != 1:
            raise self._locator.error(
                call.offset, f"{label} takes exactly one argument, got {len(call.params)}"
            )
        include_zero: Expression | None = None
        for option in call.options:
            if name in ("if", "unless") and option.key == "includeZero" and include_zero is None:
                include_zero = self._resolve(option.value)
            elif name in ("if", "unless"):
                raise self._locator.error(
                    option.offset, f"{label} accepts only the option includeZero=true, once"
                )
            else:
                raise self._locator.error(option.offset, f"{label} does not accept key=value options")
        allowed = _MAX_BLOCK_PARAMS[name]
        if len(call.block_params) > allowed:
            message = (
                f"{label} does not take block parameters 'as |...|'"
                if allowed == 0
                else f"{label} takes at most {allowed} block parameter{'s' if allowed > 1 else ''}"
            )
            raise self._locator.error(call.offset, message)
        return _BranchHead(name, self._resolve(call.params[0]), include_zero, call.block_params)

    def _output(self, token: _TagToken) -> Output:
        call = token.call
        assert call is not None
        escape = token.kind is _TagKind.OUTPUT
        name = self._helper_name(call.name)
        if name in _BLOCK_HELPERS:
            raise self._locator.error(
                call.offset, f"'{name}' is a block helper; write {{{{#{name} ...}}}}...{{{{/{name}}}}}"
            )
        # A value helper's name alone, as in {{date}}, is data; {{lookup}} alone stays an error.
        if name is not None and name in _VALUE_HELPERS and (name == "lookup" or call.params or call.options):
            return Output(self._helper_call(name, call), escape)
        if call.params or call.options:
            raise self._unknown_helper(call, in_subexpression=False)
        if call.block_params:
            raise self._locator.error(
                call.offset, "'as |...|' is only allowed on {{#each ...}} and {{#with ...}}"
            )
        if isinstance(call.name, _RawConstant):  # {{"key"}} and {{1}} look up that key, as in Handlebars
            return Output(ContextPath(0, (_constant_as_key(call.name),)), escape)
        return Output(self._resolve_path(call.name), escape)

    def _helper_call(self, name: str, call: _RawCall) -> Expression:
        """The expression for a call of the value helper ``name``, after checking its arguments."""
        signature = _VALUE_HELPERS[name]
        if call.options:
            raise self._locator.error(
                call.options[0].offset,
                f"{name} does not accept key=value options; write it as {signature.example}",
            )
        if call.block_params:
            raise self._locator.error(
                call.offset, "'as |...|' is only allowed on {{#each ...}} and {{#with ...}}"
            )
        count = len(call.params)
        if not signature.min_arguments <= count <= signature.max_arguments:
            raise self._locator.error(
                call.offset, f"{name} takes {signature.arity}, got {count}, as in {signature.example}"
            )
        if name == "date":
            return self._date_call(call.params)
        arguments = [self._resolve(param) for param in call.params]
        if name == "lookup":
            return Lookup(arguments[0], arguments[1])
        if name == "default":
            return Default(arguments[0], arguments[1])
        return ChangeCase(arguments[0], upper=name == "upper")

    def _date_call(self, params: tuple[_RawExpression, ...]) -> FormatDate:
        value = self._resolve(params[0])
        if len(params) == 1:
            return FormatDate(value, _DEFAULT_DATE_PATTERN)
        written = params[1]
        if not isinstance(written, _RawConstant):
            return FormatDate(value, self._resolve(written))
        if not _is_string(written.value):
            raise self._locator.error(
                written.offset,
                f"the format of date must be a string, as in {_VALUE_HELPERS['date'].example}",
            )
        try:
            return FormatDate(value, _parse_date_format(written.value))
        except _DateFormatError as error:
            raise self._locator.error(written.offset, f"invalid date format: {error}") from None

    def _unknown_helper(self, call: _RawCall, in_subexpression: bool) -> TemplateSyntaxError:
        written = call.name.original
        if isinstance(call.name, _RawPath) and call.name.simple_name in _VALUE_HELPERS:
            return self._locator.error(
                call.offset,
                f"'{written}' is a block parameter here, so it cannot be called as the {written} helper; "
                "rename the block parameter",
            )
        where = " in sub-expression" if in_subexpression else ""
        message = (
            f"unknown helper '{written}'{where}; the helpers that take arguments are {_VALUE_HELPER_LIST}"
        )
        return self._locator.error(call.offset, f"{message}, as in {{{{upper (default name 'friend')}}}}")

    def _helper_name(self, name: _RawPath | _RawConstant) -> str | None:
        """The helper a tag names, or None when the name is data (block parameters win)."""
        if isinstance(name, _RawConstant) or name.simple_name is None:
            return None
        if self._find_block_param(name.simple_name) is not None:
            return None
        return name.simple_name

    def _resolve(self, expression: _RawExpression) -> Expression:
        if isinstance(expression, _RawConstant):
            return Constant(expression.value)
        if isinstance(expression, _RawPath):
            return self._resolve_path(expression)
        name = self._helper_name(expression.name)
        if name is None or name not in _VALUE_HELPERS:
            raise self._unknown_helper(expression, in_subexpression=True)
        return self._helper_call(name, expression)

    def _resolve_path(self, path: _RawPath) -> Expression:
        if path.is_data:
            if not path.parts or path.parts[0] not in _DATA_VARIABLES:
                raise self._locator.error(
                    path.offset,
                    f"unknown data variable '{path.original}'; use @root, @index, @key, @first or @last",
                )
            return DataVariable(path.depth, path.parts[0], path.parts[1:])
        if not path.scoped and path.parts:
            found = self._find_block_param(path.parts[0])
            if found is not None:
                frame, position = found
                return BlockParam(frame, position, path.parts[1:])
        return ContextPath(path.depth, path.parts)

    def _find_block_param(self, name: str) -> tuple[int, int] | None:
        frame = 0
        for declared in reversed(self._block_params):
            if not declared:
                continue
            if name in declared:
                return frame, declared.index(name)
            frame += 1
        return None


def _close_name(token: _TagToken) -> str:
    assert token.call is not None
    return token.call.name.original


def _constant_as_key(constant: _RawConstant) -> str:
    key = _key_text(constant.value)
    return constant.original if key is None else key  # null and undefined


# --------------------------------------------------------------------------------------------
# Values: JSON-like data seen through JavaScript eyes
# --------------------------------------------------------------------------------------------
# Every check goes through type(value), so no attribute of a data object (not even __class__)
# is ever read.


def _is_mapping(value: object) -> TypeGuard[Mapping[object, object]]:
    return issubclass(type(value), Mapping)


def _is_array(value: object) -> TypeGuard[Sequence[object]]:
    return issubclass(type(value), (list, tuple))


def _is_string(value: object) -> TypeGuard[str]:
    return issubclass(type(value), str)


def _is_bool(value: object) -> TypeGuard[bool]:
    return issubclass(type(value), bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return issubclass(type(value), (int, float)) and not _is_bool(value)


def _is_float(value: object) -> TypeGuard[float]:
    return issubclass(type(value), float)


def _is_int(value: object) -> TypeGuard[int]:
    return issubclass(type(value), int) and not _is_bool(value)


def _is_json(value: object) -> bool:
    """Whether ``value`` is one of the JSON-like types (its items are not checked)."""
    return value is None or issubclass(type(value), (str, int, float, list, tuple, Mapping))


def _not_json_error(value: object) -> TemplateRenderError:
    return TemplateRenderError(
        f"cannot render a value of type {type(value).__name__}; template data must be JSON values "
        "(dict, list, str, int, float, bool or None)"
    )


_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_LARGEST_ARRAY_INDEX: Final = 2**32 - 2


def _child(value: object, key: str) -> object:
    """``value[key]`` for a Mapping, or for a list when ``key`` is an array index; else None."""
    if _is_mapping(value):
        return value.get(key)
    if _is_array(value) and _ARRAY_INDEX.fullmatch(key):
        index = int(key)
        return value[index] if index < len(value) else None
    return None


def _descend(value: object, keys: tuple[str, ...]) -> object:
    for key in keys:
        if value is None:
            return None
        value = _child(value, key)
    return value


def _js_truthy(value: object) -> bool:
    """JavaScript truthiness: false, 0, NaN, "", null and undefined are falsy."""
    if value is None:
        return False
    if _is_bool(value):
        return bool.__bool__(value)
    if _is_float(value):
        return not (value == 0 or math.isnan(value))
    if _is_number(value):
        return value != 0
    if _is_string(value):
        return len(value) > 0
    return True


def _is_empty(value: object) -> bool:
    """Handlebars ``isEmpty``: falsy but not zero, or an empty list."""
    if _is_array(value):
        return len(value) == 0
    return not _js_truthy(value) and not (_is_number(value) and value == 0)


def _condition_holds(value: object, include_zero: bool) -> bool:
    """The ``#if`` test: truthy and not an empty list; 0 counts as true with includeZero=true."""
    if not include_zero and not _js_truthy(value):
        return False
    return not _is_empty(value)


def _js_object_keys(mapping: Mapping[object, object]) -> list[object]:
    """Keys in ``Object.keys`` order: array-index keys ascending, then the rest as inserted."""
    index_keys: list[str] = []
    other_keys: list[object] = []
    for key in mapping:
        if _is_string(key) and _ARRAY_INDEX.fullmatch(key) and int(key) <= _LARGEST_ARRAY_INDEX:
            index_keys.append(key)
        else:
            other_keys.append(key)
    index_keys.sort(key=int)
    return [*index_keys, *other_keys]


def _format_number(number: float) -> str:
    """``Number.prototype.toString``: 1.0 -> "1", 1e21 -> "1e+21", 1e-7 -> "1e-7"."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr() gives the shortest digits that round-trip, as JavaScript does.
    _, digit_tuple, exponent = Decimal(float.__repr__(abs(number))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(str(digit) for digit in digit_tuple)
    count = len(digits)
    point = exponent + count  # the value is 0.<digits> * 10**point
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    power = point - 1
    mantissa = digits[0] + ("." + digits[1:] if count > 1 else "")
    return f"{sign}{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def _key_text(key: object) -> str | None:
    """The property name JavaScript would use for a ``lookup`` key, or None if there is none."""
    if _is_string(key):
        return str.__str__(key)
    if _is_bool(key):
        return "true" if key else "false"
    if _is_float(key):
        return _format_number(float.__float__(key))
    if _is_number(key):
        return int.__repr__(key)
    return None


_HTML_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&#x27;",
        "`": "&#x60;",
        "=": "&#x3D;",
    }
)


# --------------------------------------------------------------------------------------------
# Dates: timestamps in, text out through a fixed set of directives
# --------------------------------------------------------------------------------------------
# Formatting is done here, not by strftime, so the output never depends on the platform or the
# process locale, and no directive outside the documented set can be reached.

_MAX_DATE_FORMAT_CHARS: Final = 200
_MAX_TIMESTAMP_CHARS: Final = 64

# 2026-11-23, 2026-11-23T10:00, 2026-11-23T10:00:00.123456789+02:00, 2026-11-23 10:00:00Z
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r"([Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_EPOCH_SECOND: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
_LAST_EPOCH_SECOND: Final = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)

_MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _utc_offset(moment: datetime, separator: str) -> str:
    """``+0200`` (or ``+02:00`` with ``separator=":"``) for a moment two hours ahead of UTC."""
    offset = moment.utcoffset() or timedelta(0)
    minutes = offset // timedelta(minutes=1)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{separator}{minutes:02d}"


def _zone_name(moment: datetime) -> str:
    return "UTC" if not moment.utcoffset() else "UTC" + _utc_offset(moment, ":")


def _rfc3339_offset(moment: datetime) -> str:
    return "Z" if not moment.utcoffset() else _utc_offset(moment, ":")


# Number directives: the number and its width with leading zeros (dropped by %-d and the like).
_NUMBER_DIRECTIVES: Final[Mapping[str, tuple[Callable[[datetime], int], int]]] = {
    "Y": (lambda moment: moment.year, 4),
    "y": (lambda moment: moment.year % 100, 2),
    "m": (lambda moment: moment.month, 2),
    "d": (lambda moment: moment.day, 2),
    "j": (lambda moment: moment.timetuple().tm_yday, 3),
    "H": (lambda moment: moment.hour, 2),
    "I": (lambda moment: moment.hour % 12 or 12, 2),
    "M": (lambda moment: moment.minute, 2),
    "S": (lambda moment: moment.second, 2),
}
_TEXT_DIRECTIVES: Final[Mapping[str, Callable[[datetime], str]]] = {
    "B": lambda moment: _MONTHS[moment.month - 1],
    "b": lambda moment: _MONTHS[moment.month - 1][:3],
    "A": lambda moment: _WEEKDAYS[moment.weekday()],
    "a": lambda moment: _WEEKDAYS[moment.weekday()][:3],
    "p": lambda moment: "AM" if moment.hour < 12 else "PM",
    "Z": _zone_name,
    "z": lambda moment: _utc_offset(moment, ""),
}
_DIRECTIVE_LIST: Final = "%Y %y %m %d %j %H %I %M %S %B %b %A %a %p %Z %z %%"
_DIRECTIVE = re.compile(r"%(-?)(.?)", re.DOTALL)
# Not a directive tenants can write: only the default format uses it, for "Z" or "+02:00".
_RFC3339_OFFSET_FIELD: Final = DateField("RFC 3339 offset", padded=True)


class _DateFormatError(Exception):
    """A date format that is too long or uses something other than the documented directives."""


def _parse_date_format(text: str) -> DatePattern:
    """Split a date format into literal text and fields; raise _DateFormatError if it is invalid."""
    if len(text) > _MAX_DATE_FORMAT_CHARS:
        raise _DateFormatError(
            f"the format is {len(text)} characters long; the maximum is {_MAX_DATE_FORMAT_CHARS}"
        )
    pieces: list[str | DateField] = []
    literal: list[str] = []
    position = 0
    while (percent := text.find("%", position)) != -1:
        literal.append(text[position:percent])
        directive = _DIRECTIVE.match(text, percent)
        assert directive is not None  # the pattern matches any '%'
        unpadded, name = directive.groups()
        position = directive.end()
        if name == "%" and not unpadded:
            literal.append("%")
        elif name in _NUMBER_DIRECTIVES or (name in _TEXT_DIRECTIVES and not unpadded):
            pieces.append("".join(literal))
            literal.clear()
            pieces.append(DateField(name, padded=not unpadded))
        else:
            raise _DateFormatError(_directive_problem(directive.group(), name))
    pieces.append("".join(literal) + text[position:])
    return DatePattern(tuple(piece for piece in pieces if piece != ""))


def _directive_problem(written: str, name: str) -> str:
    if not name:
        return f"'{written}' at the end of the format is incomplete; write %% for a percent sign"
    if name in _TEXT_DIRECTIVES or name == "%":
        return f"'{written}': '-' only goes with a number directive, as in %-d"
    return f"unsupported directive {written!r}; use {_DIRECTIVE_LIST}"


_DEFAULT_DATE_PATTERN: Final = DatePattern(
    (
        *_parse_date_format("%Y-%m-%dT%H:%M:%S").pieces,
        _RFC3339_OFFSET_FIELD,
    )
)


def _format_moment(pattern: DatePattern, moment: datetime) -> str:
    parts: list[str] = []
    for piece in pattern.pieces:
        if isinstance(piece, str):
            parts.append(piece)
        elif piece == _RFC3339_OFFSET_FIELD:
            parts.append(_rfc3339_offset(moment))
        elif piece.directive in _NUMBER_DIRECTIVES:
            number_of, width = _NUMBER_DIRECTIVES[piece.directive]
            number = number_of(moment)
            parts.append(f"{number:0{width}d}" if piece.padded else str(number))
        else:
            parts.append(_TEXT_DIRECTIVES[piece.directive](moment))
    return "".join(parts)


def _timestamp(value: object) -> datetime | None:
    """The moment a JSON value names, or None when it is not a timestamp.

    A string must be RFC 3339 / ISO 8601 (see ``_TIMESTAMP``); a number counts seconds since
    the Unix epoch. Booleans, null, lists and objects are not timestamps.
    """
    if _is_string(value):
        return _parse_timestamp(str.__str__(value))
    seconds: float
    if _is_float(value):
        seconds = float.__float__(value)
    elif _is_int(value):
        seconds = int.__int__(value)
    else:
        return None
    if not _FIRST_EPOCH_SECOND <= seconds <= _LAST_EPOCH_SECOND:  # also false for NaN
        return None
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError:  # a float just below the last second, rounded up to a microsecond
        return None


def _parse_timestamp(text: str) -> datetime | None:
    match = _TIMESTAMP.fullmatch(text) if len(text) <= _MAX_TIMESTAMP_CHARS else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    zone = _parse_utc_offset(offset)
    if zone is None:
        return None
    microsecond = int((fraction or "")[:6].ljust(6, "0"))
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            microsecond,
            tzinfo=zone,
        )
    except ValueError:  # a field out of range: year 0, February 30, 24:00, a leap second
        return None


def _parse_utc_offset(text: str | None) -> timezone | None:
    """The zone of ``Z``, ``+02:00``, ``-0530`` or ``+05``; UTC when there is none; None if invalid."""
    if text is None or text in ("Z", "z"):
        return UTC
    hours = int(text[1:3])
    minutes = int(text[-2:]) if len(text) > 3 else 0
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    if not offset:
        return UTC
    return timezone(-offset if text.startswith("-") else offset)


# --------------------------------------------------------------------------------------------
# Interpreter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DataFrame:
    """The ``@`` variables of one ``#each`` iteration (or of the root), linked to the outer ones."""

    variables: Mapping[str, object]
    parent: _DataFrame | None

    def get(self, name: str) -> object:
        frame: _DataFrame | None = self
        while frame is not None:
            if name in frame.variables:
                return frame.variables[name]
            frame = frame.parent
        return None


@dataclass(frozen=True, slots=True)
class _BlockParamFrame:
    """Values of one ``as |...|`` declaration, linked to the enclosing declarations."""

    values: tuple[object, ...]
    parent: _BlockParamFrame | None


@dataclass(frozen=True, slots=True)
class _Scope:
    """Where expressions are evaluated: ``this``, the enclosing contexts (``../``), data, params."""

    this: object
    parent: _Scope | None
    data: _DataFrame
    block_params: _BlockParamFrame | None

    def enter(self, this: object, data: _DataFrame, block_params: tuple[object, ...] | None) -> _Scope:
        params = self.block_params
        if block_params is not None:
            params = _BlockParamFrame(block_params, params)
        return _Scope(this, self, data, params)


class _Renderer:
    """Renders one AST once. Holds the per-render state: output so far and the step count."""

    def __init__(self, limits: RenderLimits, escape_html: bool = True) -> None:
        self._limits = limits
        self._escape_html = escape_html
        self._chunks: list[str] = []
        self._length = 0
        self._steps = 0

    def render(self, body: Body, root: Mapping[str, object]) -> str:
        scope = _Scope(root, None, _DataFrame({"root": root}, None), None)
        self._render_body(body, scope)
        return "".join(self._chunks)

    # -- nodes ----------------------------------------------------------------------------

    def _render_body(self, body: Body, scope: _Scope) -> None:
        for node in body:
            self._count_step()
            if isinstance(node, Text):
                self._emit(node.text)
            elif isinstance(node, Output):
                self._render_output(node, scope)
            else:
                self._render_block(node, scope)

    def _render_output(self, node: Output, scope: _Scope) -> None:
        text = self._to_text(self._evaluate(node.expression, scope), depth=0)
        self._ensure_room(len(text))
        self._emit(text.translate(_HTML_ESCAPES) if node.escape and self._escape_html else text)

    def _render_block(self, block: Block, scope: _Scope) -> None:
        for branch in block.branches:
            if self._render_branch(branch, scope):
                return
        self._render_body(block.otherwise, scope)

    def _render_branch(self, branch: Branch, scope: _Scope) -> bool:
        """Render ``branch`` if it applies; return False to pass on to the next branch."""
        if isinstance(branch, ConditionBranch):
            include_zero = branch.include_zero is not None and _js_truthy(
                self._evaluate(branch.include_zero, scope)
            )
            holds = _condition_holds(self._evaluate(branch.condition, scope), include_zero)
            if holds == branch.negated:
                return False
            self._render_body(branch.body, scope)
            return True
        if isinstance(branch, EachBranch):
            return self._render_each(branch, scope)
        subject = self._evaluate(branch.subject, scope)
        if _is_empty(subject):
            return False
        params = (subject,) if branch.declares_block_params else None
        self._render_body(branch.body, scope.enter(subject, scope.data, params))
        return True

    def _render_each(self, branch: EachBranch, scope: _Scope) -> bool:
        collection = self._evaluate(branch.collection, scope)
        entries: Iterator[tuple[object, object]]
        if _is_array(collection):
            count = len(collection)
            entries = enumerate(collection)
        elif _is_mapping(collection):
            keys = _js_object_keys(collection)
            count = len(keys)
            entries = ((key, collection[key]) for key in keys)
        else:
            return False
        if count == 0:
            return False
        for index, (key, item) in enumerate(entries):
            self._count_step()
            variables = {"index": index, "key": key, "first": index == 0, "last": index == count - 1}
            params = (item, key) if branch.declares_block_params else None
            self._render_body(branch.body, scope.enter(item, _DataFrame(variables, scope.data), params))
        return True

    # -- expressions ----------------------------------------------------------------------

    def _evaluate(self, expression: Expression, scope: _Scope) -> object:
        if isinstance(expression, ContextPath):
            target: _Scope | None = scope
            for _ in range(expression.depth):
                target = target.parent if target is not None else None
            return None if target is None else _descend(target.this, expression.keys)
        if isinstance(expression, DataVariable):
            frame: _DataFrame | None = scope.data
            for _ in range(expression.depth):
                frame = frame.parent if frame is not None else None
            return None if frame is None else _descend(frame.get(expression.name), expression.keys)
        if isinstance(expression, BlockParam):
            params = scope.block_params
            for _ in range(expression.frame):
                params = params.parent if params is not None else None
            if params is None or expression.position >= len(params.values):
                return None
            return _descend(params.values[expression.position], expression.keys)
        if isinstance(expression, Constant):
            return expression.value
        self._count_step()  # every helper call is a step
        if isinstance(expression, Lookup):
            target_value = self._evaluate(expression.target, scope)
            key = _key_text(self._evaluate(expression.key, scope))
            return None if key is None else _child(target_value, key)
        if isinstance(expression, Default):
            value = self._evaluate(expression.value, scope)
            if value is None or (_is_string(value) and str.__len__(value) == 0):
                return self._evaluate(expression.fallback, scope)
            return value
        if isinstance(expression, ChangeCase):
            return self._change_case(expression, scope)
        return self._format_date(expression, scope)

    # -- value helpers --------------------------------------------------------------------

    def _change_case(self, call: ChangeCase, scope: _Scope) -> str:
        name = "upper" if call.upper else "lower"
        text = self._to_text(self._evaluate(call.value, scope), depth=0)
        self._check_helper_result(name, text)
        changed = str.upper(text) if call.upper else str.lower(text)
        self._check_helper_result(name, changed)  # "ß".upper() is "SS": the text can grow
        return changed

    def _format_date(self, call: FormatDate, scope: _Scope) -> str:
        value = self._evaluate(call.value, scope)
        pattern = (
            call.pattern if isinstance(call.pattern, DatePattern) else self._date_pattern(call.pattern, scope)
        )
        if not _is_json(value):
            raise _not_json_error(value)
        moment = _timestamp(value)
        return "" if moment is None else _format_moment(pattern, moment)

    def _date_pattern(self, expression: Expression, scope: _Scope) -> DatePattern:
        """Check a date format computed from the data; null or missing means the default format."""
        written = self._evaluate(expression, scope)
        if written is None:
            return _DEFAULT_DATE_PATTERN
        if not _is_string(written):
            raise TemplateRenderError("the format of date must be a string")
        try:
            return _parse_date_format(str.__str__(written))
        except _DateFormatError as error:
            raise TemplateRenderError(f"invalid date format: {error}") from None

    def _check_helper_result(self, name: str, text: str) -> None:
        if len(text) > self._limits.max_output_chars:
            raise TemplateRenderError(
                f"the text of {name} is longer than the output limit of "
                f"{self._limits.max_output_chars} characters"
            )

    # -- output ---------------------------------------------------------------------------

    def _to_text(self, value: object, depth: int) -> str:
        """The text JavaScript's ``String(value)`` gives, for JSON-like values."""
        if value is None:
            return ""
        if _is_string(value):
            return str.__str__(value)
        if _is_bool(value):
            return "true" if value else "false"
        if _is_float(value):
            return _format_number(float.__float__(value))
        if _is_number(value):
            try:
                return int.__repr__(value)
            except ValueError:  # more digits than int -> str allows
                raise TemplateRenderError("a number in the data is too large to render") from None
        if _is_array(value):
            return self._array_to_text(value, depth + 1)
        if _is_mapping(value):
            return "[object Object]"
        raise _not_json_error(value)

    def _array_to_text(self, items: Sequence[object], depth: int) -> str:
        """``Array.prototype.toString``: the items joined with commas, null items as ""."""
        if depth > _MAX_VALUE_DEPTH:
            raise TemplateRenderError(
                f"a list in the data is nested more than {_MAX_VALUE_DEPTH} levels deep"
            )
        parts: list[str] = []
        length = 0
        for item in items:
            self._count_step()
            part = self._to_text(item, depth)
            length += len(part) + 1
            self._ensure_room(length - 1)
            parts.append(part)
        return ",".join(parts)

    def _emit(self, text: str) -> None:
        self._ensure_room(len(text))
        self._chunks.append(text)
        self._length += len(text)

    def _ensure_room(self, size: int) -> None:
        if self._length + size > self._limits.max_output_chars:
            raise TemplateRenderError(
                f"rendered output is longer than the limit of {self._limits.max_output_chars} characters"
            )

    def _count_step(self) -> None:
        self._steps += 1
        if self._steps > self._limits.max_steps:
            raise TemplateRenderError(
                f"rendering took more than {self._limits.max_steps} steps; "
                "the template loops over too much data"
            )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A compiled template. ``Template(source)`` compiles it and raises TemplateSyntaxError.

    Instances are immutable and can be rendered concurrently from several threads or tasks.
    """

    source: str
    _body: Body = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_body", _compile(self.source))

    def render(
        self, context: Mapping[str, object], limits: RenderLimits | None = None, *, escape_html: bool = True
    ) -> str:
        """Render with ``context`` as the root data; raise TemplateRenderError if over ``limits``.

        ``escape_html=False`` renders ``{{value}}`` like ``{{{value}}}``: for text that is not
        HTML (an email's subject or plain-text body), where escaping would show as ``&amp;``.
        """
        return _Renderer(limits or RenderLimits(), escape_html).render(self._body, context)


def compile_template(source: str) -> Template:
    """Parse ``source`` once; raise TemplateSyntaxError (with line and column) if it is invalid."""
    return Template(source)


def render_template(
    source: str,
    context: Mapping[str, object],
    limits: RenderLimits | None = None,
    *,
    escape_html: bool = True,
) -> str:
    """Render ``source`` with ``context``; the compiled form of a source is reused across calls."""
    return _compiled(source).render(context, limits, escape_html=escape_html)


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    return Template(source)


def _compile(source: str) -> Body:
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        size = len(source.encode("utf-8", "surrogatepass"))
        raise TemplateSyntaxError(
            f"template is {size} bytes; the maximum is {MAX_SOURCE_BYTES} bytes (64 KiB)", 1, 1
        )
    locator = _Locator(source)
    tokens = _Scanner(source, locator).scan()
    _apply_whitespace_control(tokens)
    return _Parser(tokens, locator).parse()
