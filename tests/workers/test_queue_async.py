"""The invocation queue's asyncio producer on a real Redis: it stores the very job the synchronous
queue stores (a worker claims and completes it), answers a fast call in the write's round trip,
survives Redis losing its scripts, and refuses a durable write that too few replicas hold."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis import Redis

from broker import keys
from broker.connection import connect_async
from broker.errors import StoreUnavailable
from broker.invocation import Invocation, InvocationType, Result, Status
from broker.queue import InvocationQueue
from broker.queue_async import AsyncInvocationQueue

# Long enough that no lease lapses between two steps on a loaded machine (see test_queue_protocol).
TTL_SECONDS = 60.0


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[AsyncInvocationQueue]:
    queue = AsyncInvocationQueue(connect_async(redis_url))
    yield queue
    await queue.close()


def call(payload: str = '{"n": 1}') -> Invocation:
    invocation = Invocation("f", payload, InvocationType.REQUEST_RESPONSE, trigger="test")
    return invocation.replace(reply_to=keys.reply("f", invocation.request_id))


def answer(redis: Redis, payload: str = '"done"') -> tuple[str, Result]:
    """A worker's turn: claim the one queued job and complete it with a reply to its caller."""
    workers = InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS)
    workers.heartbeat("w", ["f"])
    [claim] = workers.claim("w", ["f"], 1).claims
    reply_to = claim.invocation.reply_to
    assert reply_to is not None
    result = Result(claim.invocation.request_id, Status.SUCCESS, payload)
    assert workers.complete("w", claim, reply=(reply_to, result)).applied
    return claim.job_id, result


async def test_a_worker_runs_what_the_async_producer_stored_and_its_reply_is_popped(
    producer: AsyncInvocationQueue, redis: Redis
) -> None:
    invocation = call()
    sent = await producer.enqueue_and_pop_reply(invocation, 0.05)
    assert sent.result is None  # nobody has answered yet
    assert await producer.job_pending("f", sent.job_id)

    claimed_id, result = answer(redis)

    assert claimed_id == sent.job_id
    assert not await producer.job_pending("f", sent.job_id)  # gone with its completion
    assert invocation.reply_to is not None
    assert await producer.pop_reply(invocation.reply_to, 1.0) == result
    assert await producer.take_reply(invocation.reply_to) is None  # popped once


async def test_a_reply_already_there_comes_back_in_the_writes_round_trip(
    producer: AsyncInvocationQueue, redis: Redis
) -> None:
    invocation = call()
    assert invocation.reply_to is not None
    early = Result(invocation.request_id, Status.SUCCESS, '"early"')
    redis.rpush(invocation.reply_to, early.to_wire())

    sent = await producer.enqueue_and_pop_reply(invocation, 1.0)

    assert sent.result == early
    assert await producer.job_pending("f", sent.job_id)  # the job was stored all the same


async def test_a_redis_that_lost_its_scripts_stores_the_job_once(producer: AsyncInvocationQueue, redis: Redis) -> None:
    """After a restart (here SCRIPT FLUSH) the pipelined write meets NOSCRIPT, which ran nothing:
    it is sent again with the script, not reported, and the job is stored exactly once."""
    await producer.enqueue(call())  # the script is known to Redis...
    redis.script_flush()  # ...and forgotten
    redis.delete(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name("f"))

    sent = await producer.enqueue_and_pop_reply(call(), 0.05)

    assert sent.result is None
    assert redis.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name("f")) == 1
    assert await producer.job_pending("f", sent.job_id)


async def test_a_quarantined_job_is_not_pending(producer: AsyncInvocationQueue, redis: Redis) -> None:
    job_id = await producer.enqueue(call())
    workers = InvocationQueue(redis, heartbeat_ttl_seconds=TTL_SECONDS)
    workers.heartbeat("w", ["f"])
    [claim] = workers.claim("w", ["f"], 1).claims
    assert workers.quarantine("w", claim.entry, "a test sets it aside")

    assert not await producer.job_pending("f", job_id)


async def test_a_durable_write_no_replica_acknowledged_is_refused(redis_url: str, redis: Redis) -> None:
    """The test Redis has no replica: WAIT reaches 0 of 1, so the caller is told to retry (the job
    itself is on the primary, as the synchronous queue leaves it)."""
    durable = AsyncInvocationQueue(connect_async(redis_url), durable_replicas=1, durable_wait_timeout_ms=20)
    try:
        with pytest.raises(StoreUnavailable, match="reached 0 of 1 required replica"):
            await durable.enqueue_and_pop_reply(call(), 0.05)
    finally:
        await durable.close()
    assert redis.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name("f")) == 1
