"""Handlers for the isolation tests: what a handler can see of the worker, what it leaves behind,
and Lambda's limits on what it returns and prints. They report through Redis (TEST_REDIS_URL)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from redis import Redis


def environment(event: Any, context: Any) -> dict[str, str]:
    return dict(os.environ)


def echo(event: Any, context: Any) -> dict[str, Any]:
    return {"event": event, "pid": os.getpid()}


def sized_response(event: Any, context: Any) -> str:
    """A JSON string of exactly `bytes` bytes (its two quotes included)."""
    return "x" * (int(event["bytes"]) - 2)


def long_line(event: Any, context: Any) -> str:
    print("y" * int(event["characters"]))
    print(f"after the long line {context.aws_request_id}")
    return "printed"


def spawn_children(event: Any, context: Any) -> str:
    """Starts a child in the sandbox's group and a daemon that leaves it (setsid and a double fork),
    notes both pids in the list `event["list"]`, then sleeps `event["seconds"]` on its first run
    (a rerun of the same event, after a worker died, returns at once)."""
    redis = Redis.from_url(os.environ["TEST_REDIS_URL"])
    child = subprocess.Popen(["sleep", "300"])
    redis.rpush(event["list"], child.pid, _start_daemon())
    if redis.set(f"{event['list']}:ran", 1, nx=True):
        time.sleep(float(event["seconds"]))
    return "done"


def _start_daemon() -> int:
    """Double fork: the daemon's parent exits at once, so the daemon is an orphan in its own session."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            os.execvp("sleep", ["sleep", "300"])
        os.write(write_end, str(daemon).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        return int(pipe.read())
