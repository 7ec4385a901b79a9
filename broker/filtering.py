"""FilterCriteria: the subset of EventBridge event patterns Lambda applies to event source records.

A mapping keeps a record when **any** of its filters matches. A pattern is a JSON object whose
keys are matched against the record (a source decodes its data key first: SQS `body`, Kafka
`value`); inside one object every key must match (AND), an array lists alternatives (OR), and a
nested object descends into the record. Supported, as Lambda documents them: exact values
(strings, numbers, `null`, `""`), `prefix`, `suffix`, `equals-ignore-case`, `anything-but` (values,
or a `prefix`/`suffix`), `numeric` ranges, `exists` (leaf fields only) and `$or`. When a record's
field is an array, the field matches if any element does.

Numbers match exactly on their JSON text (300 is not 300.0), so JSON is decoded with `decode`,
which keeps each number's text. Patterns are compiled once: an unsupported or malformed pattern
is a configuration error, reported when the file is loaded rather than when a record arrives.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MISSING: Any = object()  # the value of a field the record does not have
Predicate = Callable[[Any], bool]
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class PatternError(ValueError):
    """A filter pattern Lambda would refuse; a ValueError, so the configuration model reports it."""


@dataclass(frozen=True, slots=True)
class Number:
    """A JSON number as written: `text` for exact matching, `value` for numeric ranges."""

    text: str
    value: float


def decode(text: str | bytes) -> Any:
    """Parse JSON keeping every number's text; raises ValueError when `text` is not JSON."""
    return json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_reject_constant)


def decode_or_text(text: str) -> Any:
    """A record's data as patterns see it: decoded JSON when it is JSON, else the raw string.

    JSON nested deeper than the interpreter's recursion limit (a hostile `[[[[...`) cannot be
    decoded: it is matched as its raw string, like any body that is not JSON, and the record
    still reaches the handler unchanged; it never stops the poller."""
    try:
        return decode(text)
    except (ValueError, RecursionError):
        return text


class FilterCriteria:
    """The compiled filters of one mapping; a record passes when any filter matches it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [compile_pattern(pattern) for pattern in patterns]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, view: dict[str, Any]) -> bool:
        return not self._patterns or any(pattern(view) for pattern in self._patterns)


def compile_pattern(text: str) -> Predicate:
    """Compile one pattern; PatternError names what is wrong with it."""
    try:
        pattern = decode(text)
    except ValueError as error:
        raise PatternError(f"filter pattern is not valid JSON: {error}") from None
    if not isinstance(pattern, dict) or not pattern:
        raise PatternError("filter pattern must be a non-empty JSON object")
    return _compile_object(pattern, "")


def _compile_object(pattern: dict[str, Any], path: str) -> Predicate:
    checks = [_compile_key(key, value, f"{path}{key}") for key, value in pattern.items()]
    return lambda record: all(check(record) for check in checks)


def _compile_key(key: str, value: Any, path: str) -> Predicate:
    if key == "$or":
        return _compile_or(value, path)
    if isinstance(value, dict):
        nested = _compile_object(value, f"{path}.")
        return lambda record: _descend(_field(record, key), nested)
    if isinstance(value, list) and value:
        leaf = _compile_leaf(value, path)
        return lambda record: leaf(_field(record, key))
    raise PatternError(f"{path}: a pattern value must be a non-empty array of matchers or an object")


def _compile_or(alternatives: Any, path: str) -> Predicate:
    if (
        not isinstance(alternatives, list)
        or len(alternatives) < 2
        or not all(isinstance(item, dict) and item for item in alternatives)
    ):
        raise PatternError(f"{path}: $or takes an array of at least two pattern objects")
    compiled = [_compile_object(item, path.removesuffix("$or")) for item in alternatives]
    return lambda record: any(alternative(record) for alternative in compiled)


def _field(record: Any, key: str) -> Any:
    return record.get(key, MISSING) if isinstance(record, dict) else MISSING


def _descend(value: Any, nested: Predicate) -> bool:
    """Match a nested pattern; a missing field is an empty object (so `exists: false` can hold)."""
    if isinstance(value, list):
        return any(nested(item) for item in value if isinstance(item, dict))
    return nested(value if isinstance(value, dict) else {})


def _compile_leaf(matchers: list[Any], path: str) -> Predicate:
    """Alternatives for one field. `exists` looks at the field; the others at each of its values."""
    on_field = [_compile_exists(m, path) for m in matchers if isinstance(m, dict) and "exists" in m]
    on_values = [_compile_matcher(m, path) for m in matchers if not (isinstance(m, dict) and "exists" in m)]

    def leaf(value: Any) -> bool:
        if any(check(value) for check in on_field):
            return True
        if value is MISSING:
            return False
        values = value if isinstance(value, list) else [value]
        return any(check(item) for item in values for check in on_values)

    return leaf


def _compile_exists(matcher: dict[str, Any], path: str) -> Predicate:
    wanted = matcher["exists"]
    if len(matcher) != 1 or not isinstance(wanted, bool):
        raise PatternError(f"{path}: exists takes true or false")
    return lambda value: (value is not MISSING and not isinstance(value, dict)) == wanted


def _compile_matcher(matcher: Any, path: str) -> Predicate:
    if not isinstance(matcher, dict):
        if isinstance(matcher, list):
            raise PatternError(f"{path}: nested arrays are not a matcher")
        return lambda value: _same(value, matcher)
    if len(matcher) != 1:
        raise PatternError(f"{path}: an operator object has exactly one key, got {sorted(matcher)}")
    ((name, argument),) = matcher.items()
    build = OPERATORS.get(name)
    if build is None:
        supported = ", ".join([*sorted(OPERATORS), "exists"])
        raise PatternError(f"{path}: unsupported operator {name!r} (supported: {supported})")
    return build(argument, f"{path}: {name}")


def _same(value: Any, literal: Any) -> bool:
    """Exact equality; numbers compare by JSON text, and booleans are never numbers."""
    if _is_number(literal) or _is_number(value):
        return _is_number(literal) and _is_number(value) and _number_text(value) == _number_text(literal)
    return type(value) is type(literal) and bool(value == literal)


def _string_operator(test: Callable[[str, str], bool]) -> Callable[[Any, str], Predicate]:
    def build(argument: Any, path: str) -> Predicate:
        if not isinstance(argument, str):
            raise PatternError(f"{path} takes a string")
        return lambda value: isinstance(value, str) and test(value, argument)

    return build


def _anything_but(argument: Any, path: str) -> Predicate:
    if isinstance(argument, dict):
        inner = _compile_matcher(argument, path)
        if set(argument) - {"prefix", "suffix", "equals-ignore-case"}:
            raise PatternError(f"{path} takes values, or an object with prefix, suffix or equals-ignore-case")
        return lambda value: not inner(value)
    excluded = argument if isinstance(argument, list) else [argument]
    if not excluded or any(isinstance(item, dict | list) for item in excluded):
        raise PatternError(f"{path} takes a value or a non-empty array of values")
    return lambda value: not any(_same(value, item) for item in excluded)


def _numeric(argument: Any, path: str) -> Predicate:
    if not isinstance(argument, list) or not argument or len(argument) % 2 or len(argument) > 4:
        raise PatternError(f'{path} takes one or two [operator, number] pairs, e.g. [">", 0, "<=", 5]')
    bounds: list[tuple[Callable[[float, float], bool], float]] = []
    for symbol, number in zip(argument[::2], argument[1::2], strict=True):
        if symbol not in COMPARISONS or not _is_number(number):
            raise PatternError(f"{path}: {symbol!r} {number!r} is not one of =, <, <=, >, >= then a number")
        bounds.append((COMPARISONS[symbol], _number_value(number)))

    def within(value: Any) -> bool:
        return _is_number(value) and all(test(_number_value(value), limit) for test, limit in bounds)

    return within


OPERATORS: dict[str, Callable[[Any, str], Predicate]] = {
    "prefix": _string_operator(str.startswith),
    "suffix": _string_operator(str.endswith),
    "equals-ignore-case": _string_operator(lambda value, wanted: value.casefold() == wanted.casefold()),
    "anything-but": _anything_but,
    "numeric": _numeric,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) or (isinstance(value, int | float) and not isinstance(value, bool))


def _number_text(value: Any) -> str:
    return value.text if isinstance(value, Number) else json.dumps(value)


def _number_value(value: Any) -> float:
    return value.value if isinstance(value, Number) else float(value)


def _number(text: str) -> Number:
    return Number(text, float(text))


def _reject_constant(name: str) -> Any:
    raise PatternError(f"{name} is not JSON")
