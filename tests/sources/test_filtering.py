"""FilterCriteria: the EventBridge pattern subset Lambda documents, on decoded record views."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.filtering import FilterCriteria, PatternError, compile_pattern, decode, decode_or_text
from broker.mapping import EventSourceMapping


def matches(pattern: dict[str, Any], body: str) -> bool:
    return FilterCriteria([json.dumps(pattern)]).matches({"body": decode_or_text(body)})


@pytest.mark.parametrize(
    ("pattern", "body", "expected"),
    [
        ({"body": {"a": ["x"]}}, '{"a": "x"}', True),
        ({"body": {"a": ["x"]}}, '{"a": "X"}', False),
        ({"body": {"a": ["x", "y"]}}, '{"a": "y"}', True),
        ({"body": {"a": [None]}}, '{"a": null}', True),
        ({"body": {"a": [None]}}, "{}", False),
        ({"body": {"a": [""]}}, '{"a": ""}', True),
        ({"body": {"n": [300]}}, '{"n": 300}', True),
        ({"body": {"n": [300]}}, '{"n": 300.0}', False),
        ({"body": {"n": [300]}}, '{"n": "300"}', False),
        ({"body": {"a": [{"prefix": "us-"}]}}, '{"a": "us-east-1"}', True),
        ({"body": {"a": [{"suffix": ".png"}]}}, '{"a": "cat.jpg"}', False),
        ({"body": {"a": [{"equals-ignore-case": "ann"}]}}, '{"a": "ANN"}', True),
        ({"body": {"a": [{"anything-but": ["x", "y"]}]}}, '{"a": "z"}', True),
        ({"body": {"a": [{"anything-but": "x"}]}}, '{"a": "x"}', False),
        ({"body": {"a": [{"anything-but": "x"}]}}, "{}", False),
        ({"body": {"a": [{"anything-but": {"prefix": "us-"}}]}}, '{"a": "eu-west-1"}', True),
        ({"body": {"n": [{"numeric": [">", 10, "<=", 20]}]}}, '{"n": 20}', True),
        ({"body": {"n": [{"numeric": [">", 10, "<=", 20]}]}}, '{"n": 10}', False),
        ({"body": {"n": [{"numeric": ["=", 5]}]}}, '{"n": 5.0}', True),
        ({"body": {"n": [{"numeric": [">", 0]}]}}, '{"n": "7"}', False),
        ({"body": {"a": [{"exists": True}]}}, '{"a": 1}', True),
        ({"body": {"a": [{"exists": False}]}}, '{"b": 1}', True),
        ({"body": {"a": [{"exists": True}]}}, '{"a": {"b": 1}}', False),
        ({"body": {"a": {"b": [{"exists": False}]}}}, "{}", True),
        ({"body": {"a": {"b": ["x"]}}}, '{"a": {"b": "x"}}', True),
        ({"body": {"tags": ["red"]}}, '{"tags": ["blue", "red"]}', True),
        ({"body": {"a": ["x"], "b": ["y"]}}, '{"a": "x", "b": "z"}', False),
        ({"body": {"$or": [{"a": ["x"]}, {"b": ["y"]}]}}, '{"b": "y"}', True),
        ({"body": {"$or": [{"a": ["x"]}, {"b": ["y"]}]}}, '{"a": "y"}', False),
        ({"body": ["plain text"]}, "plain text", True),
        ({"body": [{"prefix": "plain"}]}, "plain text", True),
        ({"body": {"a": ["x"]}}, "not json", False),
    ],
)
def test_one_pattern(pattern: dict[str, Any], body: str, expected: bool) -> None:
    assert matches(pattern, body) is expected


def test_filters_are_ored_and_none_means_everything() -> None:
    criteria = FilterCriteria([json.dumps({"body": {"a": ["x"]}}), json.dumps({"body": {"a": ["y"]}})])
    assert criteria.matches({"body": decode('{"a": "y"}')})
    assert not criteria.matches({"body": decode('{"a": "z"}')})
    assert FilterCriteria([]).matches({"body": "anything"})


def test_metadata_fields_match_too() -> None:
    criteria = FilterCriteria([json.dumps({"attributes": {"MessageGroupId": ["g1"]}})])
    assert criteria.matches({"attributes": {"MessageGroupId": "g1"}, "body": "x"})


@pytest.mark.parametrize(
    "pattern",
    [
        "not json",
        "[]",
        '{"body": "x"}',
        '{"body": []}',
        '{"body": [{"wildcard": "a*"}]}',
        '{"body": [{"numeric": [">"]}]}',
        '{"body": [{"exists": "yes"}]}',
        '{"$or": [{"a": ["x"]}]}',
        '{"body": [{"prefix": 1}]}',
    ],
)
def test_a_pattern_lambda_would_refuse_is_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_the_configuration_refuses_a_bad_pattern_when_loaded() -> None:
    document = {
        "FunctionName": "f",
        "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:q",
        "FilterCriteria": {"Filters": [{"Pattern": '{"body": [{"wildcard": "a*"}]}'}]},
    }
    with pytest.raises(ValueError, match="unsupported operator 'wildcard'"):
        EventSourceMapping.model_validate(document)
