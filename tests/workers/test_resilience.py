"""What users rely on when things go wrong: nothing accepted is lost, limits hold, drains are clean."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any, cast

from broker.invocation import InvocationType
from tests.rig import RedisServer
from tests.workers.conftest import Stack


def success_records(stack: Stack, stream: str = "succeeded") -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], stack.redis.xrange(stream))  # a client that does not decode
    return [json.loads(fields[b"body"]) for _, fields in entries]


def test_a_worker_killed_mid_invocation_loses_nothing_and_the_run_counts_as_an_attempt(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "slow",
                "Handler": "tests.handlers.core.slow",
                "Timeout": 30,
                "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": "redis-stream://succeeded"}}},
            }
        ]
    )
    stack.start_pool(processes=2)
    response = stack.client.invoke("slow", {"seconds": 1.5}, InvocationType.EVENT)
    [started] = stack.wait_for(lambda: stack.noted("started"))
    victim = next(pid for pid in stack.worker_pids() if pid != started["pid"] and _is_parent_of(pid, started["pid"]))
    os.kill(victim, signal.SIGKILL)

    [record] = stack.wait_for(lambda: success_records(stack), timeout=40)
    assert record["requestContext"]["requestId"] == response.request_id
    assert record["requestContext"]["approximateInvokeCount"] == 2  # the cut-off run counted
    assert len(stack.noted("started")) == 2
    assert len(stack.noted("finished")) == 1


def _is_parent_of(pid: int, child: int) -> bool:
    """The sandbox running the handler is a grandchild of its worker (through the forkserver)."""
    try:
        with open(f"/proc/{child}/stat") as stat:
            parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{parent}/stat") as stat:
            grandparent = int(stat.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return False
    return pid in (parent, grandparent)


def test_sigterm_finishes_the_running_invocation_and_hands_back_the_rest(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "slow",
                "Handler": "tests.handlers.core.slow",
                "Timeout": 30,
                "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": "redis-stream://succeeded"}}},
            }
        ]
    )
    pool = stack.start_pool(processes=1, grace_seconds=20)
    for n in range(5):
        stack.client.invoke("slow", {"seconds": 1, "n": n}, InvocationType.EVENT)
    stack.wait_for(lambda: stack.noted("started"))
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0

    finished = [entry["event"]["n"] for entry in stack.noted("finished")]
    assert finished == [entry["event"]["n"] for entry in stack.noted("started")]  # nothing half-done
    assert len(success_records(stack)) == len(finished)
    assert stack.client.queue.depth("slow") == 5 - len(finished)  # the rest is back in the queue, in order

    stack.start_pool(processes=1)
    stack.wait_for(lambda: len(success_records(stack)) == 5)
    assert sorted(entry["event"]["n"] for entry in stack.noted("finished")) == list(range(5))


def test_a_redis_restart_loses_no_accepted_event(make_stack: Callable[..., Stack], redis_server: RedisServer) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "orders",
                "Handler": "tests.handlers.core.record",
                "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": "redis-stream://succeeded"}}},
            }
        ]
    )
    accepted = {stack.client.invoke("orders", {"n": n}, InvocationType.EVENT).request_id for n in range(50)}
    redis_server.kill()  # SIGKILL: no clean shutdown, only the append-only file survives
    redis_server.start()
    stack.start_pool()
    stack.wait_for(lambda: len(success_records(stack)) == 50)
    assert {record["requestContext"]["requestId"] for record in success_records(stack)} == accepted


def test_reserved_concurrency_holds_across_processes_and_throttled_events_still_run(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        [
            {
                "FunctionName": "probe",
                "Handler": "tests.handlers.core.concurrency_probe",
                "ReservedConcurrentExecutions": 1,
            }
        ],
        {"ThrottleBackoffInitialSeconds": 0.05, "ThrottleBackoffMaxSeconds": 0.2},
    )
    stack.start_pool(processes=3)
    for _ in range(6):
        stack.client.invoke("probe", {"seconds": 0.3}, InvocationType.EVENT)
    stack.wait_for(lambda: stack.redis.llen("calls") == 6)
    assert stack.redis.get("max_running") == b"1"
    assert "throttled; event waits" in stack.logs()


def test_a_backlog_on_one_function_does_not_starve_another(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        [
            {"FunctionName": "busy", "Handler": "tests.handlers.core.slow"},
            {"FunctionName": "quiet", "Handler": "tests.handlers.core.record"},
        ]
    )
    for n in range(40):
        stack.client.invoke("busy", {"seconds": 0.05, "n": n}, InvocationType.EVENT)
    stack.client.invoke("quiet", {}, InvocationType.EVENT)
    stack.start_pool(processes=1)
    stack.wait_for(lambda: stack.noted("calls"))
    assert len(stack.noted("finished")) < 10  # quiet ran long before busy's backlog drained
