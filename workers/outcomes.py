"""Where a decided async outcome goes: the dead-letter queue, on-success and on-failure destinations.

Delivery is at-least-once and never loses the event: each target written is remembered on the
invocation, and a target that fails is retried later with backoff (counted and logged), while the
event stays in Redis. Lambda drops an event whose destination write fails; we keep it.

The backoff starts at 2 s and doubles up to `DestinationRetryMaxSeconds`, however long the target
stays down. It is jittered: the events of a destination that went down together would otherwise all
retry at the same instant, and hit it in one burst the moment it returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from broker import backoff, invocation_records, metrics
from broker.config import Function
from broker.destinations import kind_for
from broker.destinations.base import Message
from broker.errors import DestinationError
from broker.invocation import Condition, Invocation
from broker.logs import get_logger

log = get_logger(__name__)
DROP_REASONS = {
    Condition.RETRIES_EXHAUSTED: "max_retries",
    Condition.EVENT_AGE_EXCEEDED: "max_event_age",
    Condition.ZERO_RESERVED_CONCURRENCY: "zero_reserved_concurrency",
}
RETRY_INITIAL_SECONDS = 1.0  # the first retry waits twice this: `delivery_attempts` is 1 by then
RETRY_JITTER = 0.2


class OutcomeRouter:
    def __init__(self, send: Callable[[str, Message], None], function_arn: Callable[[str], str]) -> None:
        self._send = send
        self._function_arn = function_arn

    def route(self, function: Function, invocation: Invocation) -> Invocation | None:
        """Write every pending target; return the invocation to try again later, or None when done."""
        outcome = invocation.outcome
        assert outcome is not None
        delivered = list(invocation.delivered)
        failed = False
        for role, target, message in self._targets(function, invocation):
            key = f"{role}:{target}"
            if key in delivered:
                continue
            try:
                self._send(target, message)
            except DestinationError as error:
                failed = True
                self._count_failure(function.function_name, role, target)
                log.warning("destination write failed; will retry", role=role, target=target, error=error.message)
            else:
                delivered.append(key)
        if not failed:
            return None
        return invocation.replace(delivered=tuple(delivered), delivery_attempts=invocation.delivery_attempts + 1)

    @staticmethod
    def retry_in_seconds(pending: Invocation, maximum_seconds: float) -> float:
        """How long an invocation that `route` returned waits before its targets are tried again."""
        return backoff.delay(pending.delivery_attempts, RETRY_INITIAL_SECONDS, maximum_seconds, jitter=RETRY_JITTER)

    def _targets(self, function: Function, invocation: Invocation) -> list[tuple[str, str, Message]]:
        outcome = invocation.outcome
        assert outcome is not None
        destinations = function.event_invoke_config.destination_config
        record = invocation_records.invocation_record(invocation, outcome, self._function_arn(function.function_name))
        body = Message(body=json.dumps(record))
        if outcome.condition is Condition.SUCCESS:
            target = destinations.on_success.destination
            return [("on_success", target, body)] if target else []
        targets = []
        if function.dead_letter_config.target_arn:
            targets.append(
                (
                    "dead_letter",
                    function.dead_letter_config.target_arn,
                    invocation_records.dead_letter_message(invocation, outcome),
                )
            )
        if destinations.on_failure.destination:
            targets.append(("on_failure", destinations.on_failure.destination, body))
        return targets

    @staticmethod
    def _count_failure(function_name: str, role: str, target: str) -> None:
        kind = kind_for(target).name
        if role == "dead_letter":
            metrics.DEAD_LETTER_ERRORS.labels(function_name, kind).inc()
        else:
            metrics.DESTINATION_FAILURES.labels(function_name, role, kind).inc()
