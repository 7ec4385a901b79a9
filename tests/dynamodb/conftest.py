"""Fixtures for the DynamoDB Streams tests: moto's server, a Redis and a worker pool of their own, and
a harness that makes a table with a stream and writes items to it.

The worker pool serves the contract's functions with `tests.dynamodb.handler` (the shared recorder
fed DynamoDB events). It has its own Redis so that it never claims the other suites' jobs, nor they
its jobs, when several suites run in one session.
"""

from __future__ import annotations

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
from tests.rig import MotoServer, RedisServer
from tests.rig.common import ManagedProcess
from tests.sources.contract import Stack

HANDLER = "tests.dynamodb.handler.handle"
WORKER_PROCESSES = 2
LEASE_SECONDS = 2.0


dynamodb_redis = private_redis("dynamodb_redis")


@pytest.fixture(scope="session")
def dynamodb_workers(dynamodb_redis: RedisServer, moto_server: MotoServer) -> Iterator[ManagedProcess]:
    """`headwater worker`, two processes, prefetch 1, serving the contract's functions with our handler."""
    with serving_pool("dynamodb-workers", dynamodb_redis.url, HANDLER, WORKER_PROCESSES) as pool:
        yield pool


@pytest.fixture
def dynamodb_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {**aws_env, "HEADWATER_SHARD_LEASE_SECONDS": str(LEASE_SECONDS)}
    monkeypatch.setenv("HEADWATER_SHARD_LEASE_SECONDS", str(LEASE_SECONDS))
    return env


@pytest.fixture
async def stack(
    dynamodb_redis: RedisServer, dynamodb_env: dict[str, str], dynamodb_workers: ManagedProcess, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(emptied(dynamodb_redis), dynamodb_env, dynamodb_workers, tmp_path) as running:
        yield running


class DynamoDbHarness(ShardedStreamHarness):
    """The contract's view of a DynamoDB table's stream: a fresh table per test, one item per body
    (keyed by the body's `ns` and `id`, the body itself in the `body` attribute). One shard holds
    every change, so a lane needs nothing of its own: the shard's order is every lane's order."""

    def __init__(self, dynamodb: Any, streams: Any, redis: Redis) -> None:
        super().__init__(streams, redis)
        self.dynamodb = dynamodb
        self.streams = streams
        self.table = f"table-{uuid.uuid4().hex[:10]}"

    async def create(self, *, ordered: bool = False, view_type: str = "NEW_AND_OLD_IMAGES") -> None:
        answer = await self.dynamodb.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "ns", "KeyType": "HASH"}, {"AttributeName": "id", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "ns", "AttributeType": "S"},
                                  {"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type},
        )  # fmt: skip
        self.arn = answer["TableDescription"]["LatestStreamArn"]

    async def send(self, bodies: list[dict[str, Any]], lane: str | None = None, **attributes: Any) -> None:
        """INSERT one item per body, in order; `attributes` are added to each (typed values)."""
        for body in bodies:
            await self.put(body, **attributes)

    async def put(self, body: dict[str, Any], **attributes: Any) -> None:
        item = {"ns": {"S": body["ns"]}, "id": {"S": body["id"]}, "body": {"S": json.dumps(body)}, **attributes}
        await self.dynamodb.put_item(TableName=self.table, Item=item)

    async def update(
        self, body: dict[str, Any], expression: str, values: dict[str, Any], names: dict[str, str] | None = None
    ) -> None:
        """MODIFY the body's item (`names`: ExpressionAttributeNames, for reserved words such as `status`)."""
        key = {"ns": {"S": body["ns"]}, "id": {"S": body["id"]}}
        extra = {"ExpressionAttributeNames": names} if names else {}
        await self.dynamodb.update_item(
            TableName=self.table, Key=key, UpdateExpression=expression, ExpressionAttributeValues=values, **extra
        )

    async def delete(self, body: dict[str, Any]) -> None:
        await self.dynamodb.delete_item(TableName=self.table, Key={"ns": {"S": body["ns"]}, "id": {"S": body["id"]}})

    async def shard_ids(self) -> list[str]:
        description = (await self.streams.describe_stream(StreamArn=self.arn))["StreamDescription"]
        return [shard["ShardId"] for shard in description["Shards"]]

    def stream(self) -> dict[str, str]:
        return {"StreamArn": self.arn}

    def sequence_number(self, record: dict[str, Any]) -> str:
        return str(record["dynamodb"]["SequenceNumber"])

    def check_event(self, event: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        check_dynamodb_event(event["dynamodbEvent"], bodies, self.arn)


def check_dynamodb_event(event: dict[str, Any], bodies: list[dict[str, Any]], arn: str) -> None:
    """Lambda's DynamoDB Streams event (spec §2.3) for INSERTs of `bodies` into a NEW_AND_OLD_IMAGES table."""
    assert list(event) == ["Records"]
    records = event["Records"]
    assert [json.loads(record["dynamodb"]["NewImage"]["body"]["S"]) for record in records] == bodies
    for record, body in zip(records, bodies, strict=True):
        assert list(record) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb",
                                "eventSourceARN"]  # fmt: skip
        assert (record["eventName"], record["eventVersion"], record["eventSource"]) == ("INSERT", "1.1", "aws:dynamodb")
        assert (record["awsRegion"], record["eventSourceARN"]) == ("us-east-1", arn)
        assert isinstance(record["eventID"], str)
        assert record["eventID"]
        change = record["dynamodb"]
        assert list(change) == ["ApproximateCreationDateTime", "Keys", "NewImage", "SequenceNumber", "SizeBytes",
                                "StreamViewType"]  # fmt: skip
        assert isinstance(change["ApproximateCreationDateTime"], int)
        assert abs(change["ApproximateCreationDateTime"] - time.time()) < 120
        assert change["Keys"] == {"ns": {"S": body["ns"]}, "id": {"S": body["id"]}}
        assert change["SequenceNumber"].isdigit()
        assert isinstance(change["SizeBytes"], int)
        assert change["SizeBytes"] > 0
        assert change["StreamViewType"] == "NEW_AND_OLD_IMAGES"


@pytest.fixture
async def dynamodb(dynamodb_env: dict[str, str]) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("dynamodb") as client:
        yield client


@pytest.fixture
async def streams(dynamodb_env: dict[str, str]) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("dynamodbstreams") as client:
        yield client


@pytest.fixture
async def harness(dynamodb: Any, streams: Any, stack: Stack) -> DynamoDbHarness:
    return DynamoDbHarness(dynamodb, streams, stack.redis)
