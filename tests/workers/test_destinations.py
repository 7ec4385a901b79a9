"""Destination kinds against real Redis, moto and the network: every failure is a `DestinationError`
(which the caller keeps and retries), and nothing written is ever dropped behind a reader's back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
import boto3
import pytest

from broker.connection import connect, connect_async
from broker.destinations.base import DeliveryContext, Message
from broker.destinations.dispatcher import Dispatcher
from broker.errors import DestinationError
from broker.queue import InvocationQueue
from tests.rig import RedisServer
from tests.rig.common import free_port

FUNCTION_ARN = "arn:aws:lambda:us-east-1:000000000000:function:orders"


@asynccontextmanager
async def dispatcher(redis_url: str, *, queue_url: str | None = None) -> AsyncIterator[Dispatcher]:
    """A dispatcher wired as the poller wires it: function targets enqueue on `queue_url`'s Redis."""
    queue = InvocationQueue(connect(queue_url or redis_url))
    redis = connect_async(redis_url)
    context = DeliveryContext(redis, aioboto3.Session(), queue)
    sending = Dispatcher(context)
    try:
        yield sending
    finally:
        await sending.close()
        await redis.aclose()
        queue.redis.close()


@asynccontextmanager
async def refusing_writes(redis_server: RedisServer) -> AsyncIterator[None]:
    """Redis at `maxmemory` with `noeviction`: every write is answered `-OOM`."""
    redis_server.set_maxmemory(1)
    try:
        yield
    finally:
        redis_server.set_maxmemory(0)


def closed_url(scheme: str = "redis") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def first_id(entries: Any) -> bytes:
    [(entry_id, _)] = entries
    return bytes(entry_id)


async def refusal(send: Callable[[], Any]) -> DestinationError:
    with pytest.raises(DestinationError) as caught:
        await send()
    return caught.value


# -- redis-stream:// ------------------------------------------------------------------------------
async def test_a_redis_stream_is_never_trimmed_behind_its_reader(redis_url: str) -> None:
    unread = 100_200  # past the old `MAXLEN ~100000`, by more than one of Redis's 100-entry stream nodes
    redis = connect(redis_url)
    for start in range(0, unread, 10_000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 10_000, unread)):
            pipe.xadd("failed", {"body": str(n)})
        pipe.execute()
    oldest = first_id(redis.xrange("failed", count=1))

    async with dispatcher(redis_url) as sending:
        await sending.send("redis-stream://failed", Message(body="one more"))

    assert redis.xlen("failed") == unread + 1
    assert first_id(redis.xrange("failed", count=1)) == oldest
    redis.close()


async def test_a_redis_stream_that_cannot_be_written_raises_destination_error(
    redis_url: str, redis_server: RedisServer
) -> None:
    message = Message(body="{}", attributes={"ErrorCode": ("String", "500")})
    async with dispatcher(closed_url()) as sending:
        unreachable = await refusal(lambda: sending.send("redis-stream://failed", message))
    async with dispatcher(redis_url) as sending, refusing_writes(redis_server):
        refused = await refusal(lambda: sending.send("redis-stream://failed", message))

    assert "redis-stream://failed" in unreachable.message
    assert "maxmemory" in refused.message


# -- a function ARN --------------------------------------------------------------------------------
async def test_a_function_destination_turns_every_store_failure_into_destination_error(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with dispatcher(redis_url, queue_url=closed_url()) as sending:
        unreachable = await refusal(lambda: sending.send(FUNCTION_ARN, Message(body="{}")))
    async with dispatcher(redis_url) as sending, refusing_writes(redis_server):
        refused = await refusal(lambda: sending.send(FUNCTION_ARN, Message(body="{}")))
    async with dispatcher(redis_url) as sending:
        await sending.send(FUNCTION_ARN, Message(body='{"n": 1}'))

    assert unreachable.message.startswith("function orders:")
    assert refused.message.startswith("function orders:")
    assert InvocationQueue(connect(redis_url)).depth("orders") == 1  # only the write Redis accepted


# -- SQS -------------------------------------------------------------------------------------------
async def test_an_sqs_destination_raises_destination_error_for_aws_and_network_failures(
    redis_url: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="failed")["QueueUrl"]
    async with dispatcher(redis_url) as sending:
        await sending.send("arn:aws:sqs:us-east-1:123456789012:failed", Message(body='{"n": 1}'))
        missing = await refusal(lambda: sending.send("arn:aws:sqs:us-east-1:123456789012:gone", Message(body="{}")))
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_url("http"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    async with dispatcher(redis_url) as sending:
        unreachable = await refusal(lambda: sending.send(url, Message(body="{}")))

    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == ['{"n": 1}']
    assert "NonExistentQueue" in missing.message or "does not exist" in missing.message
    assert "Could not connect" in unreachable.message


# -- kafka:// ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("servers", "reason"),
    [
        (f"127.0.0.1:{free_port()}", "Unable to bootstrap"),  # nothing listens there
        ("kafka:not-a-port", "not-a-port"),  # aiokafka raises ValueError for this, on start
    ],
)
async def test_a_kafka_destination_raises_destination_error_when_its_cluster_fails(
    redis_url: str, servers: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_KAFKA_BOOTSTRAP_SERVERS", servers)  # the cluster of `kafka://` targets
    async with dispatcher(redis_url) as sending:
        error = await refusal(lambda: sending.send("kafka://failed", Message(body="{}", key=b"k")))
    assert error.message.startswith("Kafka topic failed:")
    assert reason in error.message
