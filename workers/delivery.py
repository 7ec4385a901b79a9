"""A bridge from the synchronous worker loop to the asyncio destination kinds.

Destinations are written once, for asyncio (the pollers use them too); a worker runs them on a
private event loop in a thread, which keeps one open client per target across invocations.

`send` raises `DestinationError` and nothing else: the caller keeps the event and retries it. A
destination kind is meant to turn each of its failures into that error itself; anything else that
escapes one is a bug, logged here with its traceback and still reported as a failed write, so a
worker never crash-loops on a record it could not deliver.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import TimeoutError as FutureTimeout

import aioboto3

from broker.connection import connect_async
from broker.destinations.base import DeliveryContext, Message
from broker.destinations.dispatcher import Dispatcher
from broker.errors import DestinationError
from broker.logs import get_logger
from broker.model import Invocation, InvocationType
from broker.queue import InvocationQueue

SEND_TIMEOUT_SECONDS = 30.0
log = get_logger(__name__)


class Deliveries:
    def __init__(self, redis_url: str, queue: InvocationQueue) -> None:
        self._queue = queue
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="deliveries", daemon=True)
        self._thread.start()
        context = DeliveryContext(
            redis=connect_async(redis_url), aws_session=aioboto3.Session(), enqueue_event=self._enqueue_event
        )
        self._dispatcher = Dispatcher(context)

    def send(self, target: str, message: Message) -> None:
        """Deliver or raise `DestinationError` (a timeout counts as a failed delivery)."""
        future = asyncio.run_coroutine_threadsafe(self._dispatcher.send(target, message), self._loop)
        try:
            future.result(timeout=SEND_TIMEOUT_SECONDS)
        except FutureTimeout:
            future.cancel()
            raise DestinationError(f"{target}: no answer within {SEND_TIMEOUT_SECONDS:.0f} s") from None
        except DestinationError:
            raise
        except Exception as error:
            log.exception("destination raised an unexpected error; counted as a failed write", target=target)
            raise DestinationError(f"{target}: unexpected {type(error).__name__}: {error}") from error

    async def _enqueue_event(self, function_name: str, body: str) -> None:
        invocation = Invocation(function_name, body, InvocationType.EVENT, trigger="async")
        await asyncio.to_thread(self._queue.enqueue, invocation)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._dispatcher.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
