"""Asynchronous invocation as Lambda does it: retries, dead-letter queue, destinations, discards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.workers.conftest import Stack

ACCOUNT = "123456789012"


def sqs_queue(name: str) -> tuple[Any, str, str]:
    client = boto3.client("sqs", region_name="us-east-1")
    url = client.create_queue(QueueName=name)["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return client, url, arn


def receive_all(client: Any, url: str, expected: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        answer = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        messages.extend(answer.get("Messages", []))
    assert len(messages) == expected, f"expected {expected} message(s) on {url}, got {len(messages)}"
    return messages


def test_failing_event_is_tried_three_times_then_dead_lettered_and_recorded(
    aws_env: dict[str, str], make_stack: Callable[..., Stack]
) -> None:
    sqs, dlq_url, dlq_arn = sqs_queue("orders-dlq")
    _, failed_url, failed_arn = sqs_queue("orders-failed")
    stack = make_stack(
        [
            {
                "FunctionName": "orders",
                "Handler": "tests.handlers.core.fail",
                "DeadLetterConfig": {"TargetArn": dlq_arn},
                "EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Destination": failed_arn}}},
            }
        ]
    )
    stack.start_pool()

    response = stack.client.invoke("orders", {"order": 7}, InvocationType.EVENT)
    assert response.status_code == 202

    [dead_letter] = receive_all(sqs, dlq_url, 1)
    assert json.loads(dead_letter["Body"]) == {"order": 7}
    attributes = dead_letter["MessageAttributes"]
    assert attributes["RequestID"] == {"DataType": "String", "StringValue": response.request_id}
    assert attributes["ErrorCode"] == {"DataType": "Number", "StringValue": "200"}
    assert attributes["ErrorMessage"]["StringValue"] == "boom on {'order': 7}"

    [failure] = receive_all(sqs, failed_url, 1)
    record = json.loads(failure["Body"])
    assert list(record) == [
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    ]
    assert record["requestContext"] == {
        "requestId": response.request_id,
        "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:orders:$LATEST",
        "condition": "RetriesExhausted",
        "approximateInvokeCount": 3,
    }
    assert record["requestPayload"] == {"order": 7}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert record["timestamp"].endswith("Z")
    assert len(record["timestamp"]) == 24
    assert len(stack.noted()) == 3  # exactly three attempts, no more


def test_success_yields_an_on_success_record(aws_env: dict[str, str], make_stack: Callable[..., Stack]) -> None:
    sqs, url, _ = sqs_queue("orders-ok")
    stack = make_stack(
        [
            {
                "FunctionName": "orders",
                "Handler": "tests.handlers.core.record",
                "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": url}}},
            }
        ]
    )
    stack.start_pool()
    response = stack.client.invoke("orders", {"order": 8}, InvocationType.EVENT)
    [message] = receive_all(sqs, url, 1)
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestContext"]["requestId"] == response.request_id
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"echo": {"order": 8}}


def test_zero_reserved_concurrency_discards_at_once_without_running(
    aws_env: dict[str, str], make_stack: Callable[..., Stack]
) -> None:
    sqs, url, arn = sqs_queue("throttled-failed")
    stack = make_stack(
        [
            {
                "FunctionName": "off",
                "Handler": "tests.handlers.core.record",
                "ReservedConcurrentExecutions": 0,
                "EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Destination": arn}}},
            }
        ]
    )
    stack.start_pool()
    stack.client.invoke("off", {"n": 1}, InvocationType.EVENT)
    [message] = receive_all(sqs, url, 1)
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "ZeroReservedConcurrency"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    assert "responsePayload" not in record
    assert stack.noted() == []


def test_an_event_older_than_its_maximum_age_is_discarded(
    aws_env: dict[str, str], make_stack: Callable[..., Stack]
) -> None:
    sqs, url, arn = sqs_queue("aged-failed")
    stack = make_stack(
        [
            {
                "FunctionName": "aged",
                "Handler": "tests.handlers.core.record",
                "EventInvokeConfig": {
                    "MaximumEventAgeInSeconds": 60,
                    "DestinationConfig": {"OnFailure": {"Destination": arn}},
                },
            }
        ]
    )
    # An event accepted 61 s ago (it waited behind a backlog or a throttle), now reaching a worker.
    InvocationQueue(stack.redis).enqueue(
        Invocation("aged", '{"late": true}', InvocationType.EVENT, trigger="async", accepted_at=time.time() - 61)
    )
    stack.start_pool()
    [message] = receive_all(sqs, url, 1)
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert stack.noted() == []


def test_a_function_destination_receives_the_record_as_its_event(
    redis_url: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "source",
                "Handler": "tests.handlers.core.fail",
                "EventInvokeConfig": {
                    "MaximumRetryAttempts": 0,
                    "DestinationConfig": {
                        "OnFailure": {"Destination": "arn:aws:lambda:us-east-1:000000000000:function:audit"}
                    },
                },
            },
            {"FunctionName": "audit", "Handler": "tests.handlers.core.record"},
        ]
    )
    stack.start_pool()
    response = stack.client.invoke("source", {"x": 1}, InvocationType.EVENT)
    stack.wait_for(lambda: len(stack.noted()) == 2)
    audit = stack.noted()[1]["event"]
    assert audit["requestContext"]["requestId"] == response.request_id
    assert audit["requestContext"]["condition"] == "RetriesExhausted"
    assert audit["requestContext"]["approximateInvokeCount"] == 1


def test_an_unreachable_destination_is_retried_and_the_record_is_not_lost(
    aws_env: dict[str, str], make_stack: Callable[..., Stack]
) -> None:
    missing_arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:created-later"
    stack = make_stack(
        [
            {
                "FunctionName": "orders",
                "Handler": "tests.handlers.core.record",
                "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": missing_arn}}},
            }
        ],
        {"DestinationRetryMaxSeconds": 1},
    )
    stack.start_pool()
    stack.client.invoke("orders", {"order": 9}, InvocationType.EVENT)
    stack.wait_for(lambda: "destination write failed" in stack.logs())
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="created-later")["QueueUrl"]
    [message] = receive_all(sqs, url, 1)
    assert json.loads(message["Body"])["requestPayload"] == {"order": 9}
    assert len(stack.noted()) == 1  # the handler ran once; only the delivery was retried


@pytest.mark.parametrize("retries", [0, 1])
def test_maximum_retry_attempts_bounds_the_attempts(
    redis_url: str, make_stack: Callable[..., Stack], retries: int
) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "f",
                "Handler": "tests.handlers.core.fail",
                "EventInvokeConfig": {
                    "MaximumRetryAttempts": retries,
                    "DestinationConfig": {"OnFailure": {"Destination": "redis-stream://failed"}},
                },
            }
        ]
    )
    stack.start_pool()
    stack.client.invoke("f", {}, InvocationType.EVENT)
    [(_, fields)] = stack.wait_for(lambda: stack.redis.xrange("failed"))
    assert json.loads(fields[b"body"])["requestContext"]["approximateInvokeCount"] == retries + 1
    assert len(stack.noted()) == retries + 1
