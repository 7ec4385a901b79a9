"""The source suites' test harness, written once: a private Redis, a worker pool serving the contract's
functions with a suite's handler, the per-test `Stack` on them, the part of a sharded stream's
contract view that Kinesis and DynamoDB Streams share, and the SQS queue a stream mapping sends its
on-failure records to.

A suite with a Redis and a worker pool of its own (so that its pool never claims another suite's
jobs, nor theirs its jobs) keeps its fixtures in its conftest, named as its tests know them; their
bodies are these helpers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aioboto3
import pytest
from redis import Redis

from broker import keys
from tests.rig import RedisServer
from tests.rig.common import ManagedProcess, start_or_fail
from tests.sources.contract import REPO_ROOT, Stack, functions, session_worker_pool
from tests.waiting import eventually

BATCH_INFO_KEYS = [
    "shardId", "startSequenceNumber", "endSequenceNumber", "approximateArrivalOfFirstRecord",
    "approximateArrivalOfLastRecord", "batchSize", "streamArn",
]  # fmt: skip


def private_redis(name: str, scope: Literal["session", "module"] = "session") -> Any:
    """A fixture `name`: a redis-server of the suite's own, for `scope`."""

    def server() -> Iterator[RedisServer]:
        running = start_or_fail(RedisServer())
        yield running
        running.close()

    return pytest.fixture(scope=scope, name=name)(server)


@contextmanager
def serving_pool(label: str, redis_url: str, handler: str, processes: int) -> Iterator[ManagedProcess]:
    """`headwater worker` (prefetch 1) serving the contract's functions, each run by `handler`."""
    served = [dict(function, Handler=handler) for function in functions(redis_url)]
    with session_worker_pool(label, redis_url, served, processes) as pool:
        yield pool


def emptied(redis: RedisServer) -> str:
    """The URL of `redis`, restarted if an earlier test killed it and emptied (FLUSHALL) for this test."""
    if not redis.running:
        start_or_fail(redis)
    redis.flushall()
    return redis.url


@asynccontextmanager
async def running_stack(
    redis_url: str, source_env: dict[str, str], workers: ManagedProcess, directory: Path
) -> AsyncIterator[Stack]:
    """A test's `Stack` on `redis_url`, its pollers run with `source_env`; afterwards, its pollers
    stopped and the worker pool checked to be alive (a pool that died fails the test that killed it)."""
    env = {**os.environ, **source_env, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    running = Stack(redis_url, directory, env)
    yield running
    await running.close()
    assert workers.running, f"the worker pool died:\n{workers.describe_log()}"


class ShardedStreamHarness:
    """What the contract's views of Kinesis and DynamoDB Streams share: a mapping from the stream's
    start, and the records after each shard's checkpoint, read from the stream and the shard leases.
    A subclass names the shards, the stream (as its read calls want it) and a record's sequence number."""

    redelivery_seconds = 0.5  # nothing comes back while its batch is out: a shard waits for its batch
    retries_after_failure_in_place = True
    redelivers_in_order = True
    page_size = 1000  # GetRecords' Limit when reading a shard whole

    def __init__(self, reader: Any, redis: Redis) -> None:
        self.reader = reader  # the client with GetShardIterator and GetRecords
        self.redis = redis
        self.arn = ""

    async def shard_ids(self) -> list[str]:
        raise NotImplementedError

    def stream(self) -> dict[str, str]:
        """The stream's name in a read call (`StreamName=` or `StreamArn=`)."""
        raise NotImplementedError

    def sequence_number(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def mapping(self, function: str = "recorder", **fields: Any) -> dict[str, Any]:
        return {"FunctionName": function, "EventSourceArn": self.arn, "StartingPosition": "TRIM_HORIZON", **fields}

    async def unacknowledged(self) -> int:
        """Records after their shard's checkpoint (every record of a shard never checkpointed)."""
        uuid_ = self.mapping_uuid()
        total = 0
        for shard_id, sequences in (await self.records_by_shard()).items():
            checkpoint = self.redis.hget(keys.shard_lease(uuid_, shard_id), "checkpoint") if uuid_ else None
            after = int(checkpoint) if checkpoint else -1
            total += sum(1 for sequence in sequences if int(sequence) > after)
        return total

    async def records_by_shard(self) -> dict[str, list[str]]:
        """Every sequence number in the stream, per shard, read from its start."""
        found: dict[str, list[str]] = {}
        for shard_id in await self.shard_ids():
            start = await self.reader.get_shard_iterator(
                **self.stream(), ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )
            iterator = start["ShardIterator"]
            sequences: list[str] = []
            while iterator:
                answer = await self.reader.get_records(ShardIterator=iterator, Limit=self.page_size)
                sequences += [self.sequence_number(record) for record in answer["Records"]]
                if not answer["Records"]:
                    break
                iterator = answer.get("NextShardIterator")
            found[shard_id] = sequences
        return found

    def mapping_uuid(self) -> str | None:
        members = [key.decode() for key in self.redis.scan_iter(match=f"{keys.PREFIX}:shards:*")]
        return members[0].rsplit(":", 1)[1].strip("{}") if members else None  # headwater:shards:{<uuid>}


@dataclass
class FailureQueue:
    """An SQS queue (on moto) a mapping's OnFailure destination names, and the records sent to it."""

    client: Any
    url: str
    arn: str

    async def records(self, count: int) -> list[dict[str, Any]]:
        """At least `count` on-failure records, waited for (20 s at most)."""
        found: list[dict[str, Any]] = []

        async def enough() -> bool:
            answer = await self.client.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            found.extend(json.loads(message["Body"]) for message in answer.get("Messages", []))
            return len(found) >= count

        await eventually(enough, 20, lambda: f"{count} failure records, got {found}")
        return found


@asynccontextmanager
async def open_failure_queue() -> AsyncIterator[FailureQueue]:
    """A fresh queue on the SQS the environment points at (call it after `aws_env` has set it)."""
    async with aioboto3.Session().client("sqs") as client:
        url = (await client.create_queue(QueueName=f"failed-{time.monotonic_ns()}"))["QueueUrl"]
        attributes = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        yield FailureQueue(client, url, attributes["Attributes"]["QueueArn"])


def given_up_batch(record: dict[str, Any], info_key: str, invocations: int) -> dict[str, Any]:
    """Check a stream mapping's on-failure record for a batch given up after `invocations` failed
    invocations (Lambda's shape, lambda-semantics.md §3.2); returns its batch information (`info_key`)."""
    assert list(record) == ["requestContext", "responseContext", "version", "timestamp", info_key]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == invocations
    assert record["responseContext"]["functionError"] == "Unhandled"
    info: dict[str, Any] = record[info_key]
    assert list(info) == BATCH_INFO_KEYS
    return info


def none_left(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[bool]]:
    """A condition for `Stack.wait_for`: `count()` (e.g. a harness's `unacknowledged`) is zero."""

    async def zero() -> bool:
        return await count() == 0

    return zero
