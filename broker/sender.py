"""Pollers hand batches to workers through the invocation queue, and await the result here.

A batch is a RequestResponse invocation with a reply key. The wait has no deadline of its own:
a batch may sit behind a backlog, and its source keeps it alive meanwhile (SQS visibility, Kafka
paused partition). If the poller dies while waiting, the batch was never acknowledged, so its
records come back from the source: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis import Redis
from redis import asyncio as redis_async

from broker import keys
from broker.model import Invocation, InvocationType, Result
from broker.queue import BLOCK_SLICE_SECONDS, InvocationQueue


class Sender:
    def __init__(self, redis_url: str) -> None:
        self._queue = InvocationQueue(Redis.from_url(redis_url))
        self._redis = redis_async.from_url(redis_url)

    async def invoke(self, function_name: str, event: dict[str, Any], trigger: str) -> Result:
        invocation = Invocation(function_name, json.dumps(event), InvocationType.REQUEST_RESPONSE, trigger=trigger)
        reply_to = keys.reply(invocation.request_id)
        await asyncio.to_thread(self._queue.enqueue, invocation.replace(reply_to=reply_to))
        while True:
            popped = await self._redis.blpop([reply_to], timeout=BLOCK_SLICE_SECONDS)
            if popped is not None:
                return Result.from_wire(popped[1])

    async def close(self) -> None:
        await self._redis.aclose()
        self._queue.redis.close()
