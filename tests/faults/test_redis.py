"""Faults of the Redis process itself while handlers run: a crash with an AOF restart, a freeze
longer than the worker lease, and a Redis that refuses writes at maxmemory.

Each scenario must lose nothing, keep every worker pool up without restarting worker processes,
and run an event twice only if it was in flight when the fault struck (at most processes x
prefetch of them). The figures are printed; run with `-s` to see them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from broker.errors import TooManyRequests
from broker.invocation import InvocationType
from tests.faults.conftest import (
    HEARTBEAT_TTL_SECONDS,
    FaultStack,
    Tally,
    fill_to_maxmemory,
    oom_errors,
    report,
    wait_briefly,
)
from tests.waiting import eventually

POOLS = 2
PROCESSES = 2
PREFETCH = 4
EVENTS = 40
HANDLER_SECONDS = 1.0
OUTAGE_SECONDS = 2 * HEARTBEAT_TTL_SECONDS  # longer than the lease: every heartbeat lapses meanwhile
IN_FLIGHT_BOUND = POOLS * PROCESSES * PREFETCH  # what can be held (running or prefetched) when Redis goes


def _slow_function() -> list[dict[str, object]]:
    return [{"FunctionName": "slow", "Timeout": 10}]


async def _busy_stack(fault_stack: Callable[..., FaultStack]) -> tuple[FaultStack, list[str]]:
    """Two pools running the 40 slow events, caught with their first round done and the next running."""
    stack = fault_stack(_slow_function())
    for _ in range(POOLS):
        await stack.start_pool(processes=PROCESSES, prefetch=PREFETCH)
    accepted = stack.invoke_events("slow", EVENTS, HANDLER_SECONDS)
    await eventually(
        lambda: sum(stack.runs.count("end").values()) >= POOLS * PROCESSES,
        30,
        lambda: f"the first round of runs never finished\n{stack.logs()}",
    )
    return stack, accepted


def _check(stack: FaultStack, tally: Tally, scenario: str, in_flight: int) -> None:
    """0 lost, duplicates within what was in flight, no worker restarted, every pool up."""
    deaths = stack.pool_deaths()
    line = report(
        tally.describe(scenario, in_flight_at_fault=in_flight, in_flight_bound=IN_FLIGHT_BOUND, worker_deaths=deaths)
    )
    down = [pool.log_path.name for pool in stack.pools if not pool.running]
    message = f"{line}\npools down: {down}\n{stack.logs()}"
    assert not tally.lost, message
    assert tally.duplicated <= IN_FLIGHT_BOUND, message
    assert deaths == 0, message
    assert not down, message


async def test_redis_killed_and_restarted_from_its_aof_while_handlers_run(
    fault_stack: Callable[..., FaultStack],
) -> None:
    stack, accepted = await _busy_stack(fault_stack)
    in_flight = stack.in_flight()
    stack.redis_server.kill()  # SIGKILL: only the append-only file survives
    wait_briefly(OUTAGE_SECONDS)
    stack.redis_server.start()  # same port, replays the AOF

    tally = await stack.settled(accepted, within=45)
    _check(stack, tally, "redis SIGKILL + AOF restart", in_flight)


async def test_redis_frozen_longer_than_the_lease(fault_stack: Callable[..., FaultStack]) -> None:
    stack, accepted = await _busy_stack(fault_stack)
    in_flight = stack.in_flight()
    stack.redis_server.freeze()
    wait_briefly(OUTAGE_SECONDS)
    stack.redis_server.thaw()

    tally = await stack.settled(accepted, within=45)
    _check(stack, tally, "redis SIGSTOP > lease, then SIGCONT", in_flight)


async def test_redis_at_maxmemory_throttles_new_invocations_and_loses_nothing(
    fault_stack: Callable[..., FaultStack],
) -> None:
    stack = fault_stack(_slow_function())
    pool = await stack.start_pool(processes=PROCESSES, prefetch=2)
    accepted = stack.invoke_events("slow", 10, seconds=0.5)
    await eventually(lambda: stack.runs.count("start"), 30, lambda: f"no run started\n{stack.logs()}")
    redis = stack.redis()
    fillers = fill_to_maxmemory(stack.redis_server, redis)
    started_when_full = sum(stack.runs.count("start").values())
    refused_before = oom_errors(redis)

    payload = json.dumps({"id": "refused-by-cli"})
    answer = stack.cli("invoke", "slow", "--config", str(stack.config_path), "--payload", payload,
                       "--invocation-type", "Event")  # fmt: skip
    lines = answer.stderr.strip().splitlines()
    cli = f"exit {answer.returncode}, stderr:\n{answer.stderr[-3000:]}"
    assert answer.returncode == 2, cli
    assert len(lines) == 1, cli
    assert "Traceback" not in answer.stderr, cli
    assert "TooManyRequests" in lines[0], cli

    with pytest.raises(TooManyRequests) as refused:
        stack.client().invoke("slow", {"id": "refused-by-client"}, InvocationType.EVENT)
    assert refused.value.reason == "ConcurrentInvocationLimitExceeded"

    # The runs under way when Redis filled up end and their workers try to acknowledge, claim and
    # heartbeat against a Redis that refuses: observed as Redis counting the refusals.
    await eventually(
        lambda: sum(stack.runs.count("end").values()) >= started_when_full and oom_errors(redis) >= refused_before + 10,
        30,
        lambda: f"workers never met the full Redis\n{stack.logs()}",
    )
    deaths_while_full = stack.pool_deaths()
    redis.config_set("maxmemory", "0")
    redis.delete(*[f"filler:{n}" for n in range(fillers)])
    redis.close()

    tally = await stack.settled(accepted, within=30)
    line = report(tally.describe("redis at maxmemory", fillers=fillers, worker_deaths_while_full=deaths_while_full))
    message = f"{line}\n{stack.logs()}"
    assert not tally.lost, message
    assert tally.duplicated <= PROCESSES * 2, message
    assert stack.pool_deaths() == 0, message
    assert pool.running, message
