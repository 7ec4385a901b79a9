"""Fixtures for the Kinesis tests: kinesalite beside moto, a Redis and a worker pool of their own,
and a harness per Kinesis implementation.

The worker pool serves the contract's functions with `tests.kinesis.handler` (the shared recorder
fed Kinesis events). It has its own Redis so that it never claims the SQS and Kafka tests' jobs,
nor theirs its jobs, when both suites run in one session.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from redis import Redis

from tests.harness import ShardedStreamHarness, emptied, private_redis, running_stack, serving_pool
from tests.rig import KinesaliteServer, MotoServer, RedisServer
from tests.rig.common import ManagedProcess, start_or_fail
from tests.sources.contract import Stack

HANDLER = "tests.kinesis.handler.handle"
WORKER_PROCESSES = 2
LEASE_SECONDS = 2.0  # shard leases in these tests: a dead replica's shards move within this


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[KinesaliteServer]:
    server = start_or_fail(KinesaliteServer())
    yield server
    server.close()


kinesis_redis = private_redis("kinesis_redis")


@pytest.fixture(scope="session")
def kinesis_workers(kinesis_redis: RedisServer, moto_server: MotoServer) -> Iterator[ManagedProcess]:
    """`headwater worker`, two processes, prefetch 1, serving the contract's functions with our handler."""
    with serving_pool("kinesis-workers", kinesis_redis.url, HANDLER, WORKER_PROCESSES) as pool:
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
    async with running_stack(emptied(kinesis_redis), kinesis_endpoint, kinesis_workers, tmp_path) as running:
        yield running


@pytest.fixture
async def kinesis(kinesis_endpoint: dict[str, str]) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("kinesis") as client:
        yield client


class KinesisHarness(ShardedStreamHarness):
    """The contract's view of Kinesis: a fresh stream per test; records of one lane share a partition key."""

    page_size = 10000

    def __init__(self, client: Any, redis: Redis, shards: int = 1) -> None:
        super().__init__(client, redis)
        self.client = client
        self.shards = shards
        self.name = f"stream-{uuid.uuid4().hex[:10]}"

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

    async def shard_ids(self) -> list[str]:
        return [shard["ShardId"] for shard in (await self.client.list_shards(StreamName=self.name))["Shards"]]

    def stream(self) -> dict[str, str]:
        return {"StreamName": self.name}

    def sequence_number(self, record: dict[str, Any]) -> str:
        return str(record["SequenceNumber"])

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
