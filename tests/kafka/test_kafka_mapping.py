"""A Kafka mapping end to end: a real broker, a `headwater worker` pool and poller processes."""

from __future__ import annotations

import base64
import itertools
import json
import signal
import time
from typing import Any, cast

import pytest

from broker.sources.kafka.source import READ_WAIT_SECONDS
from tests.handlers import kafka_handlers
from tests.kafka.conftest import KafkaStack

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def batches_of(stack: KafkaStack, partition: int) -> list[list[int]]:
    """The offsets of every batch the function received for one partition, in arrival order."""
    key = f"{stack.topic}-{partition}"
    return [[r["offset"] for r in event["records"][key]] for event in stack.events() if key in event["records"]]


def decoded_values(stack: KafkaStack) -> list[str]:
    return [value for event in stack.events() for value in kafka_handlers.values(event)]


async def test_event_is_lambdas_self_managed_kafka_event(stack: KafkaStack) -> None:
    stack.configure("record", BatchSize=10)
    await stack.produce(
        {
            "partition": 1,
            "key": "order-42",
            "value": '{"orderId": 42}',
            "headers": [("traceid", b"abc"), ("note", "hié".encode())],
        },
        {"partition": 1, "value": "plain text, no key"},
    )
    stack.start_workers(processes=1)
    stack.start_poller()
    [event] = await stack.wait_for(stack.events)

    records = event["records"][f"{stack.topic}-1"]
    for record in records:
        assert abs(record.pop("timestamp") / 1000 - time.time()) < 60
    assert event == {
        "eventSource": "SelfManagedKafka",
        "bootstrapServers": stack.broker.bootstrap_servers,
        "records": {
            f"{stack.topic}-1": [
                {
                    "topic": stack.topic,
                    "partition": 1,
                    "offset": 0,
                    "timestampType": "CREATE_TIME",
                    "key": base64.b64encode(b"order-42").decode(),
                    "value": base64.b64encode(b'{"orderId": 42}').decode(),
                    "headers": [{"traceid": [97, 98, 99]}, {"note": [104, 105, -61, -87]}],
                },
                {
                    "topic": stack.topic,
                    "partition": 1,
                    "offset": 1,
                    "timestampType": "CREATE_TIME",
                    "value": base64.b64encode(b"plain text, no key").decode(),
                    "headers": [],
                },
            ]
        },
    }


async def test_order_is_kept_per_partition_across_failures_and_retries(stack: KafkaStack) -> None:
    stack.configure("flaky", BatchSize=4, MaximumBatchingWindowInSeconds=0)
    values = ["v", "v", "flaky", "v", "v", "v", "flaky", "v", "v", "v"]
    await stack.produce(*({"partition": p, "value": v} for p in range(3) for v in values))
    stack.start_workers()
    stack.start_poller()
    await stack.wait_for(lambda: _committed_is(stack, {0: 10, 1: 10, 2: 10}))

    for partition in range(3):
        batches = batches_of(stack, partition)
        assert batches[0][0] == 0
        for previous, batch in itertools.pairwise(batches):
            assert batch == list(range(batch[0], batch[-1] + 1))  # contiguous, in offset order
            assert batch[0] in (previous[0], previous[-1] + 1)  # the same batch again, or the next one
        seen = {offset for batch in batches for offset in batch}
        assert seen == set(range(10))
        assert sum(2 in batch for batch in batches) == 2
        assert sum(6 in batch for batch in batches) == 2


async def test_offsets_are_committed_only_after_the_outcome(stack: KafkaStack) -> None:
    stack.configure("gated", BatchSize=10)
    await stack.produce(*({"partition": 0, "value": f"v{i}"} for i in range(3)))
    stack.start_workers(processes=1)
    poller = stack.start_poller()
    await stack.wait_for(lambda: stack.redis.llen(kafka_handlers.STARTED) == 1)
    assert await stack.committed() == {}
    await stack.produce({"partition": 0, "value": "while the batch is out"})
    # Observed, not slept: the poller finished a read that began after the record landed (a read
    # waits at most READ_WAIT_SECONDS for a batch), and still nothing was committed or sent.
    produced = time.time()
    await stack.wait_for(lambda: stack.last_poll(poller) > produced + READ_WAIT_SECONDS + 0.2)
    assert await stack.committed() == {}
    assert stack.redis.llen(kafka_handlers.STARTED) == 1  # the partition is paused: no second batch

    stack.open_gate()
    await stack.wait_for(lambda: _committed_is(stack, {0: 3}))
    stack.open_gate()
    await stack.wait_for(lambda: _committed_is(stack, {0: 4}))
    assert batches_of(stack, 0) == [[0, 1, 2], [3]]


async def test_failing_batch_is_retried_then_sent_as_one_batch_level_record(stack: KafkaStack) -> None:
    """Every on-failure destination but a Kafka topic (tests/kafka/test_on_failure_records.py) gets
    Lambda's batch-level record: metadata only."""
    failed_stream = f"{stack.topic}-failed"
    stack.configure(
        "fail_on_poison",
        BatchSize=10,
        MaximumRetryAttempts=2,
        DestinationConfig={"OnFailure": {"Destination": f"redis-stream://{failed_stream}"}},
    )
    await stack.produce({"partition": 0, "value": "poison"})
    stack.start_workers(processes=1)
    stack.start_poller()
    await stack.wait_for(stack.events)
    await stack.produce({"partition": 0, "value": "after"})
    await stack.wait_for(lambda: _committed_is(stack, {0: 2}))

    assert decoded_values(stack) == ["poison", "poison", "poison", "after"]
    [(_, fields)] = cast(list[tuple[bytes, dict[bytes, bytes]]], stack.redis.xrange(failed_stream))
    record = json.loads(fields[b"body"])
    info = record.pop("KafkaBatchInfo")
    span = info["recordsInfo"].pop(f"{stack.topic}-0")
    assert record["requestContext"].pop("requestId")
    assert record.pop("timestamp").endswith("Z")
    assert record == {
        "requestContext": {
            "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:consumer",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
    }
    assert span["firstRecordOffset"] == span["lastRecordOffset"] == "0"
    assert info["batchSize"] == 1
    assert info["bootstrapServers"] == stack.broker.bootstrap_servers
    assert info["recordsInfo"] == {}
    assert info["payloadSize"] > 0


async def test_a_poller_killed_mid_batch_leaves_it_to_run_again(stack: KafkaStack) -> None:
    stack.configure("gated", BatchSize=10)
    await stack.produce(*({"partition": 0, "value": f"v{i}"} for i in range(3)))
    stack.start_workers(processes=1)
    first = stack.start_poller()
    await stack.wait_for(lambda: stack.redis.llen(kafka_handlers.STARTED) == 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stack.open_gate()  # the orphaned invocation ends; nobody is left to commit it

    stack.start_poller()
    await stack.wait_for(lambda: stack.redis.llen(kafka_handlers.STARTED) == 2)
    assert await stack.committed() == {}
    stack.open_gate()
    await stack.wait_for(lambda: _committed_is(stack, {0: 3}))
    assert batches_of(stack, 0) == [[0, 1, 2], [0, 1, 2]]


async def test_two_pollers_share_partitions_and_survive_one_leaving(stack: KafkaStack) -> None:
    stack.configure("record", BatchSize=10)
    stack.start_workers()
    first, second = stack.start_poller(), stack.start_poller()
    await stack.wait_for(lambda: _split(stack, first, second), within=60)
    await stack.produce(*({"partition": p, "value": f"a{p}-{i}"} for p in range(3) for i in range(3)))
    await stack.wait_for(lambda: _committed_is(stack, {0: 3, 1: 3, 2: 3}))

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    await stack.wait_for(lambda: stack.owned_partitions(second) == {0, 1, 2})
    await stack.produce(*({"partition": p, "value": f"b{p}-{i}"} for p in range(3) for i in range(3)))
    await stack.wait_for(lambda: _committed_is(stack, {0: 6, 1: 6, 2: 6}))
    expected = {f"{phase}{p}-{i}" for phase in "ab" for p in range(3) for i in range(3)}
    assert set(decoded_values(stack)) == expected


async def test_a_rebalance_lets_in_flight_batches_finish_before_the_next_owner_starts(stack: KafkaStack) -> None:
    stack.configure("slow_marked", timeout=10, BatchSize=2, MaximumBatchingWindowInSeconds=0)
    await stack.produce(*({"partition": p, "value": f"{p}-{i}"} for p in range(3) for i in range(6)))
    stack.start_workers(processes=3)
    first = stack.start_poller()
    await stack.wait_for(lambda: stack.redis.llen(kafka_handlers.STARTED) >= 1)
    second = stack.start_poller()  # joins while the first poller's batches run: every partition is revoked

    await stack.wait_for(lambda: _committed_is(stack, {0: 6, 1: 6, 2: 6}), within=90)
    assert stack.owned_partitions(second), "the second poller never got a partition"
    assert stack.redis.lrange(kafka_handlers.OVERLAPS, 0, -1) == []
    for partition in range(3):
        began = [int(offset) for offset in stack.redis.lrange(f"{kafka_handlers.OFFSETS}{partition}", 0, -1)]
        assert began == list(range(6)), f"partition {partition}: offsets began in this order: {began}"
    assert first.poll() is None


def _split(stack: KafkaStack, first: Any, second: Any) -> bool:
    mine, theirs = stack.owned_partitions(first), stack.owned_partitions(second)
    return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == {0, 1, 2}


async def _committed_is(stack: KafkaStack, expected: dict[int, int]) -> bool:
    return await stack.committed() == expected
