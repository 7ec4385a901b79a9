"""A Kafka mapping's `kafka://` on-failure destination: Lambda's form, one message per failed record, keyed
with the record's key, end to end; and, on an in-memory log, that a refused write repeats only that message
(the batch-level record every other destination gets is tested in test_kafka_mapping)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker import stream_retry
from broker.destinations.base import Message
from broker.errors import DestinationError
from broker.invocation import Result, Status
from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, FailurePart, Record, Source, SourceContext
from tests.kafka.conftest import KafkaStack

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

RECORDS = (
    {"partition": 0, "key": "order-1", "value": "poison"},
    {"partition": 0, "key": "order-2", "value": "fine"},
    {"partition": 0, "value": "no key"},
)


async def test_a_kafka_topic_gets_one_message_per_failed_record(stack: KafkaStack) -> None:
    failed_topic = await stack.create_topic(f"{stack.topic}-failed", partitions=1)
    stack.configure(
        "fail_on_poison",
        BatchSize=10,
        MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": f"kafka://{failed_topic}"}},
    )
    await stack.produce(*RECORDS)
    stack.start_workers(processes=1)
    stack.start_poller()
    await stack.wait_for(stack.events)  # the mapping's consumer group is up: its offsets can be read
    await stack.wait_for(lambda: _committed_is(stack, {0: 3}))  # moved on, once every message was written
    messages = await stack.read_topic(failed_topic, 3, within=10)

    assert [message.key for message in messages] == [b"order-1", b"order-2", None]
    events = stack.events()
    lane = f"{stack.topic}-0"
    assert [[entry["offset"] for entry in event["records"][lane]] for event in events] == [[0, 1, 2], [0, 1, 2]]
    entries = events[0]["records"][lane]
    for offset, (message, entry) in enumerate(zip(messages, entries, strict=True)):
        body = json.loads(message.value)
        assert list(body) == ["requestContext", "responseContext", "version", "timestamp", "KafkaBatchInfo", "payload"]
        assert body["requestContext"].pop("requestId")
        assert body.pop("timestamp").endswith("Z")
        assert body.pop("KafkaBatchInfo") == {
            "batchSize": 3,
            "bootstrapServers": stack.broker.bootstrap_servers,
            "payloadSize": len(json.dumps(events[0]).encode()),
            "recordInfo": {"offset": str(offset), "timestamp": _iso(entry["timestamp"])},
        }
        assert body.pop("payload") == {
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": stack.broker.bootstrap_servers,
            "records": {lane: [entry]},
        }
        assert body == {
            "requestContext": {
                "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:consumer",
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": 2,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
        }
    assert [base64.b64decode(entry["value"]) for entry in entries] == [b"poison", b"fine", b"no key"]
    assert [entry.get("key") for entry in entries] == [_base64("order-1"), _base64("order-2"), None]


class PerRecordLog(Source):
    """An in-memory log source with a per-record on-failure form for every target, keyed with bytes
    that are not UTF-8 (Kafka keys need not be text)."""

    retries_in_place = True

    async def read_batch(self) -> Batch | None:
        return None

    def event(self, batch: Batch) -> dict[str, Any]:
        return {"records": [record.event for record in batch.records]}

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        return None

    def failure_record_parts(self, batch: Batch, target: str) -> list[FailurePart] | None:
        return [
            FailurePart({"record": record.item_id}, key=b"\xff" + record.item_id.encode()) for record in batch.records
        ]


class Target:
    """An on-failure destination refusing its `refuse_call`-th write once, and keeping what it takes."""

    def __init__(self, refuse_call: int) -> None:
        self.calls, self.refuse_call = 0, refuse_call
        self.records: list[dict[str, Any]] = []
        self.keys: list[bytes | None] = []

    async def __call__(self, message: Message) -> None:
        self.calls += 1
        if self.calls == self.refuse_call:
            raise DestinationError("target unavailable")
        self.records.append(json.loads(message.body))
        self.keys.append(message.key)


async def failing_function(batch: Batch) -> Result:
    return Result("req-1", Status.FUNCTION_ERROR, json.dumps({"errorMessage": "boom"}))


async def test_a_refused_write_repeats_only_that_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_retry, "DESTINATION_DELAY_SECONDS", (0.0, 0.0))
    mapping = EventSourceMapping.model_validate(
        {
            "FunctionName": "ingest",
            "Topics": ["log"],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["localhost:9092"]}},
            "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": "kafka://failed"}},
        }
    )
    source = PerRecordLog(mapping, SourceContext(aws_session=None, region="us-east-1", function_timeout_seconds=3))
    records = tuple(
        Record(item_id=f"log-0@{offset}", lane="log-0", event={}, size_bytes=10, arrived_at=time.time(), filter_view={})
        for offset in range(3)
    )
    target = Target(refuse_call=2)
    delivered = {"mapping": mapping.uuid, "source_type": "kafka", "stage": "on_failure_delivered"}
    before = REGISTRY.get_sample_value("headwater_mapping_events_total", delivered) or 0.0
    await stream_retry.deliver_in_place(source, mapping, Batch(records, "log-0"), failing_function, target)

    assert [record["record"] for record in target.records] == ["log-0@0", "log-0@1", "log-0@2"]
    assert target.keys == [b"\xfflog-0@0", b"\xfflog-0@1", b"\xfflog-0@2"], "each message keeps its key's bytes"
    opening = ["requestContext", "responseContext", "version", "timestamp"]
    assert [list(record) for record in target.records] == [[*opening, "record"]] * 3
    assert REGISTRY.get_sample_value("headwater_mapping_events_total", delivered) == before + 3


def _iso(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}Z"


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _committed_is(stack: KafkaStack, expected: dict[int, int]) -> bool:
    return await stack.committed() == expected
