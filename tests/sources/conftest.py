"""Fixtures for the event source tests: one real worker pool for the session, a `Stack` per test,
and the SQS harness (queues over HTTP on the moto server or on ElasticMQ: `sqs_service`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from tests.harness import running_stack
from tests.rig import ElasticMQServer, MotoServer, RedisServer
from tests.rig.common import ManagedProcess
from tests.sources.contract import Stack, functions, session_worker_pool

VISIBILITY_TIMEOUT_SECONDS = 2  # the recorder's Timeout: the shortest Lambda accepts for it
WORKER_PROCESSES = 2


@pytest.fixture(scope="session")
def worker_pool(redis_server: RedisServer, moto_server: MotoServer) -> Iterator[ManagedProcess]:
    """`headwater worker` with two processes serving every test function, for the whole session.

    Prefetch 1: a process claims one batch at a time, so two batches run side by side whenever
    two are waiting (what the parallel and backlog tests measure).
    """
    with session_worker_pool("source-workers", redis_server.url, functions(redis_server.url), WORKER_PROCESSES) as pool:
        yield pool


@pytest.fixture
def source_env(aws_env: dict[str, str]) -> dict[str, str]:
    """The AWS variables the stack's pollers run with; test_sqs.py overrides it with `sqs_service`'s."""
    return aws_env


@pytest.fixture
async def stack(
    redis_url: str, source_env: dict[str, str], worker_pool: ManagedProcess, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(redis_url, source_env, worker_pool, tmp_path) as running:
        yield running


@dataclass(frozen=True)
class SqsService:
    """The SQS server a test's queues live on, and the AWS variables that send SDKs (only SQS's) there."""

    name: str  # "moto" or "elasticmq"
    endpoint_url: str
    env: dict[str, str]


@pytest.fixture(params=["moto", "elasticmq"])
def sqs_service(request: pytest.FixtureRequest, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SqsService:
    """Each SQS test runs on moto and on ElasticMQ, emptied for the test.

    moto is what the rest of the suite's AWS calls use; ElasticMQ is a real queue with SQS's
    semantics and speed. Only SQS moves (``AWS_ENDPOINT_URL_SQS``): anything else stays on moto.
    ElasticMQ is requested lazily, so a run filtered to moto never starts it.
    """
    if request.param == "moto":
        return SqsService("moto", aws_env["AWS_ENDPOINT_URL"], aws_env)
    server: ElasticMQServer = request.getfixturevalue("elasticmq_server")
    server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.endpoint_url)
    return SqsService("elasticmq", server.endpoint_url, {**aws_env, "AWS_ENDPOINT_URL_SQS": server.endpoint_url})


@pytest.fixture
async def sqs(sqs_service: SqsService) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("sqs", endpoint_url=sqs_service.endpoint_url) as client:
        yield client


class SqsHarness:
    """The contract's view of SQS: a fresh queue per test on `service` (moto or ElasticMQ)."""

    redelivery_seconds = VISIBILITY_TIMEOUT_SECONDS + 1
    retries_after_failure_in_place = False

    def __init__(self, client: Any, service: str) -> None:
        self.client = client
        self.service = service
        # Real SQS hands a FIFO group back from its oldest message, and so does ElasticMQ. moto 5.2.1
        # does not: when several messages of a group become visible together, its receive skips each
        # one while another of the group is still marked pending, so the *last* comes out first. On
        # moto the broker's part (later messages not deleted, first deliveries in order) is still checked.
        self.redelivers_in_order = service != "moto"
        self.url = ""
        self.arn = ""

    async def create(
        self,
        *,
        ordered: bool = False,
        visibility_timeout: int = VISIBILITY_TIMEOUT_SECONDS,
        attributes: dict[str, str] | None = None,
    ) -> None:
        name = f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if ordered else "")
        settings = {"VisibilityTimeout": str(visibility_timeout), **(attributes or {})}
        if ordered:
            settings["FifoQueue"] = "true"
        self.url, self.arn = await self.new_queue(name, settings)

    async def new_queue(self, name: str, attributes: dict[str, str]) -> tuple[str, str]:
        url = (await self.client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        answer = await self.client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(url), str(answer["Attributes"]["QueueArn"])

    async def send(self, bodies: list[dict[str, Any]], lane: str | None = None, **message: Any) -> list[str]:
        """Send in batches of ten, in order; returns the message ids."""
        ids = []
        for start in range(0, len(bodies), 10):
            entries = []
            for index, body in enumerate(bodies[start : start + 10]):
                entry = {"Id": str(index), "MessageBody": json.dumps(body), **message}
                if lane is not None:
                    entry |= {"MessageGroupId": lane, "MessageDeduplicationId": f"{body['ns']}-{body['id']}"}
                entries.append(entry)
            answer = await self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
            assert not answer.get("Failed"), answer
            ids += [item["MessageId"] for item in sorted(answer["Successful"], key=lambda item: int(item["Id"]))]
        return ids

    def mapping(self, function: str = "recorder", **fields: Any) -> dict[str, Any]:
        return {"FunctionName": function, "EventSourceArn": self.arn, **fields}

    async def unacknowledged(self, url: str | None = None) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]  # fmt: skip
        answer = await self.client.get_queue_attributes(QueueUrl=url or self.url, AttributeNames=names)
        return sum(int(answer["Attributes"].get(name, 0)) for name in names)

    def check_event(self, event: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        """Lambda's SQS event (spec §2.1), field for field, for messages without attributes."""
        assert list(event) == ["Records"]
        assert [json.loads(record["body"]) for record in event["Records"]] == bodies
        for record in event["Records"]:
            assert list(record) == [
                "messageId", "receiptHandle", "body", "attributes", "messageAttributes",
                "md5OfMessageAttributes", "md5OfBody", "eventSource", "eventSourceARN", "awsRegion",
            ]  # fmt: skip
            assert list(record["attributes"]) == [
                "ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
            ]  # fmt: skip
            assert all(isinstance(value, str) for value in record["attributes"].values())
            assert record["attributes"]["ApproximateReceiveCount"] == "1"
            assert record["messageAttributes"] == {}
            assert record["md5OfMessageAttributes"] is None
            assert record["md5OfBody"] == _md5(record["body"])
            assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
                "aws:sqs", self.arn, "us-east-1",
            )  # fmt: skip


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@pytest.fixture
async def harness(sqs: Any, sqs_service: SqsService) -> SqsHarness:
    return SqsHarness(sqs, sqs_service.name)
