"""Handler isolation and Lambda's limits: what a handler sees of the worker, what dies with its
sandbox, and what happens to responses, log lines and payloads that Lambda would not accept."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import payload
from broker.errors import InvalidRequestContent
from broker.invocation import InvocationType
from tests.workers.conftest import Stack

HANDLERS = "tests.handlers.isolation"
RESPONSE_LIMIT_BYTES = 6_291_456
LAMBDAS_OWN = {
    *("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
    *("AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE"),
    *("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "_HANDLER", "LAMBDA_TASK_ROOT", "TZ"),
}


def test_a_handler_sees_lambdas_variables_its_own_and_the_pass_through_list_only(
    make_stack: Callable[..., Stack], redis_url: str
) -> None:
    variables = {"Variables": {"STAGE": "t"}}
    function = {"FunctionName": "env", "Handler": f"{HANDLERS}.environment", "Environment": variables}
    stack = make_stack([function], {"SandboxEnvironmentPassThrough": ["PASSED_ON", "NOT_SET_ANYWHERE"]})
    secrets = {"HEADWATER_SOMETHING": "internal", "AWS_SECRET_ACCESS_KEY": "fake-secret", "NOT_LISTED": "no"}
    stack.env.update({**secrets, "PASSED_ON": "yes"})
    stack.start_pool()
    seen = stack.client.invoke("env", {}).json()

    from_worker = {name for name in ("PATH", "LANG", "LD_LIBRARY_PATH", "PYTHONPATH") if name in stack.env}
    assert set(seen) == LAMBDAS_OWN | from_worker | {"STAGE", "TEST_REDIS_URL", "PASSED_ON"}
    assert seen["PASSED_ON"] == "yes"
    assert seen["TEST_REDIS_URL"] == redis_url  # a function variable of the test rig, legitimately visible
    assert (seen["AWS_LAMBDA_FUNCTION_NAME"], seen["_HANDLER"], seen["AWS_REGION"]) == (
        "env",
        f"{HANDLERS}.environment",
        "us-east-1",
    )
    assert "[$LATEST]" in seen["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert seen["TZ"] == ":UTC"
    assert not set(secrets.values()) & set(seen.values())


def test_responses_log_lines_and_payloads_beyond_lambdas_limits(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        [
            {"FunctionName": "sized", "Handler": f"{HANDLERS}.sized_response"},
            {"FunctionName": "chatty", "Handler": f"{HANDLERS}.long_line"},
            {"FunctionName": "echo", "Handler": f"{HANDLERS}.echo"},
        ]
    )
    stack.start_pool()
    at_limit = stack.client.invoke("sized", {"bytes": RESPONSE_LIMIT_BYTES})
    assert at_limit.function_error is None
    assert at_limit.payload is not None
    assert len(at_limit.payload) == RESPONSE_LIMIT_BYTES
    over = stack.client.invoke("sized", {"bytes": RESPONSE_LIMIT_BYTES + 1})
    assert over.function_error == "Unhandled"
    assert over.json() == {
        "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }

    printed = stack.client.invoke("chatty", {"characters": 300_000})
    after = f"after the long line {printed.request_id}"
    lines = stack.wait_for(lambda: after in stack.logs() and _log_events(stack.logs(), printed.request_id))
    [long] = [line for line in lines if line["event"].startswith("y")]
    assert long["truncated"] is True
    assert len(long["event"]) == 262_144
    assert "truncated" not in next(line for line in lines if line["event"] == after)

    # A payload the Invoke checks never saw (a source's record) reaches the sandbox: a function error, warm.
    echo = stack.config.function("echo")
    assert echo is not None
    first = stack.client.invoke("echo", {"n": 1}).json()
    not_base64 = ("{}", "!not base64")
    for undecodable, client_context in [("[" * 100_000 + "]" * 100_000, None), ("{not json", None), not_base64]:
        refused = stack.client._call(echo, undecodable, client_context, None)
        assert refused.function_error == "Unhandled"
        assert refused.json()["errorType"] == "Runtime.UnmarshalError"
        assert refused.json()["errorMessage"].startswith("Unable to unmarshal input: ")
    assert stack.client.invoke("echo", {"n": 2}).json() == {"event": {"n": 2}, "pid": first["pid"]}


def _log_events(text: str, request_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and request_id in line]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('"\ud800"', "not valid UTF-8"),
        (b'"\xff"', "not valid UTF-8"),
    ],
)
def test_invoke_refuses_a_payload_nested_too_deeply_or_not_utf8_without_a_traceback(
    event: str | bytes, reason: str
) -> None:
    with pytest.raises(InvalidRequestContent, match=reason) as refused:
        payload.check(payload.to_text(event), InvocationType.REQUEST_RESPONSE)
    assert refused.value.code == "InvalidRequestContentException"
    assert str(refused.value).startswith("Could not parse request body into json: Could not parse payload into json")


def _encoded(document: object) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


@pytest.mark.parametrize("client_context", ["!not base64", _encoded([1]), _encoded({"custom": {"k": "x" * 2_700}})])
def test_invoke_refuses_a_client_context_that_is_not_a_small_base64_json_object(client_context: str) -> None:
    with pytest.raises(InvalidRequestContent, match="Client context must be a valid Base64-encoded JSON object"):
        payload.check_client_context(client_context)
    assert payload.check_client_context("e30=") == "e30="  # {}


def test_what_a_handler_started_dies_with_its_sandbox_on_timeout_and_on_worker_death(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        [
            {"FunctionName": "brief", "Handler": f"{HANDLERS}.spawn_children", "Timeout": 1},
            {"FunctionName": "patient", "Handler": f"{HANDLERS}.spawn_children", "Timeout": 60},
        ]
    )
    stack.start_pool()
    timed_out = stack.client.invoke("brief", {"list": "brief-children", "seconds": 30})
    assert timed_out.json()["errorType"] == "Sandbox.Timedout"
    children = [int(pid) for pid in stack.redis.lrange("brief-children", 0, -1)]
    assert len(children) == 2
    stack.wait_for(lambda: all(map(_dead, children)), timeout=10)

    stack.client.invoke("patient", {"list": "patient-children", "seconds": 30}, InvocationType.EVENT)
    children = stack.wait_for(lambda: [int(pid) for pid in stack.redis.lrange("patient-children", 0, -1)])
    assert not any(map(_dead, children))
    [worker] = stack.worker_pids()
    os.kill(worker, signal.SIGKILL)
    stack.wait_for(lambda: all(map(_dead, children)), timeout=10)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (an orphan's reaper may be a container's pid 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"


def test_config_errors_never_echo_the_values_of_environment_variables(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "Functions:\n"
        "  - {FunctionName: f, Handler: a.b, Environment: {Variables: {DB_PASSWORD: 8675309123, TOKEN: tok-1}}}\n"
        "  - {FunctionName: f, Handler: a.c, Environment: {Variabels: {API_KEY: key-2}}}\n"
        "  - {FunctionName: g, Handler: a.d, Environment: {Variables: [list-secret-3]}}\n"
        "  - {FunctionName: h, Handler: nodots, Environment: {Variables: {OK: fine-4}}}\n"
    )
    command = [sys.executable, "-m", "broker.cli", "validate", "--config", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "Functions.0.Environment.Variables.DB_PASSWORD: Input should be a valid string (value hidden" in done.stderr
    assert "Functions.1.Environment.Variabels: unknown key" in done.stderr
    assert "Functions.3.Handler: Value error" in done.stderr
    assert "'nodots'" in done.stderr  # values outside Environment are still shown
    for secret in ("8675309123", "tok-1", "key-2", "list-secret-3", "fine-4"):
        assert secret not in done.stderr
