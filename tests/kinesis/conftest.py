"""Fixtures for the Kinesis tests: kinesalite beside moto, a Redis and a worker pool of their own,
and a harness per Kinesis implementation.

The worker pool serves the contract's functions with `tests.kinesis.handler` (the shared recorder
fed Kinesis events). It has its own Redis so that it never claims the SQS and Kafka tests' jobs,
nor theirs its jobs, when both suites run in one session.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from redis import Redis

from broker import keys
from tests.rig import KinesaliteServer, MotoServer, RedisServer
from tests.rig.common import ManagedProcess, start_or_fail
from tests.sources.contract import REPO_ROOT, Stack, functions, session_worker_pool

HANDLER = "tests.kinesis.handler.handle"
WORKER_PROCESSES = 2
LEASE_SECONDS = 2.0  # shard leases in these tests: a dead replica's shards move within this


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[KinesaliteServer]:
    server = start_or_fail(KinesaliteServer())
    yield server
    server.close()


@pytest.fixture(scope="session")
def kinesis_redis() -> Iterator[RedisServer]:
    server = start_or_fail(RedisServer())
    yield server
    server.close()


@pytest.fixture(scope="session")
def kinesis_workers(kinesis_redis: RedisServer, moto_server: MotoServer) -> Iterator[ManagedProcess]:
    """`headwater worker`, two processes, prefetch 1, serving the contract's functions with our handler."""
    served = [dict(function, Handler=HANDLER) for function in functions(kinesis_redis.url)]
    with session_worker_pool("kinesis-workers", kinesis_redis.url, served, WORKER_PROCESSES) as pool:
        yield pool


@pytest.fixture(params=["moto", "kinesalite"])
def kinesis_endpoint(
    request: pytest.FixtureRequest, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The AWS environment for one Kinesis implementation (moto's server, or kinesalite)."""
    env = dict(aws_env)
    if request.param == "kinesalite":
        env["AWS_ENDPOINT_URL_KINESIS"] = request.getfixturevalue("kinesalite").endpoint_url
    env["HEADWATER_SHARD_LEASE_SECONDS"] = str(LEASE_SECONDS)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
async def stack(
    kinesis_redis: RedisServer, kinesis_endpoint: dict[str, str], kinesis_workers: ManagedProcess, tmp_path: Path
) -> AsyncIterator[Stack]:
    if not kinesis_redis.running:
        start_or_fail(kinesis_redis)
    kinesis_redis.flushall()
    env = {**os.environ, **kinesis_endpoint, "HEADWATER_REDIS_URL": kinesis_redis.url, "PYTHONPATH": str(REPO_ROOT)}
    running = Stack(kinesis_redis.url, tmp_path, env)
    yield running
    await running.close()
    assert kinesis_workers.running, f"the worker pool died:\n{kinesis_workers.describe_log()}"


@pytest.fixture
async def kinesis(kinesis_endpoint: dict[str, str]) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("kinesis") as client:
        yield client


class KinesisHarness:
    """The contract's view of Kinesis: a fresh stream per test; records of one lane share a partition key."""

    redelivery_seconds = 0.5  # nothing comes back while its batch is out: a shard waits for its batch
    retries_after_failure_in_place = True
    redelivers_in_order = True

    def __init__(self, client: Any, redis: Redis, shards: int = 1) -> None:
        self.client = client
        self.redis = redis
        self.shards = shards
        self.name = f"stream-{uuid.uuid4().hex[:10]}"
        self.arn = ""

    async def create(self, *, ordered: bool = False, shards: int | None = None) -> None:
        await self.client.create_stream(StreamName=self.name, ShardCount=shards or self.shards)
        waiter = self.client.get_waiter("stream_exists")
        await waiter.wait(StreamName=self.name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
        summary = await self.client.describe_stream_summary(StreamName=self.name)
        self.arn = summary["StreamDescriptionSummary"]["StreamARN"]

    async def send(self, bodies: list[dict[str, Any]], lane: str | None = None) -> list[dict[str, Any]]:
        """Put records in order (one PutRecords call per 500); returns their shard ids and sequence numbers."""
        written = []
        for start in range(0, len(bodies), 500):
            entries = [{"Data": json.dumps(body).encode(), "PartitionKey": lane or body.get("key", "p")}
                       for body in bodies[start : start + 500]]  # fmt: skip
            answer = await self.client.put_records(StreamName=self.name, Records=entries)
            assert not answer.get("FailedRecordCount"), answer
            written += answer["Records"]
        return written

    def mapping(self, function: str = "recorder", **fields: Any) -> dict[str, Any]:
        return {"FunctionName": function, "EventSourceArn": self.arn, "StartingPosition": "TRIM_HORIZON", **fields}

    async def unacknowledged(self) -> int:
        """Records after their shard's checkpoint (every record of a shard never checkpointed)."""
        total = 0
        for shard_id, sequences in (await self.records_by_shard()).items():
            uuid_ = self.mapping_uuid()
            checkpoint = self.redis.hget(keys.shard_lease(uuid_, shard_id), "checkpoint") if uuid_ else None
            after = int(checkpoint) if checkpoint else -1
            total += sum(1 for sequence in sequences if int(sequence) > after)
        return total

    async def records_by_shard(self) -> dict[str, list[str]]:
        shards = (await self.client.list_shards(StreamName=self.name))["Shards"]
        found: dict[str, list[str]] = {}
        for shard in shards:
            iterator = (
                await self.client.get_shard_iterator(
                    StreamName=self.name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            sequences: list[str] = []
            while iterator:
                answer = await self.client.get_records(ShardIterator=iterator, Limit=10000)
                sequences += [record["SequenceNumber"] for record in answer["Records"]]
                if not answer["Records"]:
                    break
                iterator = answer.get("NextShardIterator")
            found[shard["ShardId"]] = sequences
        return found

    def mapping_uuid(self) -> str | None:
        members = [key.decode() for key in self.redis.scan_iter(match=f"{keys.PREFIX}:shards:*")]
        return members[0].rsplit(":", 1)[1] if members else None

    def check_event(self, event: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        check_kinesis_event(event["kinesisEvent"], bodies, self.arn)


def check_kinesis_event(event: dict[str, Any], bodies: list[dict[str, Any]], arn: str) -> None:
    """Lambda's Kinesis event (spec §2.2), field for field."""
    assert list(event) == ["Records"]
    records = event["Records"]
    assert [json.loads(base64.b64decode(record["kinesis"]["data"])) for record in records] == bodies
    for record in records:
        assert list(record) == [
            "kinesis", "eventSource", "eventVersion", "eventID", "eventName", "invokeIdentityArn",
            "awsRegion", "eventSourceARN",
        ]  # fmt: skip
        kinesis = record["kinesis"]
        assert list(kinesis) == [
            "kinesisSchemaVersion", "partitionKey", "sequenceNumber", "data", "approximateArrivalTimestamp",
        ]  # fmt: skip
        assert kinesis["kinesisSchemaVersion"] == "1.0"
        assert isinstance(kinesis["sequenceNumber"], str)
        assert kinesis["sequenceNumber"].isdigit()
        assert isinstance(kinesis["approximateArrivalTimestamp"], float)
        assert abs(kinesis["approximateArrivalTimestamp"] - time.time()) < 120
        assert round(kinesis["approximateArrivalTimestamp"], 3) == kinesis["approximateArrivalTimestamp"]
        assert record["eventID"] == f"shardId-000000000000:{kinesis['sequenceNumber']}"
        assert (record["eventSource"], record["eventVersion"], record["eventName"]) == (
            "aws:kinesis", "1.0", "aws:kinesis:record",
        )  # fmt: skip
        assert record["invokeIdentityArn"] == "arn:aws:iam::000000000000:role/recorder"
        assert (record["awsRegion"], record["eventSourceARN"]) == ("us-east-1", arn)


@pytest.fixture
async def harness(kinesis: Any, stack: Stack) -> KinesisHarness:
    return KinesisHarness(kinesis, stack.redis)
