"""A bridge from the synchronous worker loop to the asyncio destination kinds.

Destinations are written once, for asyncio (the pollers use them too); a worker runs them on a
private event loop in a thread, which keeps one open client per target across invocations.

`send` raises `DestinationError` and nothing else: the caller keeps the event and retries it. A
destination kind is meant to turn each of its failures into that error itself; anything else that
escapes one is a bug, logged here with its traceback and still reported as a failed write, so a
worker never crash-loops on a record it could not deliver.

The AWS SDK (aioboto3, with botocore, aiobotocore and aiohttp) is most of an idle worker's memory,
and most functions never send to AWS: the session is made, and the SDK imported, when the first
destination that needs AWS opens a client.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from broker.connection import connect_async
from broker.destinations.base import DeliveryContext, Message
from broker.destinations.dispatcher import Dispatcher
from broker.errors import DestinationError
from broker.logs import get_logger
from broker.queue import InvocationQueue

SEND_TIMEOUT_SECONDS = 30.0
log = get_logger(__name__)


class AwsSessionOnFirstUse:
    """An aioboto3 session for `DeliveryContext.aws_session` that imports the SDK on its first `client`."""

    def __init__(self) -> None:
        self._session: Any = None

    def client(self, *arguments: Any, **options: Any) -> Any:
        if self._session is None:
            import aioboto3  # noqa: PLC0415 - the SDK loads with the first AWS client (module docstring)

            self._session = aioboto3.Session()
        return self._session.client(*arguments, **options)


class Deliveries:
    def __init__(self, redis_url: str, queue: InvocationQueue) -> None:
        self._queue = queue
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="deliveries", daemon=True)
        self._thread.start()
        context = DeliveryContext(redis=connect_async(redis_url), aws_session=AwsSessionOnFirstUse(), queue=queue)
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

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._dispatcher.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
