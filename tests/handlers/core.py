"""Handlers for the core runtime tests. They report what they saw through Redis (TEST_REDIS_URL),
because they run in sandbox processes of worker subprocesses, far from the test."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

from redis import Redis

from broker import connection

COLD_START_MARK = time.time()  # module level: runs once per INIT


@functools.cache
def _client() -> Redis:
    """One connection per warm environment, as a real handler would keep it."""
    return connection.connect(os.environ["TEST_REDIS_URL"])  # a single Redis or a cluster (tests/cluster)


def _note(list_name: str, event: Any, context: Any, **extra: Any) -> None:
    seen = {"request_id": context.aws_request_id, "event": event, "pid": os.getpid(), **extra}
    _client().rpush(list_name, json.dumps(seen))


def record(event: Any, context: Any) -> Any:
    """Succeeds, echoing the event, and records the whole context as the handler saw it."""
    _note(
        "calls",
        event,
        context,
        seen_context={
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
            "client_context": None if context.client_context is None else context.client_context.custom,
        },
        environment={
            key: os.environ.get(key) for key in ("STAGE", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        },
        init_mark=COLD_START_MARK,
    )
    print(f"processing {context.aws_request_id}")
    logging.getLogger("orders").warning("logged from the handler")
    return {"echo": event}


def fail(event: Any, context: Any) -> None:
    _note("calls", event, context)
    raise RuntimeError(f"boom on {event}")


def slow(event: Any, context: Any) -> Any:
    """Sleeps `seconds`, noting when it starts and when it finishes."""
    _note("started", event, context)
    time.sleep(float(event.get("seconds", 1)))
    _note("finished", event, context)
    return {"slept": event.get("seconds", 1)}


def concurrency_probe(event: Any, context: Any) -> None:
    """Tracks the highest number of simultaneous runs across all processes."""
    client = _client()
    now = client.incr("running")
    keep_highest = (
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) "
        "then redis.call('SET', KEYS[1], ARGV[1]) end"
    )
    client.eval(
        keep_highest,
        1,
        "max_running",
        now,
    )
    time.sleep(float(event.get("seconds", 0.3)))
    client.decr("running")
    client.rpush("calls", "1")


def not_serialisable(event: Any, context: Any) -> Any:
    return {1, 2, 3}


def exits(event: Any, context: Any) -> None:
    os._exit(3)
