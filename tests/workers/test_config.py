"""The configuration model: Lambda's names, ranges and defaults; every error at once, with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.config import parse_config
from broker.errors import ConfigError
from broker.mapping import EventSourceMapping

QUEUE = "arn:aws:sqs:us-east-1:123456789012:uploads"


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(document)
    return error.value.problems


def test_defaults_are_lambdas() -> None:
    config = parse_config({"Functions": [{"FunctionName": "f", "Handler": "app.handler"}]})
    function = config.functions[0]
    assert (function.timeout, function.memory_size, function.reserved_concurrent_executions) == (3, 128, None)
    assert function.event_invoke_config.maximum_retry_attempts == 2
    assert function.event_invoke_config.maximum_event_age_in_seconds == 21600
    assert function.module_and_attribute == ("app", "handler")


@pytest.mark.parametrize(
    ("handler", "expected"),
    [("pkg.mod.fn", ("pkg.mod", "fn")), ("pkg.mod:fn", ("pkg.mod", "fn")), ("pkg/mod.fn", ("pkg.mod", "fn"))],
)
def test_handler_forms(handler: str, expected: tuple[str, str]) -> None:
    config = parse_config({"Functions": [{"FunctionName": "f", "Handler": handler}]})
    assert config.functions[0].module_and_attribute == expected


def test_every_error_is_reported_at_once_with_its_path_and_value() -> None:
    found = problems(
        {
            "Functions": [
                {"FunctionName": "ok", "Handler": "app.handler", "Timeout": 901, "MemroySize": 256},
                {
                    "FunctionName": "bad name!",
                    "Handler": "nodots",
                    "EventInvokeConfig": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 59},
                },
            ],
            "EventSourceMappings": [{"FunctionName": "ok", "EventSourceArn": QUEUE, "BatchSize": 20000}],
        }
    )
    text = "\n".join(found)
    assert "Functions.0.Timeout: Input should be less than or equal to 900 (got 901)" in text
    assert "Functions.0.MemroySize: unknown key" in text
    assert "Functions.1.FunctionName:" in text
    assert "'bad name!'" in text
    assert "Functions.1.Handler: Value error, must be 'package.module.function'" in text
    assert "Functions.1.EventInvokeConfig.MaximumRetryAttempts: Input should be less than or equal to 2 (got 3)" in text
    assert (
        "Functions.1.EventInvokeConfig.MaximumEventAgeInSeconds: Input should be greater than or equal to 60 (got 59)"
        in text
    )
    assert "EventSourceMappings.0.BatchSize: Input should be less than or equal to 10000 (got 20000)" in text
    assert len(found) == 7


def test_cross_references_are_checked() -> None:
    assert (
        "is not one of the Functions"
        in problems(
            {
                "Functions": [{"FunctionName": "f", "Handler": "a.b"}],
                "EventSourceMappings": [{"FunctionName": "g", "EventSourceArn": QUEUE}],
            }
        )[0]
    )
    assert (
        "names an unknown function"
        in problems(
            {
                "Functions": [
                    {
                        "FunctionName": "f",
                        "Handler": "a.b",
                        "EventInvokeConfig": {
                            "DestinationConfig": {
                                "OnFailure": {"Destination": "arn:aws:lambda:us-east-1:1:function:nope"}
                            }
                        },
                    }
                ]
            }
        )[0]
    )
    assert (
        "FunctionName must be unique"
        in problems({"Functions": [{"FunctionName": "f", "Handler": "a.b"}, {"FunctionName": "f", "Handler": "a.c"}]})[
            0
        ]
    )


def test_an_unknown_destination_form_names_the_accepted_ones() -> None:
    [problem] = problems(
        {"Functions": [{"FunctionName": "f", "Handler": "a.b", "DeadLetterConfig": {"TargetArn": "ftp://x"}}]}
    )
    assert "Functions.0.DeadLetterConfig.TargetArn" in problem
    assert "SQS queue ARN" in problem
    assert "redis-stream://KEY" in problem


def mapping(**fields: Any) -> EventSourceMapping:
    document: dict[str, Any] = {
        "Functions": [{"FunctionName": "f", "Handler": "a.b"}],
        "EventSourceMappings": [{"FunctionName": "f", **fields}],
    }
    return parse_config(document).event_source_mappings[0]


def test_mapping_defaults_follow_the_source() -> None:
    sqs = mapping(EventSourceArn=QUEUE)
    assert (sqs.source_kind, sqs.batch_size, sqs.maximum_batching_window_in_seconds) == ("sqs", 10, 0)
    kinesis = mapping(EventSourceArn="arn:aws:kinesis:us-east-1:123456789012:stream/s", StartingPosition="LATEST")
    assert (kinesis.source_kind, kinesis.batch_size, kinesis.maximum_retry_attempts) == ("kinesis", 100, -1)
    kafka = mapping(
        SelfManagedEventSource={"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["k:9092"]}},
        Topics=["orders"],
        StartingPosition="TRIM_HORIZON",
    )
    assert (kafka.source_kind, kafka.batch_size, kafka.maximum_batching_window_in_seconds) == ("kafka", 100, 0.5)
    ddb = mapping(
        EventSourceArn="arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000",
        StartingPosition="TRIM_HORIZON",
    )
    assert ddb.source_kind == "dynamodb"
    assert mapping(EventSourceArn=QUEUE).uuid == sqs.uuid  # stable across loads: same identity, same consumer group


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"EventSourceArn": QUEUE, "BatchSize": 11},
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10",
        ),
        (
            {"EventSourceArn": QUEUE + ".fifo", "BatchSize": 10, "MaximumBatchingWindowInSeconds": 1},
            "standard queues only",
        ),
        ({"EventSourceArn": QUEUE, "StartingPosition": "LATEST"}, "StartingPosition does not apply to SQS"),
        ({"EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s"}, "StartingPosition is required"),
        (
            {
                "EventSourceArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
                "StartingPosition": "AT_TIMESTAMP",
            },
            "StartingPosition must be one of TRIM_HORIZON | LATEST",
        ),
        (
            {
                "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
                "StartingPosition": "LATEST",
                "MaximumRecordAgeInSeconds": 30,
            },
            "must be -1 (infinite) or between 60 and 604800",
        ),
        (
            {
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["k:9092"]}},
                "StartingPosition": "LATEST",
            },
            "Topics is required",
        ),
        ({"EventSourceArn": "arn:aws:s3:::bucket"}, "is not a supported event source"),
        ({"EventSourceArn": QUEUE, "ScalingConfig": {"MaximumConcurrency": 1}}, "greater than or equal to 2"),
    ],
)
def test_mapping_rules(fields: dict[str, Any], message: str) -> None:
    document = {
        "Functions": [{"FunctionName": "f", "Handler": "a.b"}],
        "EventSourceMappings": [{"FunctionName": "f", **fields}],
    }
    assert message in "\n".join(problems(document))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "broker.cli", "validate", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_headwater_validate_prints_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("Functions:\n  - FunctionName: f\n    Handler: a.b\n    Timeout: 0\n    Bogus: 1\n")
    done = validate(path)
    assert done.returncode == 2
    assert "2 error(s)" in done.stderr
    assert "Functions.0.Timeout" in done.stderr
    assert "Functions.0.Bogus: unknown key" in done.stderr
    path.write_text("Functions: [\n")
    done = validate(path)
    assert done.returncode == 2
    assert "not valid YAML" in done.stderr
    assert "line" in done.stderr
