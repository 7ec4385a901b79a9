"""Waiting for things in tests, written once: a condition that becomes true, processes that stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any


async def eventually(condition: Callable[[], Any], within: float, explain: Callable[[], str]) -> Any:
    """Poll `condition` (it may return an awaitable) until it is truthy and return that value;
    raise AssertionError with `explain()` (logs, what was awaited) after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s: {explain()}")


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every running process first (they drain in parallel), then wait; kill what overstays."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
