"""Handlers written exactly as for AWS Lambda: `handler(event, context)`."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def hello(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Greets; shows that print and logging lines carry the request id."""
    print(f"hello from {context.function_name}")
    logger.info("remaining time %d ms", context.get_remaining_time_in_millis())
    return {"greeting": f"hello, {event.get('name', 'world')}", "request_id": context.aws_request_id}


def fail(event: dict[str, Any], context: Any) -> None:
    """Always raises, to show retries, the dead-letter queue and the on-failure destination."""
    raise ValueError(f"cannot process order {event.get('order')}")


def noop(event: Any, context: Any) -> None:
    """Does nothing: the benchmarks measure Headwater, not the handler."""


def sleep(event: dict[str, Any], context: Any) -> dict[str, float]:
    """Sleeps `seconds` (default 1): used to show timeouts and draining."""
    seconds = float(event.get("seconds", 1))
    time.sleep(seconds)
    return {"slept": seconds}
