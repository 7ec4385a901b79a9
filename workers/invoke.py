"""One job, start to finish: run the handler and decide what happens next, as Lambda decides.

Asynchronous events: function errors (timeouts and crashes included) spend retries, with Lambda's
delays; throttles wait with exponential backoff and spend none; an event older than its maximum age
is discarded with `EventAgeExceeded`; a function with reserved concurrency 0 discards at once with
`ZeroReservedConcurrency`. A run cut off by a dying worker counts as an attempt. A decided outcome is
handed to `OutcomeRouter` until every destination has it.

Synchronous calls and event source batches: the result (or a throttle) goes back to whoever waits.
Nothing here writes to Redis: the worker applies the returned `Followup` and the acknowledgement in
one transaction, so a crash leaves either the old job or its successor, never both nor neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker import backoff, metrics
from broker.concurrency import ConcurrencyLimiter
from broker.config import Config, Function
from broker.function_overrides import OverridesView
from broker.invocation import Condition, Invocation, InvocationType, Outcome, Result, Status
from broker.logs import bind_invocation, get_logger
from broker.queue import Claim
from workers.outcomes import DROP_REASONS, OutcomeRouter
from workers.runtime import Runtime

log = get_logger(__name__)


@dataclass
class Followup:
    """What must be written atomically with the job's acknowledgement."""

    enqueue: list[tuple[Invocation, float]] = field(default_factory=list)  # (invocation, delay seconds)
    reply: tuple[str, Result] | None = None


class Invoker:
    """Runs jobs of the functions in `config`, with the settings stored through the API (reserved
    concurrency, EventInvokeConfig) in place of the file's when `overrides` holds some."""

    def __init__(
        self,
        config: Config,
        limiter: ConcurrencyLimiter,
        runtime: Runtime,
        router: OutcomeRouter,
        overrides: OverridesView | None = None,
    ) -> None:
        self.config = config
        self.options = config.headwater
        self._limiter = limiter
        self._runtime = runtime
        self._router = router
        self._overrides = overrides

    def handle(self, claim: Claim, should_abort: Callable[[], bool]) -> Followup:
        invocation = claim.invocation
        with bind_invocation(invocation.function_name, invocation.request_id):
            function = self.config.function(invocation.function_name)
            if function is None:
                return self._unknown_function(invocation)
            if self._overrides is not None:
                function = self._overrides.apply(function)
            if invocation.outcome is not None:
                return self._deliver(function, invocation)
            if invocation.invocation_type is InvocationType.EVENT:
                if _first_sight(claim):  # counted where it is scraped: producers may be short-lived CLIs
                    metrics.ASYNC_RECEIVED.labels(function.function_name).inc()
                return self._run_event(
                    function,
                    invocation.replace(invoke_count=invocation.invoke_count + max(0, claim.starts - 1)),
                    should_abort,
                )
            return self._run_request(function, invocation, should_abort)

    # -- asynchronous events ----------------------------------------------------------------------
    def _run_event(self, function: Function, invocation: Invocation, should_abort: Callable[[], bool]) -> Followup:
        policy = function.event_invoke_config
        discard = self._discard_before_running(function, invocation)
        if discard is not None:
            return self._decide(
                function,
                invocation,
                discard,
                invoke_count=0 if discard is Condition.ZERO_RESERVED_CONCURRENCY else None,
            )
        result = self._run(function, invocation, should_abort)
        if result is None:
            delay = self._throttle_delay(invocation.throttle_count)
            log.info("throttled; event waits", retry_in_seconds=round(delay, 3))
            return Followup(enqueue=[(invocation.replace(throttle_count=invocation.throttle_count + 1), delay)])
        metrics.ASYNC_AGE.labels(function.function_name).observe(invocation.age_seconds)
        ran = invocation.replace(invoke_count=invocation.invoke_count + 1, last_result=result, throttle_count=0)
        if result.status is Status.SUCCESS:
            if function.event_invoke_config.destination_config.on_success.destination:
                return self._decide(function, ran, Condition.SUCCESS)
            return Followup()
        if ran.invoke_count <= policy.maximum_retry_attempts:
            delay = self.options.async_retry_delays_seconds[min(ran.invoke_count, 2) - 1]
            log.info("function error; retry scheduled", attempt=ran.invoke_count, retry_in_seconds=delay)
            return Followup(enqueue=[(ran, delay)])
        return self._decide(function, ran, Condition.RETRIES_EXHAUSTED)

    @staticmethod
    def _discard_before_running(function: Function, invocation: Invocation) -> Condition | None:
        policy = function.event_invoke_config
        if function.reserved_concurrent_executions == 0:
            return Condition.ZERO_RESERVED_CONCURRENCY
        if invocation.age_seconds > policy.maximum_event_age_in_seconds:
            return Condition.EVENT_AGE_EXCEEDED
        if invocation.invoke_count > policy.maximum_retry_attempts:  # the earlier runs died with their workers
            return Condition.RETRIES_EXHAUSTED
        return None

    def _decide(
        self, function: Function, invocation: Invocation, condition: Condition, invoke_count: int | None = None
    ) -> Followup:
        outcome = Outcome(
            condition=condition,
            invoke_count=invocation.invoke_count if invoke_count is None else invoke_count,
            last_result=invocation.last_result,
            decided_at=time.time(),
        )
        if condition is not Condition.SUCCESS:
            metrics.ASYNC_DROPPED.labels(function.function_name, DROP_REASONS[condition]).inc()
            log.warning("async event discarded", condition=condition.value, invoke_count=outcome.invoke_count)
        return self._deliver(function, invocation.replace(outcome=outcome))

    def _deliver(self, function: Function, invocation: Invocation) -> Followup:
        pending = self._router.route(function, invocation)
        if pending is None:
            return Followup()
        delay = self._router.retry_in_seconds(pending, self.options.destination_retry_max_seconds)
        return Followup(enqueue=[(pending, delay)])

    def _throttle_delay(self, throttles: int) -> float:
        initial, maximum = self.options.throttle_backoff_initial_seconds, self.options.throttle_backoff_max_seconds
        return backoff.delay(throttles, initial, maximum)

    # -- synchronous calls and event source batches -----------------------------------------------
    def _run_request(self, function: Function, invocation: Invocation, should_abort: Callable[[], bool]) -> Followup:
        result = self._run(function, invocation, should_abort)
        if result is None:
            body = {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "message": "Rate Exceeded."}
            result = Result(invocation.request_id, Status.THROTTLED, json.dumps(body), "TooManyRequestsException")
        return Followup(reply=(invocation.reply_to, result) if invocation.reply_to else None)

    def _unknown_function(self, invocation: Invocation) -> Followup:
        log.error("function is not configured on this worker; event dropped")
        metrics.ASYNC_DROPPED.labels(invocation.function_name, "unknown_function").inc()
        body = {
            "errorType": "ResourceNotFoundException",
            "errorMessage": f"Function not found: {invocation.function_name}",
        }
        result = Result(invocation.request_id, Status.FUNCTION_ERROR, json.dumps(body), "ResourceNotFoundException")
        return Followup(reply=(invocation.reply_to, result) if invocation.reply_to else None)

    # -- one run ----------------------------------------------------------------------------------------
    def _run(self, function: Function, invocation: Invocation, should_abort: Callable[[], bool]) -> Result | None:
        """Run under a concurrency lease; None when throttled (the handler did not run)."""
        name, limit = function.function_name, function.reserved_concurrent_executions
        lease = self._limiter.acquire(name, limit, function.timeout)
        if lease is None:
            metrics.THROTTLES.labels(name, "function_limit").inc()
            return None
        metrics.CONCURRENT.labels(name).inc()
        try:
            result = self._runtime.invoke(function, invocation, should_abort)
        finally:
            metrics.CONCURRENT.labels(name).dec()
            self._limiter.release(name, limit, lease)
        metrics.INVOCATIONS.labels(name, invocation.trigger).inc()
        metrics.DURATION.labels(name).observe(result.duration_seconds)
        if result.status is Status.FUNCTION_ERROR:
            error_type = "timeout" if result.error_type == "Sandbox.Timedout" else "unhandled"
            metrics.ERRORS.labels(name, invocation.trigger, error_type).inc()
        return result


def _first_sight(claim: Claim) -> bool:
    invocation = claim.invocation
    return claim.starts <= 1 and invocation.invoke_count == 0 and invocation.throttle_count == 0
