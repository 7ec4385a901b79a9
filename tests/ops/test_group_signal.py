"""A SIGTERM to a worker pool's whole process group, as systemd's `KillMode=control-group` (or a
terminal's Ctrl-C reaching every process) sends it, must still drain: each sandbox leads its own
session, so the signal reaches the pool and its workers but never the handler mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from tests.waiting import eventually
from tests.workers.conftest import REPO_ROOT, Stack

FUNCTIONS = [{"FunctionName": "slow", "Handler": "tests.handlers.core.slow", "Timeout": 30}]


def start_pool_in_own_group(stack: Stack, processes: int) -> subprocess.Popen[bytes]:
    """A pool leading its own session, so `killpg` reaches it and its workers and not the test."""
    log = (stack.directory / "pool-0.log").open("wb")
    stack._log_files.append(log)  # closed by the stack's teardown
    command = [sys.executable, "-m", "broker.cli", "worker", "--config", str(stack.config_path),
               "--processes", str(processes), "--grace-seconds", "20"]  # fmt: skip
    pool = subprocess.Popen(
        command, cwd=REPO_ROOT, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.pools.append(pool)
    stack.wait_for(lambda: len(stack.worker_pids()) >= processes)
    return pool


async def test_sigterm_to_the_pools_process_group_lets_the_running_handler_finish(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(FUNCTIONS)
    pool = start_pool_in_own_group(stack, processes=2)
    call = asyncio.create_task(asyncio.to_thread(stack.client.invoke, "slow", {"seconds": 2}))
    await eventually(lambda: stack.noted("started"), within=15, explain=lambda: stack.logs()[-3000:])

    os.killpg(pool.pid, signal.SIGTERM)

    response = await asyncio.wait_for(call, timeout=20)
    assert response.function_error is None, response.json()
    assert response.json() == {"slept": 2}
    assert len(stack.noted("finished")) == 1
    assert await asyncio.to_thread(pool.wait, 20) == 0
    assert stack.logs().count("stopping: no new work") == 2  # both workers drained
