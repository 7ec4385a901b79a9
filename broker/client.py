"""Invoke functions from Python: the same checks, queue and answers as `headwater invoke`.

client = Client(load_config("headwater.yaml"), "redis://localhost:6379/0")
client.invoke("resize", {"key": "cat.png"}, InvocationType.EVENT)   # 202 and a request id
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import connection, invocation_records, keys, metrics, payload
from broker.config import Config, Function
from broker.connection import StoreError
from broker.errors import FunctionNotFound, HeadwaterError, InvocationTimedOut, StoreUnavailable, TooManyRequests
from broker.invocation import Invocation, InvocationType, Status
from broker.queue import InvocationQueue

if TYPE_CHECKING:
    from redis import Redis

QUEUE_WAIT_ALLOWANCE_SECONDS = 60.0
# How long the first wait for a sync call's result lasts, sent with the write itself. Short, because a
# refused write is reported only once it ends; a slower call waits on in `wait_for_reply`'s slices.
FIRST_WAIT_SECONDS = 0.2


@dataclass(frozen=True)
class InvokeResponse:
    """Lambda's Invoke answer: 202 (queued), 200 (ran; see `function_error`) or 204 (dry run)."""

    status_code: int
    request_id: str
    payload: str | None = None
    function_error: str | None = None
    executed_version: str | None = None

    def json(self) -> Any:
        return None if self.payload is None else json.loads(self.payload)


class Client:
    def __init__(self, config: Config, redis: Redis | str) -> None:
        self.config = config
        self.redis = connection.connect(redis) if isinstance(redis, str) else redis
        settings = config.headwater
        self.queue = InvocationQueue(
            self.redis,
            settings.worker_heartbeat_ttl_seconds,
            settings.durable_replicas,
            settings.durable_wait_timeout_ms,
        )

    def invoke(
        self,
        function_name: str,
        event: Any,
        invocation_type: InvocationType | str = InvocationType.REQUEST_RESPONSE,
        client_context: str | None = None,
        timeout_seconds: float | None = None,
    ) -> InvokeResponse:
        invocation_type = InvocationType(invocation_type)
        function = self._function(function_name)
        text = payload.check(payload.to_text(event), invocation_type)
        payload.check_client_context(client_context)
        if invocation_type is InvocationType.DRY_RUN:
            return InvokeResponse(204, "")
        if invocation_type is InvocationType.EVENT:
            invocation = Invocation(function_name, text, invocation_type, trigger="async")
            self._enqueue(invocation)
            return InvokeResponse(202, invocation.request_id)
        return self._call(function, text, client_context, timeout_seconds)

    def _call(self, function: Function, text: str, client_context: str | None, timeout: float | None) -> InvokeResponse:
        name = function.function_name
        if function.reserved_concurrent_executions == 0:
            metrics.THROTTLES.labels(name, "function_limit").inc()
            raise TooManyRequests("Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded")
        invocation = Invocation(
            name, text, InvocationType.REQUEST_RESPONSE, trigger="sync", client_context=client_context
        )
        invocation = invocation.replace(reply_to=keys.reply(invocation.function_name, invocation.request_id))
        assert invocation.reply_to is not None
        wait = timeout if timeout is not None else function.timeout + QUEUE_WAIT_ALLOWANCE_SECONDS
        first_wait = min(wait, FIRST_WAIT_SECONDS)
        started = time.monotonic()
        try:  # the write and the first wait share a round trip: a fast call needs no other
            result = self.queue.enqueue_and_pop_reply(invocation, first_wait)
        except StoreError as error:
            raise self.refusal(invocation, error) from None
        if result is None:
            result = self.queue.wait_for_reply(invocation.reply_to, wait - (time.monotonic() - started))
        if result is None:
            raise InvocationTimedOut(f"no result for {invocation.request_id} within {wait:.0f} s; it may still run")
        if result.status is Status.THROTTLED:
            raise TooManyRequests("Rate Exceeded.", json.loads(result.payload)["Reason"])
        return InvokeResponse(200, result.request_id, result.payload, result.function_error, result.executed_version)

    def _enqueue(self, invocation: Invocation) -> None:
        try:
            self.queue.enqueue(invocation)
        except StoreError as error:
            raise self.refusal(invocation, error) from None

    def refusal(self, invocation: Invocation, error: StoreError) -> HeadwaterError:
        """Why `invocation` was not accepted, said plainly: a store refusing writes is a throttle
        (retry later, as after any 429); an unreachable one is a 503 that may have stored it.
        Public for callers that enqueue through the queue themselves (the API batches `Event`s)."""
        if not connection.refuses_writes(error):
            return StoreUnavailable(
                f"Headwater's Redis did not answer ({type(error).__name__}); the invocation may not have "
                "been accepted; retry (handlers must be idempotent)"
            )
        metrics.THROTTLES.labels(invocation.function_name, "store_refusing_writes").inc()
        return TooManyRequests(
            f"Rate Exceeded. Headwater's Redis is refusing writes ({str(error).split('.')[0]}); "
            "nothing was accepted; retry later",
            "ConcurrentInvocationLimitExceeded",
        )

    def _function(self, name: str) -> Function:
        function = self.config.function(name)
        if function is None:
            settings = self.config.headwater
            arn = invocation_records.function_arn(settings.region, settings.account_id, name)
            raise FunctionNotFound(f"Function not found: {arn}")
        return function
