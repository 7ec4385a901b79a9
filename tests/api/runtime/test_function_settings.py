"""Reserved concurrency and EventInvokeConfig put through the API with boto3 and honoured by the
real workers: the API refuses at once, the workers within about a second."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from broker.client import Client
from broker.config import parse_config
from broker.errors import TooManyRequests
from broker.function_overrides import REFRESH_SECONDS
from tests.api.runtime.conftest import RuntimeStack, function_arn
from tests.waiting import eventually


def _python_client(runtime: RuntimeStack) -> Client:
    """The Python client checks only the file: what it is refused, the workers refused."""
    document = yaml.safe_load((runtime.api.directory / "headwater.yaml").read_text())
    return Client(parse_config(document), runtime.api.redis_url)


async def test_concurrency_zero_put_through_the_api_throttles_the_next_invocation(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    put = client.put_function_concurrency(FunctionName="echo", ReservedConcurrentExecutions=0)
    assert put["ReservedConcurrentExecutions"] == 0
    python = _python_client(runtime)
    try:
        with pytest.raises(client.exceptions.TooManyRequestsException) as raised:
            client.invoke(FunctionName="echo", Payload=b"{}")
        assert raised.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert client.get_function_concurrency(FunctionName="echo")["ReservedConcurrentExecutions"] == 0
        assert client.get_function(FunctionName="echo")["Concurrency"] == {"ReservedConcurrentExecutions": 0}

        def worker_throttles() -> bool:
            try:
                python.invoke("echo", {"probe": True}, timeout_seconds=10)
            except TooManyRequests:
                return True
            return False

        await eventually(worker_throttles, REFRESH_SECONDS + 3, runtime.api.logs)
    finally:
        client.delete_function_concurrency(FunctionName="echo")
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName="echo")
    assert "Concurrency" not in client.get_function(FunctionName="echo")

    def runs_again() -> bool:
        try:
            status: int = client.invoke(FunctionName="echo", Payload=b'{"again": 1}')["StatusCode"]
        except client.exceptions.TooManyRequestsException:  # a worker that has not looked again yet
            return False
        return status == 200

    await eventually(runs_again, REFRESH_SECONDS + 3, runtime.api.logs)
    python.redis.close()


async def test_an_event_invoke_config_change_applies_to_the_next_failure(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    destination = function_arn("echo")
    put = client.put_function_event_invoke_config(
        FunctionName="fail", MaximumRetryAttempts=0, DestinationConfig={"OnFailure": {"Destination": destination}}
    )
    assert put["FunctionArn"] == function_arn("fail") + ":$LATEST"
    assert put["MaximumRetryAttempts"] == 0
    assert put["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {"Destination": destination}}
    assert "MaximumEventAgeInSeconds" not in put
    try:
        await asyncio.sleep(REFRESH_SECONDS + 0.3)  # the bound under test: every worker applies a change within it
        marker = uuid.uuid4().hex
        assert (
            client.invoke(FunctionName="fail", InvocationType="Event", Payload=json.dumps({"m": marker}))["StatusCode"]
            == 202
        )
        record = await eventually(lambda: _failure_record(runtime, marker), 10, runtime.api.logs)
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["requestContext"]["approximateInvokeCount"] == 1
        runs = [call for call in runtime.api.noted() if call["event"] == {"m": marker}]
        assert len(runs) == 1  # the file's policy (two retries, 0.2 s apart) would have run it three times

        updated = client.update_function_event_invoke_config(FunctionName="fail", MaximumEventAgeInSeconds=120)
        assert (updated["MaximumRetryAttempts"], updated["MaximumEventAgeInSeconds"]) == (0, 120)
        assert (
            client.get_function_event_invoke_config(FunctionName="fail", Qualifier="$LATEST")[
                "MaximumEventAgeInSeconds"
            ]
            == 120
        )
        listed = client.list_function_event_invoke_configs(FunctionName="fail")["FunctionEventInvokeConfigs"]
        assert [config["MaximumRetryAttempts"] for config in listed] == [0]
    finally:
        client.delete_function_event_invoke_config(FunctionName="fail")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.get_function_event_invoke_config(FunctionName="fail")
    assert raised.value.response["Error"]["Message"] == (
        f"The function {function_arn('fail')}:$LATEST doesn't have an EventInvokeConfig"
    )
    assert client.list_function_event_invoke_configs(FunctionName="fail")["FunctionEventInvokeConfigs"] == []


def _failure_record(runtime: RuntimeStack, marker: str) -> dict[str, Any] | None:
    """The on-failure destination record (an Event invocation of `echo`) for the marked event."""
    for call in runtime.api.noted():
        event = call["event"]
        if isinstance(event, dict) and event.get("requestPayload") == {"m": marker}:
            return dict(event)
    return None


def test_the_files_values_are_shown_and_overridden_never_deleted(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    assert client.get_function_concurrency(FunctionName="filed")["ReservedConcurrentExecutions"] == 3
    assert client.get_function_event_invoke_config(FunctionName="filed")["MaximumRetryAttempts"] == 1
    with pytest.raises(client.exceptions.ResourceConflictException, match="configuration file"):
        client.delete_function_concurrency(FunctionName="filed")
    with pytest.raises(client.exceptions.ResourceConflictException, match="configuration file"):
        client.delete_function_event_invoke_config(FunctionName="filed")
    client.put_function_concurrency(FunctionName="filed", ReservedConcurrentExecutions=7)
    assert client.get_function_concurrency(FunctionName="filed")["ReservedConcurrentExecutions"] == 7
    client.delete_function_concurrency(FunctionName="filed")  # removes what the API put: the file's is back
    assert client.get_function_concurrency(FunctionName="filed")["ReservedConcurrentExecutions"] == 3


def test_refusals_are_lambdas_errors(runtime: RuntimeStack) -> None:
    client = runtime.api.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.put_function_concurrency(FunctionName="ghost", ReservedConcurrentExecutions=1)
    with pytest.raises(client.exceptions.InvalidParameterValueException, match="Aliases and versions"):
        client.put_function_concurrency(FunctionName="echo:$LATEST", ReservedConcurrentExecutions=1)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_event_invoke_config(FunctionName="echo", Qualifier="prod")
    with pytest.raises(ClientError) as raised:
        client.put_function_event_invoke_config(FunctionName="echo", MaximumRetryAttempts=5)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert raised.value.response["Error"]["Message"] == (
        "1 validation error detected: Value '5' at 'maximumRetryAttempts' failed to satisfy constraint: Member must "
        "have value less than or equal to 2"
    )
    with pytest.raises(client.exceptions.InvalidParameterValueException, match="does not define"):
        client.put_function_event_invoke_config(
            FunctionName="echo", DestinationConfig={"OnFailure": {"Destination": function_arn("ghost")}}
        )
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.update_function_event_invoke_config(FunctionName="echo", MaximumRetryAttempts=1)


def test_the_aws_cli_puts_and_deletes_concurrency(runtime: RuntimeStack) -> None:
    aws, client = runtime.api.aws, runtime.api.client()
    put = aws("put-function-concurrency", "--function-name", "echo", "--reserved-concurrent-executions", "4")
    assert json.loads(put.stdout) == {"ReservedConcurrentExecutions": 4}
    assert client.get_function_concurrency(FunctionName="echo")["ReservedConcurrentExecutions"] == 4
    aws("delete-function-concurrency", "--function-name", "echo")
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName="echo")
