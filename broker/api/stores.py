"""The stores of run-time configuration as the API's operations reach them.

The stores are synchronous (workers and pollers share them), so an operation calls them on a
worker thread, bounded like Invoke's Redis writes. A Redis that cannot answer is
`StoreUnavailable` (`ServiceException`, 503: nothing was changed, or the change is idempotent, so
an SDK's retry is safe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

from broker.api.invoke import ApiClient
from broker.api.operation import Call
from broker.connection import StoreError
from broker.errors import StoreUnavailable
from broker.function_overrides import FunctionOverrides
from broker.mapping_store import MappingStore

T = TypeVar("T")


def function_overrides(call: Call) -> FunctionOverrides:
    client = call.state.client
    return client.overrides.store if isinstance(client, ApiClient) else FunctionOverrides(client.redis)


def changed_function_overrides(call: Call) -> None:
    """This process changed the layer: its own Invoke must see the change at once."""
    client = call.state.client
    if isinstance(client, ApiClient):
        client.overrides.invalidate()


def mapping_store(call: Call) -> MappingStore:
    return MappingStore(call.state.client.redis)


async def run(call: Call, function: Callable[[], T]) -> T:
    try:
        return await anyio.to_thread.run_sync(function, limiter=call.state.invoke_threads)
    except StoreError as error:
        raise StoreUnavailable(
            f"Headwater's Redis did not answer ({type(error).__name__}); retry the request"
        ) from None
