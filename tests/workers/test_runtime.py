"""The execution environment: Lambda's context, warm starts, timeouts, INIT errors, logs, metrics."""

from __future__ import annotations

import base64
import json
import socket
import urllib.request
from collections.abc import Callable

import pytest

from broker.errors import TooManyRequests
from broker.invocation import InvocationType
from tests.workers.conftest import Stack


def test_a_handler_gets_lambdas_context_its_environment_and_stays_warm(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "orders",
                "Handler": "tests.handlers.core.record",
                "Timeout": 5,
                "MemorySize": 512,
                "Environment": {"Variables": {"STAGE": "test"}},
            }
        ]
    )
    stack.start_pool()
    client_context = base64.b64encode(json.dumps({"custom": {"tenant": "acme"}}).encode()).decode()
    first = stack.client.invoke("orders", {"n": 1}, client_context=client_context)
    second = stack.client.invoke("orders", {"n": 2})

    assert first.status_code == 200
    assert first.function_error is None
    assert first.json() == {"echo": {"n": 1}}
    one, two = stack.noted()
    assert one["request_id"] == first.request_id
    context = one["seen_context"]
    assert context["function_name"] == "orders"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:orders:$LATEST"
    assert context["memory_limit_in_mb"] == "512"
    assert context["log_group_name"] == "/aws/lambda/orders"
    assert "[$LATEST]" in context["log_stream_name"]
    assert 4000 < context["remaining_ms"] <= 5000
    assert context["identity"] == [None, None]
    assert context["client_context"] == {"tenant": "acme"}
    assert two["request_id"] == second.request_id
    assert two["seen_context"]["client_context"] is None
    assert one["environment"] == {
        "STAGE": "test",
        "AWS_LAMBDA_FUNCTION_NAME": "orders",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    }
    assert one["pid"] == two["pid"]
    assert one["init_mark"] == two["init_mark"]


def test_handler_output_is_logged_as_json_with_its_request_id(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack([{"FunctionName": "orders", "Handler": "tests.handlers.core.record"}])
    stack.start_pool()
    response = stack.client.invoke("orders", {})
    lines = stack.wait_for(
        lambda: [
            json.loads(line)
            for line in stack.logs().splitlines()
            if line.startswith("{") and response.request_id in line
        ]
    )
    events = {line["event"]: line for line in lines}
    assert events[f"processing {response.request_id}"]["function"] == "orders"
    assert events["logged from the handler"]["level"] == "warning"
    assert all(line["request_id"] == response.request_id for line in lines)


def test_a_timeout_is_reported_as_lambda_reports_it_and_the_worker_goes_on(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack([{"FunctionName": "slow", "Handler": "tests.handlers.core.slow", "Timeout": 1}])
    stack.start_pool()
    timed_out = stack.client.invoke("slow", {"seconds": 5})
    assert timed_out.function_error == "Unhandled"
    assert timed_out.json() == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {timed_out.request_id} Error: Task timed out after 1.00 seconds",
    }
    assert "Task timed out after 1.00 seconds" in stack.logs()
    after = stack.client.invoke("slow", {"seconds": 0})
    assert after.function_error is None
    assert after.json() == {"slept": 0}
    assert len(stack.noted("finished")) == 1  # the timed-out run never finished: it was stopped


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        (
            "tests.handlers.broken_import.handler",
            "Runtime.ImportModuleError",
            "Unable to import module 'tests.handlers.broken_import': No module named 'a_module_that_does_not_exist'",
        ),
        (
            "tests.handlers.core.missing",
            "Runtime.HandlerNotFound",
            "Handler 'missing' missing on module 'tests.handlers.core'",
        ),
        ("tests.handlers.core.not_serialisable", "Runtime.MarshalError", None),
        ("tests.handlers.core.exits", "Runtime.ExitError", None),
    ],
)
def test_runtime_failures_carry_lambdas_error_types(
    make_stack: Callable[..., Stack], handler: str, error_type: str, message: str | None
) -> None:
    stack = make_stack([{"FunctionName": "broken", "Handler": handler}])
    stack.start_pool()
    for _ in range(2):  # a failed INIT is tried again on the next invocation, as on Lambda
        response = stack.client.invoke("broken", {})
        assert response.function_error == "Unhandled"
        body = response.json()
        assert body["errorType"] == error_type
        if message:
            assert body["errorMessage"] == message


def test_init_has_its_own_time_limit_and_does_not_spend_the_function_timeout(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack([{"FunctionName": "heavy", "Handler": "tests.handlers.slow_init.handler", "Timeout": 1}])
    stack.start_pool()
    response = stack.client.invoke("heavy", {})  # INIT takes 1.5 s, the function 1 s
    assert response.function_error is None
    assert response.json() == "ran"


def test_synchronous_invoke_of_a_function_with_zero_concurrency_is_throttled(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        [{"FunctionName": "off", "Handler": "tests.handlers.core.record", "ReservedConcurrentExecutions": 0}]
    )
    with pytest.raises(TooManyRequests) as refused:
        stack.client.invoke("off", {})
    assert refused.value.status == 429
    assert refused.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"


def test_the_pool_serves_the_sum_of_its_processes_metrics(make_stack: Callable[..., Stack]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack = make_stack(
        [
            {"FunctionName": "ok", "Handler": "tests.handlers.core.record"},
            {"FunctionName": "bad", "Handler": "tests.handlers.core.fail"},
        ]
    )
    stack.start_pool(2, 10, "--metrics-port", str(port))
    for n in range(6):
        stack.client.invoke("ok", {"n": n})
    stack.client.invoke("bad", {})

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    stack.client.invoke("ok", {"n": "async"}, InvocationType.EVENT)
    # counted when the run ends, after the event's receipt: wait for the last thing counted
    stack.wait_for(lambda: 'headwater_invocations_total{function="ok",trigger="async"} 1.0' in scrape())
    text = scrape()
    assert 'headwater_async_events_received_total{function="ok"} 1.0' in text
    assert 'headwater_invocations_total{function="ok",trigger="sync"} 6.0' in text
    assert 'headwater_invocations_total{function="ok",trigger="async"} 1.0' in text
    assert 'headwater_invocation_errors_total{error_type="unhandled",function="bad",trigger="sync"} 1.0' in text
    assert 'headwater_invocation_duration_seconds_count{function="ok"} 7.0' in text
    assert 'headwater_queue_depth{queue="ok"} 0.0' in text
    cold = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('headwater_cold_starts_total{function="ok"}')
    )
    assert 1 <= cold <= 2  # one INIT per process that served it, not one per invocation
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        assert answer.status == 200
