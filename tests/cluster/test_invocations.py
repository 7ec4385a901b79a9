"""The invocation path on a 3-primary Redis Cluster, end to end: functions whose slots lie on
different primaries run their events exactly as on one Redis, a sync call answers, a failing event
retries and reaches an on-failure Function destination in another slot, a poison job is
quarantined, and a worker SIGKILLed mid-invocation has its job run by another.

One pool serves every function, so its workers claim, renew their leases and recover function by
function, and wait on several functions' wake lists in turn (broker/queue.py).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any, cast

from redis.cluster import RedisCluster

from broker import keys
from broker.invocation import InvocationType
from broker.queue import InvocationQueue
from tests.workers.conftest import Stack
from tests.workers.test_resilience import _is_parent_of, success_records

SPREAD = ("alpha", "delta", "beta")  # slots 865, 9053, 15419: one on each primary of a 3-way split
EVENTS_PER_FUNCTION = 3
AUDIT_ARN = "arn:aws:lambda:us-east-1:000000000000:function:audit"
RECORD = "tests.handlers.core.record"


def primary_port(stack: Stack, key: str) -> int:
    """The port of the primary serving `key`'s slot, from the cluster's own slot map."""
    node = cast(RedisCluster, stack.redis).get_node_from_key(key)  # type: ignore[no-untyped-call]  # untyped in redis-py
    return int(node.port)


def calls_of(stack: Stack) -> list[tuple[str, Any]]:
    return [(call["event"].get("fn", "audit"), call["event"]) for call in stack.noted("calls")]


def test_functions_on_three_primaries_run_events_sync_calls_retries_and_a_cross_slot_destination(
    make_cluster_stack: Callable[..., Stack],
) -> None:
    failing = {
        "FunctionName": "fails",
        "Handler": "tests.handlers.core.fail",
        "EventInvokeConfig": {
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {"OnFailure": {"Destination": AUDIT_ARN}},
        },
    }
    functions = [{"FunctionName": name, "Handler": RECORD} for name in (*SPREAD, "audit")]
    stack = make_cluster_stack([*functions, failing])
    assert len({primary_port(stack, keys.queue_key(name)) for name in SPREAD}) == 3, "the functions share a primary"
    assert primary_port(stack, keys.queue_key("fails")) != primary_port(stack, keys.queue_key("audit"))
    stack.start_pool(processes=2)
    client = stack.client

    for name in SPREAD:
        for n in range(EVENTS_PER_FUNCTION):
            assert client.invoke(name, {"fn": name, "n": str(n)}, InvocationType.EVENT).status_code == 202
    answer = client.invoke("alpha", {"fn": "alpha", "n": "sync"})
    client.invoke("fails", {"fn": "fails"}, InvocationType.EVENT)
    poison = keys.job_id("delta")
    stack.redis.hset(keys.job(poison), "data", b"not zlib")
    stack.redis.rpush(keys.queue_key("delta"), poison)
    stack.redis.lpush(keys.wake(keys.queue_name("delta")), "1")

    assert answer.status_code == 200
    assert answer.json() == {"echo": {"fn": "alpha", "n": "sync"}}
    [record] = stack.wait_for(lambda: [event for fn, event in calls_of(stack) if fn == "audit"], timeout=30)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestPayload"] == {"fn": "fails"}
    queue = InvocationQueue(stack.redis)
    names = [*SPREAD, "audit", "fails"]
    stack.wait_for(lambda: _settled(queue.status(names)))
    expected = sorted([(name, str(n)) for name in SPREAD for n in range(EVENTS_PER_FUNCTION)] + [("alpha", "sync")])
    ran = sorted((fn, event["n"]) for fn, event in calls_of(stack) if fn in SPREAD)
    assert ran == expected, "every event ran exactly once"
    assert [fn for fn, _ in calls_of(stack)].count("fails") == 2  # the run and its one retry
    [quarantined] = queue.quarantined()
    assert (quarantined.job_id, quarantined.function_name, quarantined.has_data) == (poison, "delta", True)


def _settled(status: Any) -> bool:
    """Nothing queued, held or scheduled anywhere, and the poison job set aside."""
    busy = [*status.queued.values(), *status.running.values(), *status.scheduled.values()]
    return not any(busy) and status.quarantined["delta"] == 1


def test_a_worker_killed_mid_invocation_has_its_job_run_by_another(make_cluster_stack: Callable[..., Stack]) -> None:
    slow = {
        "FunctionName": "slow",
        "Handler": "tests.handlers.core.slow",
        "Timeout": 30,
        "EventInvokeConfig": {"DestinationConfig": {"OnSuccess": {"Destination": "redis-stream://succeeded"}}},
    }
    stack = make_cluster_stack([slow, {"FunctionName": "alpha", "Handler": RECORD}])
    stack.start_pool(processes=2)
    response = stack.client.invoke("slow", {"seconds": 1.5}, InvocationType.EVENT)
    [started] = stack.wait_for(lambda: stack.noted("started"))
    victim = next(pid for pid in stack.worker_pids() if pid != started["pid"] and _is_parent_of(pid, started["pid"]))
    os.kill(victim, signal.SIGKILL)

    [record] = stack.wait_for(lambda: success_records(stack), timeout=40)
    assert record["requestContext"]["requestId"] == response.request_id
    assert record["requestContext"]["approximateInvokeCount"] == 2  # the cut-off run counted
    assert len(stack.noted("finished")) == 1
    assert json.loads(json.dumps(record["responsePayload"])) == {"slept": 1.5}
