"""The ASGI application: read the body, check the signature, route, answer, in that order.

Every answer carries `x-amzn-RequestId` (botocore's `ResponseMetadata.RequestId`), also bound to
every log line of the request. Errors are rendered once, here, in botocore's terms
(`broker.api.errors`); an unexpected exception is logged with its traceback and answered as
`ServiceException` without one. A body over Lambda's largest request (6 MB) is refused while it is
still arriving, before it is held in memory or its signature is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from broker.api import errors, sigv4
from broker.api.errors import ApiError
from broker.api.metrics import API_REQUEST_DURATION, API_REQUESTS
from broker.api.operation import ApiState, Call, Operation
from broker.errors import HeadwaterError
from broker.invocation import new_request_id
from broker.logs import get_logger
from broker.payload import REQUEST_RESPONSE_LIMIT_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
TICK_SECONDS = 1.0
log = get_logger(__name__)


class ClientGoneError(Exception):
    """The client disconnected before its request was read; there is no one to answer."""


class LambdaApi:
    """One process's API: stateless apart from `ApiState`'s connections, so replicas scale out."""

    def __init__(self, state: ApiState, operations: tuple[Operation, ...]) -> None:
        self.state = state
        self._routes: list[tuple[Operation, Route]] = [(operation, operation.route()) for operation in operations]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                body = await _read_body(receive, REQUEST_RESPONSE_LIMIT_BYTES)
            except ClientGoneError:
                return
            except ApiError as error:
                operation, response = "Unknown", error.response(request_id)
            else:
                operation, response = await self._answer(scope, body, request_id)
        if "x-amzn-requestid" not in response.headers:  # Invoke answers with the invocation's own id
            response.headers["x-amzn-RequestId"] = request_id
        API_REQUESTS.labels(operation, str(response.status_code)).inc()
        API_REQUEST_DURATION.labels(operation).observe(time.perf_counter() - started)
        await response(scope, receive, send)

    async def _answer(self, scope: Scope, body: bytes, request_id: str) -> tuple[str, Response]:
        operation_name = "Unknown"
        try:
            if self.state.access_keys is not None:
                sigv4.verify(_signed_request(scope, body), self.state.access_keys.secret)
            operation, child_scope = self._match(scope)
            operation_name = operation.name
            request = Request({**scope, **child_scope})
            return operation_name, await operation.handler(Call(request, body, self.state, request_id))
        except ApiError as error:
            return operation_name, error.response(request_id)
        except HeadwaterError as error:
            return operation_name, errors.from_headwater(error).response(request_id)
        except Exception:  # the one place an unforeseen error becomes an answer, logged in full
            log.exception("unexpected error answering a request", operation=operation_name)
            message = f"An internal error occurred (request id {request_id}); it was logged"
            return operation_name, ApiError("ServiceException", 500, message, error_type="Service").response(request_id)

    def _match(self, scope: Scope) -> tuple[Operation, dict[str, Any]]:
        for operation, route in self._routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return operation, dict(child_scope)
        raise errors.unknown_operation(str(scope.get("method", "")), str(scope.get("path", "")))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start the liveness tick `/healthz` watches; close the Redis clients on shutdown."""
        await receive()  # lifespan.startup
        ticker = asyncio.create_task(self._tick())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.state.stopping = True
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await self.state.redis.aclose()
        self.state.client.redis.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def _tick(self) -> None:
        while True:
            self.state.alive_at = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)


async def _read_body(receive: Receive, limit_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise ApiError(
                "RequestEntityTooLargeException",
                413,
                f"Request must be smaller than {limit_bytes} bytes for the InvokeFunction operation",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _signed_request(scope: Scope, body: bytes) -> sigv4.SignedRequest:
    """The request as it was signed: the raw path and query, never the decoded ones."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    return sigv4.SignedRequest(
        method=str(scope["method"]),
        raw_path=raw_path.decode("latin-1"),
        query_string=bytes(scope.get("query_string", b"")).decode("latin-1"),
        headers=[(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]],
        body=body,
    )
