"""Invoke: `POST /2015-03-31/functions/{FunctionName}/invocations`, answered as Lambda answers it.

`RequestResponse` is 200 with the function's result (also when it failed: `X-Amz-Function-Error:
Unhandled`), `Event` 202 once the event is stored, `DryRun` 204 after every check; as on Lambda,
`x-amzn-RequestId` is the invocation's request id (`context.aws_request_id`). A request is
refused (4xx) before anything is stored; once a synchronous invocation is stored, the answer is never
a 5xx, because SDKs retry those and the function would run again: a result that cannot be had (the
wait ran out, Redis went away) is a 200 function error saying the invocation may still run.

`Event` requests arriving together share their Redis writes: while one batch is being stored, the
next ones wait and then go in one pipeline (`EventBatcher`), so a busy API process pays one thread
hop and one round trip per batch rather than per event. A lone event goes at once, alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
from starlette.responses import Response

from broker import keys, metrics, payload
from broker.api import errors, names
from broker.api.operation import Call, Operation
from broker.client import QUEUE_WAIT_ALLOWANCE_SECONDS, Client
from broker.config import Config, Function
from broker.connection import StoreError
from broker.errors import HeadwaterError, TooManyRequests
from broker.function_overrides import FunctionOverrides, OverridesView
from broker.invocation import Invocation, InvocationType, Result, Status
from broker.logs import get_logger

if TYPE_CHECKING:
    from redis import Redis

INVOCATION_TYPES = tuple(member.value for member in InvocationType)
LOG_TYPES = ("None", "Tail")
REPLY_SLICE_SECONDS = 2.0  # one BLPOP at a time: a socket read never waits on Redis for long
EVENT_BATCH_MOST = 256  # events per pipeline: bounds one round trip's size and the answer it delays
log = get_logger(__name__)


class ApiClient(Client):
    """The Python client, plus what the API needs on its own: storing a synchronous invocation
    without waiting for it, so the wait happens on the event loop; and the functions' settings
    stored through the API (`overrides`), so a reserved concurrency of 0 is refused here at once."""

    def __init__(self, config: Config, redis: Redis | str) -> None:
        super().__init__(config, redis)
        self.overrides = OverridesView(FunctionOverrides(self.redis))
        self.events = EventBatcher(self)

    def store_events(self, invocations: Sequence[Invocation]) -> list[HeadwaterError | None]:
        """Store checked `Event` invocations in one round trip; per invocation, None (accepted) or
        the error to answer with, as `Client.invoke` would have raised it."""
        try:
            outcomes = self.queue.enqueue_many(invocations)
        except StoreError as error:  # the connection failed: any of them may be stored
            return [self.refusal(invocation, error) for invocation in invocations]
        answers: list[HeadwaterError | None] = []
        for invocation, outcome in zip(invocations, outcomes, strict=True):
            if isinstance(outcome, str):
                answers.append(None)
            elif isinstance(outcome, StoreError):
                answers.append(self.refusal(invocation, outcome))
            elif isinstance(outcome, HeadwaterError):
                answers.append(outcome)
            else:
                raise outcome
        return answers

    def submit(self, function: Function, text: str, client_context: str | None, tail_log: bool) -> Invocation:
        name = function.function_name
        if self.overrides.apply(function).reserved_concurrent_executions == 0:
            metrics.THROTTLES.labels(name, "function_limit").inc()
            raise TooManyRequests("Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded")
        invocation = Invocation(
            name,
            text,
            InvocationType.REQUEST_RESPONSE,
            trigger="sync",
            client_context=client_context,
            tail_log=tail_log,
        )
        invocation = invocation.replace(reply_to=keys.reply(invocation.function_name, invocation.request_id))
        self._enqueue(invocation)
        return invocation


async def invoke(call: Call) -> Response:
    ref = names.parse(call.path_params["FunctionName"], call.query("Qualifier"))
    requested = _enum(call, "x-amz-invocation-type", "invocationType", INVOCATION_TYPES, "RequestResponse")
    invocation_type = InvocationType(requested)
    tail = _enum(call, "x-amz-log-type", "logType", LOG_TYPES, "None") == "Tail"
    function = names.resolve(call.state.config, ref, unqualified_suffix=names.LATEST)
    text = payload.check(payload.to_text(call.body) if call.body else "{}", invocation_type)
    client_context = payload.check_client_context(call.header("x-amz-client-context"))
    if invocation_type is InvocationType.DRY_RUN:
        return Response(status_code=204)
    client = call.state.client
    assert isinstance(client, ApiClient)
    if invocation_type is InvocationType.EVENT:  # checked above already: straight to the queue, as Client.invoke would
        invocation = Invocation(function.function_name, text, invocation_type, trigger="async")
        await client.events.store(invocation, call.state.invoke_threads)
        return Response(status_code=202, headers={"x-amzn-RequestId": invocation.request_id})
    invocation = await anyio.to_thread.run_sync(
        client.submit, function, text, client_context, tail, limiter=call.state.invoke_threads
    )
    return await _answer(call, function, invocation)


class EventBatcher:
    """Stores concurrent `Event` invocations together: one flusher at a time takes every invocation
    waiting (up to `EVENT_BATCH_MOST`) to a worker thread and one Redis pipeline, and answers each
    request with its own outcome. Requests arriving meanwhile form the next batch."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client
        self._waiting: list[tuple[Invocation, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def store(self, invocation: Invocation, limiter: anyio.CapacityLimiter) -> None:
        """Return once `invocation` is stored; raise what `Client.invoke` would have raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((invocation, future))
        if self._flusher is None:  # in a context of its own: not bound to the first request's log fields
            self._flusher = asyncio.create_task(self._flush(limiter), context=contextvars.Context())
        await future

    async def _flush(self, limiter: anyio.CapacityLimiter) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:EVENT_BATCH_MOST]
                del self._waiting[:EVENT_BATCH_MOST]
                try:
                    outcomes: Sequence[BaseException | None] = await anyio.to_thread.run_sync(
                        self._client.store_events, [invocation for invocation, _ in batch], limiter=limiter
                    )
                except asyncio.CancelledError:  # shutting down: nobody will answer these requests
                    for _, future in batch + self._waiting:
                        future.cancel()
                    raise
                except Exception as error:  # each request answers it, as an unforeseen error of its own
                    log.exception("storing a batch of events failed unexpectedly", events=len(batch))
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # the request was cancelled meanwhile
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self._flusher = None


async def _answer(call: Call, function: Function, invocation: Invocation) -> Response:
    """The stored invocation's result as Lambda's 200 (or 429 when it was throttled unrun).
    Nothing raised here may become a 5xx: the function may have run."""
    wait_seconds = function.timeout + QUEUE_WAIT_ALLOWANCE_SECONDS
    try:
        result = await _wait_for_result(call, invocation, wait_seconds)
    except StoreError as error:
        log.warning("result not received: Redis failed", request_id=invocation.request_id, error=str(error))
        result = _unavailable(invocation, f"Headwater's Redis failed while waiting ({type(error).__name__})")
    if result is None:
        result = _unavailable(invocation, f"no result within {wait_seconds:.0f} s")
    if result.status is Status.THROTTLED:
        raise TooManyRequests("Rate Exceeded.", _reason(result))
    headers = {"x-amzn-RequestId": invocation.request_id, "X-Amz-Executed-Version": result.executed_version}
    if result.function_error:
        headers["X-Amz-Function-Error"] = result.function_error
    if invocation.tail_log and result.log_tail is not None:
        headers["X-Amz-Log-Result"] = base64.b64encode(result.log_tail.encode("utf-8", "surrogatepass")).decode()
    return Response(result.payload, 200, headers, media_type="application/json")


async def _wait_for_result(call: Call, invocation: Invocation, wait_seconds: float) -> Result | None:
    assert invocation.reply_to is not None
    deadline = time.monotonic() + wait_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        popped = await call.state.redis.blpop([invocation.reply_to], timeout=min(remaining, REPLY_SLICE_SECONDS))
        if popped is not None:
            return Result.from_wire(popped[1])
    return None


def _unavailable(invocation: Invocation, why: str) -> Result:
    """A function error in Lambda's shape for a result we could not get: never a 5xx (see above)."""
    body = {
        "errorType": "Headwater.ResultUnavailable",
        "errorMessage": f"RequestId: {invocation.request_id} Error: {why}; the invocation is stored and may "
        "still run (handlers must be idempotent)",
    }
    return Result(invocation.request_id, Status.FUNCTION_ERROR, json.dumps(body), "Headwater.ResultUnavailable")


def _reason(result: Result) -> str:
    try:
        return str(json.loads(result.payload)["Reason"])
    except (ValueError, KeyError, TypeError):
        return "ReservedFunctionConcurrentInvocationLimitExceeded"


def _enum(call: Call, header: str, member: str, allowed: tuple[str, ...], default: str) -> str:
    value = call.header(header)
    if value is None:
        return default
    if value not in allowed:
        raise errors.validation(
            f"Value '{value[:64]}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(allowed)}]"
        )
    return value


OPERATIONS = (Operation("Invoke", "POST", "/2015-03-31/functions/{FunctionName}/invocations", invoke),)
