"""A recovering worker killed mid-recovery. Pool A is SIGKILLed while it holds jobs; pool B
starts, and the moment B begins recovering A's workers (their heartbeat entries vanish) B is
SIGKILLed too; pool C starts and must end up running everything: nothing A held may be stranded
by a recovery that was cut in half, nor anything B took over.

The exact instant inside a recovery cannot be aimed at from outside; the test polls every
millisecond and kills B as soon as any of A's workers is gone from the heartbeat set, which is
during or just after B's recovery step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.faults.conftest import HEARTBEAT_TTL_SECONDS, FaultStack, report
from tests.rig.common import ManagedProcess
from tests.waiting import eventually

EVENTS = 30
PROCESSES = 2
PREFETCH = 8


def _kill_when_recovery_begins(stack: FaultStack, recoverer: ManagedProcess, dead: set[str]) -> bool:
    """SIGKILL `recoverer` as soon as one of the `dead` worker ids leaves the heartbeat set;
    returns whether that was seen (False: the recoverer died or the wait ran out first)."""
    deadline = time.monotonic() + HEARTBEAT_TTL_SECONDS + 30
    with stack.redis() as redis:
        while time.monotonic() < deadline and recoverer.running:
            scores = redis.zmscore("headwater:workers:{slow}", sorted(dead))
            if any(score is None for score in scores):
                recoverer.kill()
                return True
            time.sleep(0.001)
    return False


async def test_a_recoverer_killed_mid_recovery_loses_nothing(fault_stack: Callable[..., FaultStack]) -> None:
    stack = fault_stack([{"FunctionName": "slow", "Timeout": 10}])
    first = await stack.start_pool(processes=PROCESSES, prefetch=PREFETCH)
    first_workers = stack.worker_ids()
    accepted = stack.invoke_events("slow", EVENTS, seconds=0.3)
    await eventually(
        lambda: stack.runs.count("end") and stack.in_flight() >= PROCESSES * 2,
        30,
        lambda: f"pool A never held jobs\n{stack.logs()}",
    )
    held_by_first = stack.in_flight()
    first.kill()

    second = stack.spawn_pool(processes=PROCESSES, prefetch=PREFETCH)
    caught = _kill_when_recovery_begins(stack, second, first_workers)
    held_after_second = stack.in_flight()
    third = await stack.start_pool(processes=PROCESSES, prefetch=PREFETCH)

    tally = await stack.settled(accepted, within=40)
    line = report(
        tally.describe(
            "recoverer killed mid-recovery",
            held_by_a=held_by_first,
            held_when_b_died=held_after_second,
            b_killed_during_recovery=caught,
            worker_deaths=stack.pool_deaths(),
        )
    )
    message = f"{line}\n{stack.logs()}"
    assert caught, f"pool B never began recovering pool A's workers\n{message}"
    assert not tally.lost, message
    assert tally.duplicated <= 2 * PROCESSES * PREFETCH, message  # what A and then B could hold
    assert stack.pool_deaths() == 0, message
    assert third.running, message
