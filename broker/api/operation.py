"""What every operation module builds on: an `Operation` (method, path, handler) and the `Call` a
handler receives, holding the request as it arrived and the process-wide `ApiState`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.config import Config

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from redis import asyncio as redis_async

    from broker.api.access_keys import AccessKeys
    from broker.client import Client

Handler = Callable[["Call"], Awaitable[Response]]


@dataclass
class ApiState:
    """Everything an API process shares between requests. Nothing here outlives the process: every
    replica reads the same configuration file and the same Redis, so replicas are interchangeable."""

    config: Config
    client: Client  # the Python client: the same checks and queue as `headwater invoke`
    redis: redis_async.Redis  # waits for synchronous results without parking a thread
    access_keys: AccessKeys | None  # None: --no-auth
    config_modified_at: float  # the configuration file's mtime: FunctionConfiguration.LastModified
    invoke_threads: CapacityLimiter  # bounds the threads blocking on Redis writes at once
    alive_at: float = field(default_factory=time.monotonic)
    stopping: bool = False


@dataclass(frozen=True)
class Call:
    """One request routed to its operation; the body was read (and its signature checked) already."""

    request: Request
    body: bytes
    state: ApiState
    request_id: str

    @property
    def path_params(self) -> dict[str, str]:
        return {key: str(value) for key, value in self.request.path_params.items()}

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)


@dataclass(frozen=True)
class Operation:
    """One Lambda API operation: its model name (for metrics and logs), method, path and handler.
    The path is botocore's `requestUri` with `{Name}` placeholders, matched on the decoded path."""

    name: str
    method: str
    path: str
    handler: Handler

    def route(self) -> Route:
        return Route(self.path, endpoint=self._never_called, methods=[self.method], include_in_schema=False)

    @staticmethod
    async def _never_called(request: Request) -> Response:  # routes only match; `App` dispatches
        raise NotImplementedError
