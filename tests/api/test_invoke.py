"""Invoke through boto3 against a real `headwater api` and worker pool: every answer and error as
Lambda gives it, each error raised as boto3's own exception class."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.conftest import ApiStack

EVENT_LIMIT, SYNC_LIMIT = 1_048_576, 6_291_456


def _payload(answer: dict[str, Any]) -> Any:
    """The decoded JSON body boto3 hands back as a stream (botocore is untyped here: a raw dict at the edge)."""
    return json.loads(answer["Payload"].read())


def test_request_response_returns_the_result_with_lambdas_headers(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="echo", Payload=json.dumps({"order": 7}))
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in answer
    assert _payload(answer) == {"echo": {"order": 7}}
    request_id = answer["ResponseMetadata"]["RequestId"]
    assert any(call["request_id"] == request_id for call in api.noted()), "x-amzn-RequestId is aws_request_id"


def test_a_function_error_is_200_unhandled_with_lambdas_error_body(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="fail", Payload=b'{"n": 1}')
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    body = _payload(answer)
    assert body["errorType"] == "RuntimeError"
    assert body["errorMessage"] == "boom on {'n': 1}"


def test_a_timeout_is_sandbox_timedout(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="slow", Payload=b'{"seconds": 5}', LogType="Tail")
    assert answer["FunctionError"] == "Unhandled"
    assert _payload(answer)["errorType"] == "Sandbox.Timedout"
    log = base64.b64decode(answer["LogResult"]).decode()
    assert "Task timed out after 1.00 seconds" in log
    assert log.rstrip("\n").splitlines()[-1].startswith("REPORT RequestId: ")


def test_tail_returns_start_the_handlers_output_end_and_report(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="echo", Payload=b"{}", LogType="Tail")
    request_id = answer["ResponseMetadata"]["RequestId"]
    lines = base64.b64decode(answer["LogResult"]).decode().splitlines()
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert f"processing {request_id}" in lines  # print() output, as is
    assert any(line.startswith("[WARNING]\t") and line.endswith("\tlogged from the handler") for line in lines)
    assert lines[-2] == f"END RequestId: {request_id}"
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert "\tMemory Size: 128 MB\tMax Memory Used: " in lines[-1]
    assert "LogResult" not in api.client().invoke(FunctionName="echo", Payload=b"{}")


def test_tail_keeps_only_the_last_4_kb(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="fail", Payload=json.dumps({"pad": "x" * 10_000}), LogType="Tail")
    log = base64.b64decode(answer["LogResult"])
    assert len(log) <= 4096
    assert log.decode().rstrip("\n").splitlines()[-1].startswith("REPORT RequestId: ")


def test_event_is_202_and_runs(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"async": true}')
    assert answer["StatusCode"] == 202
    assert answer["Payload"].read() == b""
    request_id = answer["ResponseMetadata"]["RequestId"]
    deadline = time.monotonic() + 20
    while not any(call["request_id"] == request_id for call in api.noted()):
        assert time.monotonic() < deadline, f"the event never ran; logs:\n{api.logs()}"
        time.sleep(0.05)


def test_events_sent_together_are_each_stored_and_run_after_redis_lost_its_scripts(api: ApiStack) -> None:
    """Concurrent `Event`s share one Redis pipeline; a Redis that forgot its scripts (restarted, or
    SCRIPT FLUSH) answers that pipeline NOSCRIPT, which stored nothing: each is sent again, not refused."""
    api.redis.script_flush()
    client = api.client()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(
                lambda n: client.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"n": n})),
                range(16),
            )
        )
    assert [answer["StatusCode"] for answer in answers] == [202] * 16
    request_ids = {answer["ResponseMetadata"]["RequestId"] for answer in answers}
    deadline = time.monotonic() + 30
    while not request_ids <= {call["request_id"] for call in api.noted()}:
        assert time.monotonic() < deadline, f"not every event ran; logs:\n{api.logs()}"
        time.sleep(0.05)


def test_dry_run_is_204(api: ApiStack) -> None:
    answer = api.client().invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert answer["StatusCode"] == 204


def test_client_context_reaches_the_handler(api: ApiStack) -> None:
    context = base64.b64encode(json.dumps({"custom": {"tenant": "acme"}}).encode()).decode()
    answer = api.client().invoke(FunctionName="echo", ClientContext=context, Payload=b"{}")
    request_id = answer["ResponseMetadata"]["RequestId"]
    seen = next(call for call in api.noted() if call["request_id"] == request_id)
    assert seen["seen_context"]["client_context"] == {"tenant": "acme"}


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("echo", None),
        ("echo:$LATEST", None),
        ("echo", "$LATEST"),
        ("000000000000:function:echo", None),
        ("arn:aws:lambda:us-east-1:000000000000:function:echo", None),
        ("arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST", "$LATEST"),
    ],
)
def test_function_names_partial_arns_arns_and_latest(api: ApiStack, name: str, qualifier: str | None) -> None:
    extra = {"Qualifier": qualifier} if qualifier else {}
    answer = api.client().invoke(FunctionName=name, Payload=b'{"k": 1}', **extra)
    assert _payload(answer) == {"echo": {"k": 1}}


def test_unknown_function_version_or_alias_is_resource_not_found(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.invoke(FunctionName="nope")
    assert raised.value.response["Error"]["Message"] == (
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope:$LATEST"
    )
    assert raised.value.response["Type"] == "User"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="echo", Qualifier="prod")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="arn:aws:lambda:us-east-1:111111111111:function:echo")


def test_conflicting_qualifiers_are_invalid(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.InvalidParameterValueException) as raised:
        client.invoke(FunctionName="echo:$LATEST", Qualifier="prod")
    assert "derived qualifier" in raised.value.response["Error"]["Message"]


def test_payload_that_is_not_json_is_invalid_request_content(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.InvalidRequestContentException) as raised:
        client.invoke(FunctionName="echo", Payload=b"{not json")
    assert raised.value.response["Error"]["Message"].startswith("Could not parse request body into json")


def test_bad_client_context_is_invalid_request_content(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="echo", ClientContext="not base64 json!", Payload=b"{}")


def test_payload_limits_and_their_exact_errors(api: ApiStack) -> None:
    client = api.client()
    event = json.dumps({"pad": "x" * (EVENT_LIMIT - 10)})
    assert len(event) == EVENT_LIMIT + 1
    with pytest.raises(ClientError) as raised:
        client.invoke(FunctionName="echo", InvocationType="Event", Payload=event)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error["Error"]["Message"] == (
        f"{EVENT_LIMIT + 1} byte payload is too large for the Event invocation type (limit {EVENT_LIMIT} bytes)"
    )
    with pytest.raises(ClientError) as raised:
        client.invoke(FunctionName="echo", Payload=json.dumps({"pad": "x" * SYNC_LIMIT}))
    assert raised.value.response["Error"]["Message"] == (
        f"Request must be smaller than {SYNC_LIMIT} bytes for the InvokeFunction operation"
    )
    at_limit = json.dumps({"pad": "x" * (EVENT_LIMIT - 11)})
    assert client.invoke(FunctionName="echo", InvocationType="Event", Payload=at_limit)["StatusCode"] == 202


def test_reserved_concurrency_zero_is_a_throttle_with_lambdas_reason(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.TooManyRequestsException) as raised:
        client.invoke(FunctionName="closed", Payload=b"{}")
    assert raised.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert client.invoke(FunctionName="closed", InvocationType="Event")["StatusCode"] == 202  # discarded later


def test_invocation_and_log_types_outside_lambdas_enums_are_validation_errors(api: ApiStack) -> None:
    client = api.client()
    for arguments in ({"InvocationType": "Sometimes"}, {"LogType": "Everything"}):
        with pytest.raises(ClientError) as raised:
            client.invoke(FunctionName="echo", **arguments)
        assert raised.value.response["Error"]["Code"] == "ValidationException"
        assert raised.value.response["Error"]["Message"].startswith("1 validation error detected: ")


def test_every_answer_carries_a_request_id_and_is_counted(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.invoke(FunctionName="nope")
    assert len(raised.value.response["ResponseMetadata"]["RequestId"]) == 36
    assert 'headwater_api_requests_total{operation="Invoke",status="404"}' in api.metrics()
