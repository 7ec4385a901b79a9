"""How a `headwater worker` pool answers signals, observed on the real processes: SIGTERM cuts a
restart backoff short, SIGHUP changes nothing, and the pool's death takes its workers with it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.waiting import eventually
from tests.workers.conftest import Stack

FUNCTIONS = [{"FunctionName": "orders", "Handler": "tests.handlers.core.record"}]


def worker_processes(pool_pid: int) -> list[int]:
    """The live worker processes of a pool: its spawned children (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(parent) == pool_pid and state not in "ZX" and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


def workers_once_all_up(pool_pid: int, processes: int) -> list[int] | None:
    found = worker_processes(pool_pid)
    return found if len(found) == processes else None


def died(stack: Stack, times: int) -> bool:
    return stack.logs().count("worker process died") == times


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in "ZX"  # an orphan's zombie may wait a while for its reaper: it is dead


@pytest.fixture
def watched() -> Iterator[set[int]]:
    """Worker pids a test saw; any still alive at the end (orphans of a failed test) are killed."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_cuts_a_restart_backoff_short_and_starts_no_worker(
    make_stack: Callable[..., Stack], watched: set[int]
) -> None:
    stack = make_stack(FUNCTIONS)
    pool = stack.start_pool(processes=1)
    for deaths in (1, 2, 3):  # the slot's restart waits 1 s, then 2 s, then 4 s
        [worker] = stack.wait_for(lambda: worker_processes(pool.pid))
        watched.add(worker)
        os.kill(worker, signal.SIGKILL)
        stack.wait_for(partial(died, stack, deaths))
    assert '"restart_in_seconds": 4.0' in stack.logs()

    signalled = time.monotonic()
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 2.0  # well within the 4 s it was to wait
    assert "worker process started" not in stack.logs().split("pool stopping")[1]


def test_sighup_leaves_the_pool_and_its_workers_serving(make_stack: Callable[..., Stack], watched: set[int]) -> None:
    stack = make_stack(FUNCTIONS)
    pool = stack.start_pool(processes=2)
    workers = stack.wait_for(lambda: workers_once_all_up(pool.pid, 2))
    watched.update(workers)

    for pid in [*workers, pool.pid]:  # as a terminal hangup reaches its whole process group
        os.kill(pid, signal.SIGHUP)
    stack.wait_for(lambda: "SIGHUP ignored" in stack.logs())
    responses = [stack.client.invoke("orders", {"n": n}) for n in range(4)]

    assert [response.json() for response in responses] == [{"echo": {"n": n}} for n in range(4)]
    assert pool.poll() is None
    assert worker_processes(pool.pid) == workers
    assert "worker process died" not in stack.logs()


async def test_the_workers_of_a_killed_pool_drain_and_exit(make_stack: Callable[..., Stack], watched: set[int]) -> None:
    stack = make_stack(FUNCTIONS)
    pool = stack.start_pool(processes=2)
    workers = stack.wait_for(lambda: workers_once_all_up(pool.pid, 2))
    watched.update(workers)

    pool.kill()
    pool.wait()

    await eventually(
        lambda: not any(alive(pid) for pid in workers),
        within=15,
        explain=lambda: (
            f"workers {[pid for pid in workers if alive(pid)]} outlived their pool:\n{stack.logs()[-3000:]}"
        ),
    )
    assert stack.logs().count("stopping: no new work") == 2  # each drained on the SIGTERM the kernel sent
