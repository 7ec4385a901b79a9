"""The AWS CLI (PyPI's awscli), unchanged, against `headwater api`: every operation it serves."""

from __future__ import annotations

import base64
import json

from tests.api.conftest import ApiStack


def test_invoke_with_tail_and_an_event(api: ApiStack) -> None:
    out = api.directory / "out.json"
    printed = api.aws(
        "invoke", "--function-name", "echo", "--payload", '{"via": "cli"}', "--log-type", "Tail", str(out)
    )
    answer = json.loads(printed.stdout)
    assert (answer["StatusCode"], answer["ExecutedVersion"]) == (200, "$LATEST")
    assert base64.b64decode(answer["LogResult"]).decode().startswith("START RequestId: ")
    assert json.loads(out.read_text()) == {"echo": {"via": "cli"}}
    event = api.aws("invoke", "--function-name", "echo", "--invocation-type", "Event", str(out))
    assert json.loads(event.stdout) == {"StatusCode": 202}


def test_a_function_error_and_an_unknown_function(api: ApiStack) -> None:
    out = api.directory / "out.json"
    answer = json.loads(api.aws("invoke", "--function-name", "fail", str(out)).stdout)
    assert answer["FunctionError"] == "Unhandled"
    missing = api.aws("invoke", "--function-name", "nope", str(out), check=False)
    assert missing.returncode != 0
    assert "(ResourceNotFoundException) when calling the Invoke operation: Function not found" in missing.stderr


def test_list_and_get_functions(api: ApiStack) -> None:
    listed = json.loads(api.aws("list-functions", "--page-size", "2").stdout)
    assert [function["FunctionName"] for function in listed["Functions"]] == ["closed", "echo", "fail", "slow"]
    function = json.loads(api.aws("get-function", "--function-name", "slow").stdout)
    assert function["Configuration"]["Timeout"] == 1
    configuration = json.loads(api.aws("get-function-configuration", "--function-name", "echo").stdout)
    assert configuration["Handler"] == "tests.handlers.core.record"
