"""ListFunctions, GetFunction and GetFunctionConfiguration through boto3, from the configuration file."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.api.conftest import ApiStack

NAMES = ["closed", "echo", "fail", "slow"]


def test_list_functions_pages_with_marker_and_max_items(api: ApiStack) -> None:
    client = api.client()
    pages = list(client.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 3}))
    assert [len(page["Functions"]) for page in pages] == [3, 1]
    assert [function["FunctionName"] for page in pages for function in page["Functions"]] == NAMES
    listed = pages[0]["Functions"][1]
    assert listed["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert listed["Handler"] == "tests.handlers.core.record"
    assert "State" not in listed  # ListFunctions leaves the state fields out, as Lambda does
    assert [f["FunctionName"] for f in client.list_functions()["Functions"]] == NAMES


def test_get_function_configuration_as_lambda_describes_it(api: ApiStack) -> None:
    configuration = api.client().get_function_configuration(FunctionName="slow")
    assert configuration["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:slow"
    assert (configuration["Timeout"], configuration["MemorySize"], configuration["Version"]) == (1, 128, "$LATEST")
    assert (configuration["State"], configuration["LastUpdateStatus"]) == ("Active", "Successful")
    assert configuration["LastModified"].endswith("+0000")
    qualified = api.client().get_function_configuration(FunctionName="slow", Qualifier="$LATEST")
    assert qualified["FunctionArn"].endswith(":function:slow:$LATEST")
    assert qualified["RevisionId"] == configuration["RevisionId"]


def test_get_function_includes_reserved_concurrency_and_waiters_pass(api: ApiStack) -> None:
    client = api.client()
    assert client.get_function(FunctionName="closed")["Concurrency"] == {"ReservedConcurrentExecutions": 0}
    assert "Concurrency" not in client.get_function(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo")
    client.get_waiter("function_active_v2").wait(FunctionName="echo", WaiterConfig={"Delay": 1, "MaxAttempts": 2})


def test_unknown_function_is_resource_not_found(api: ApiStack) -> None:
    client = api.client()
    for call in (client.get_function, client.get_function_configuration):
        with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
            call(FunctionName="nope")
        assert raised.value.response["Error"]["Message"] == (
            "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
        )


def test_bad_list_parameters_are_refused(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(ClientError) as raised:
        client.list_functions(MaxItems=10001)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(client.exceptions.InvalidParameterValueException):
        client.list_functions(Marker="%%%not-a-marker")


def test_operations_not_served_are_unknown(api: ApiStack) -> None:
    client = api.client()
    with pytest.raises(ClientError) as raised:
        client.get_account_settings()
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
