"""The event source contract, run against Kafka: a fresh 3-partition topic and consumer group per
test on the session's real broker. A lane is a partition; records sent without one share partition
0, so a batch holds them all, as one SQS receive would.

The contract's `stack` (tests/sources/contract.py) replaces this folder's `KafkaStack` here, with a
worker pool of this module's own serving the contract's recorder functions.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.harness import running_stack
from tests.rig import KafkaBroker, RedisServer
from tests.rig.common import ManagedProcess
from tests.sources.contract import SourceContract, Stack, functions, session_worker_pool

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
PARTITIONS = 3


class KafkaHarness:
    # Nothing comes back while its batch is out (a log blocks its partition); this only has to stay
    # under the recorder's 2 s timeout. A killed poller's partitions move after its 10 s session,
    # within the contract's own 30 s allowance.
    redelivery_seconds = 0.5
    retries_after_failure_in_place = True
    redelivers_in_order = True

    def __init__(self, broker: KafkaBroker) -> None:
        self.servers = broker.bootstrap_servers
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"
        self.group = f"group-{uuid.uuid4().hex[:10]}"
        self._lanes: dict[str, int] = {}

    async def create(self, *, ordered: bool = False) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS, replication_factor=1)])
        finally:
            await admin.close()

    async def send(self, bodies: list[dict[str, Any]], lane: str | None = None) -> None:
        partition = self._lanes.setdefault(lane, len(self._lanes) % PARTITIONS) if lane else 0
        producer = AIOKafkaProducer(bootstrap_servers=self.servers)
        await producer.start()
        try:
            for body in bodies:
                await producer.send_and_wait(self.topic, json.dumps(body).encode(), partition=partition)
        finally:
            await producer.stop()

    def mapping(self, function: str = "recorder", **fields: Any) -> dict[str, Any]:
        return {
            "FunctionName": function,
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [self.servers]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": self.group},
            "Topics": [self.topic],
            "StartingPosition": "TRIM_HORIZON",
            **fields,
        }

    async def unacknowledged(self) -> int:
        """Records past the group's committed offsets (end offset - committed, summed)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.servers)
        await admin.start()
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(self.group)
        finally:
            await consumer.stop()
            await admin.close()
        return sum(ends[p] - max(committed[p].offset, 0) if p in committed else ends[p] for p in partitions)

    def check_event(self, event: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        """Lambda's self-managed Kafka event (spec §2.4), field for field, for records without key or headers."""
        assert list(event) == ["eventSource", "bootstrapServers", "records"]
        assert (event["eventSource"], event["bootstrapServers"]) == ("SelfManagedKafka", self.servers)
        [(lane, records)] = event["records"].items()
        assert lane == f"{self.topic}-0"
        assert [json.loads(base64.b64decode(record["value"])) for record in records] == bodies
        for offset, record in enumerate(records):
            assert list(record) == ["topic", "partition", "offset", "timestamp", "timestampType", "value", "headers"]
            assert (record["topic"], record["partition"], record["offset"]) == (self.topic, 0, offset)
            assert record["timestampType"] == "CREATE_TIME"
            assert isinstance(record["timestamp"], int)
            assert record["headers"] == []


@pytest.fixture(scope="module")
def contract_workers(redis_server: RedisServer) -> Iterator[ManagedProcess]:
    """`headwater worker` serving the contract's functions while this module runs (two processes, prefetch 1)."""
    with session_worker_pool("kafka-contract-workers", redis_server.url, functions(redis_server.url)) as pool:
        yield pool


@pytest.fixture
async def stack(
    redis_url: str, aws_env: dict[str, str], contract_workers: ManagedProcess, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(redis_url, aws_env, contract_workers, tmp_path) as running:
        yield running


@pytest.fixture
def harness(kafka_broker: KafkaBroker) -> KafkaHarness:
    return KafkaHarness(kafka_broker)


class TestKafka(SourceContract):
    pass
