"""A job deleted while its poller waits for it. The batch's job vanishes from Redis before any
worker takes it (a flush, a failover that lost the last writes, a hand-run cleanup); the poller
must notice that nobody will ever answer, hand the batch back to its source within a bound set
by the function's timeout, and the batch must then run once a worker starts: never a source
held forever, never a lost message.

SQS on moto: handing back makes the message visible again, so the poller receives it a second
time (ApproximateReceiveCount 2) and enqueues a new job. Kafka on the real broker: the partition
waits, the batch is invoked again in order (a new job), and its offsets are committed only after it
ran; the records behind it follow in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import aioboto3
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.faults.conftest import FaultStack, report
from tests.rig import KafkaBroker
from tests.waiting import eventually

FUNCTION_TIMEOUT_SECONDS = 3
VISIBILITY_TIMEOUT_SECONDS = FUNCTION_TIMEOUT_SECONDS  # Lambda refuses a visibility below the timeout
# The documented promise: a batch whose job is gone goes back to its source after at most the
# function's timeout plus a margin; the margin here also covers one poll of SQS after it reappears.
HAND_BACK_BOUND_SECONDS = FUNCTION_TIMEOUT_SECONDS + VISIBILITY_TIMEOUT_SECONDS + 10


async def _vanish_the_first_job(stack: FaultStack, never: str) -> float:
    """Delete the poller's first job before any worker takes it; return how long until the batch is
    enqueued again (handed back to its source and read anew, or retried in place)."""
    [job_id] = await eventually(
        lambda: stack.queued_job_ids("slow"), 45, lambda: f"the poller never enqueued\n{stack.logs()}"
    )
    stack.delete_job("slow", job_id)
    vanished_at = time.monotonic()
    await eventually(
        lambda: [other for other in stack.queued_job_ids("slow") if other != job_id],
        HAND_BACK_BOUND_SECONDS,
        lambda: f"{never} after its job vanished\n{stack.logs()}",
    )
    return time.monotonic() - vanished_at


async def _queue(sqs: Any) -> tuple[str, str]:
    attributes = {"VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS)}
    url = (await sqs.create_queue(QueueName="vanishing", Attributes=attributes))["QueueUrl"]
    answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(url), str(answer["Attributes"]["QueueArn"])


async def _unacknowledged(sqs: Any, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(answer["Attributes"].get(name, 0)) for name in names)


async def test_an_sqs_batch_whose_job_vanished_goes_back_to_the_queue_and_runs(
    fault_stack: Callable[..., FaultStack], aws_env: dict[str, str]
) -> None:
    async with aioboto3.Session().client("sqs") as sqs:
        url, arn = await _queue(sqs)
        stack = fault_stack(
            [{"FunctionName": "slow", "Timeout": FUNCTION_TIMEOUT_SECONDS}],
            [{"FunctionName": "slow", "EventSourceArn": arn, "BatchSize": 1}],
        )
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"id": "m1", "seconds": 0.5}))
        poller = stack.spawn_poller()  # no worker yet: the batch waits in the function's queue
        handed_back_seconds = await _vanish_the_first_job(stack, "the batch never came back from SQS")
        pool = await stack.start_pool(processes=1, prefetch=1)
        tally = await stack.settled(["m1"], within=30)
        await eventually(
            lambda: _deleted(sqs, url),
            30,
            lambda: f"the message was never deleted from SQS\n{stack.logs()}",
        )

    receive_counts = [line["receive_counts"] for line in stack.runs.lines() if line["phase"] == "end"]
    line = report(
        tally.describe(
            "sqs batch whose job vanished",
            handed_back_after_seconds=f"{handed_back_seconds:.1f}",
            bound_seconds=HAND_BACK_BOUND_SECONDS,
            receive_counts=receive_counts,
        )
    )
    message = f"{line}\n{stack.logs()}"
    assert not tally.lost, message
    assert tally.duplicated == 0, message  # the vanished job never ran, so only the returned batch did
    assert all(int(count) >= 2 for counts in receive_counts for count in counts), message
    assert poller.running, message
    assert pool.running, message
    assert stack.pool_deaths() == 0, message


async def _deleted(sqs: Any, url: str) -> bool:
    return await _unacknowledged(sqs, url) == 0


@pytest.mark.kafka
async def test_a_kafka_batch_whose_job_vanished_is_invoked_again_in_order(
    fault_stack: Callable[..., FaultStack], kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, group = f"vanishing-{time.monotonic_ns()}", f"vanishing-group-{time.monotonic_ns()}"
    await _create_topic(kafka_broker, topic)
    monkeypatch.setenv("HEADWATER_KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    monkeypatch.setenv("HEADWATER_KAFKA_CONSUMER_OPTIONS", json.dumps({"session_timeout_ms": 6000}))
    endpoints = {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka_broker.bootstrap_servers]}}
    stack = fault_stack(
        [{"FunctionName": "slow", "Timeout": FUNCTION_TIMEOUT_SECONDS}],
        [
            {
                "FunctionName": "slow",
                "SelfManagedEventSource": endpoints,
                "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
                "Topics": [topic],
                "StartingPosition": "TRIM_HORIZON",
                "BatchSize": 1,
            }
        ],
    )
    ids = [f"k{n}" for n in range(3)]
    await _produce(kafka_broker, topic, ids)
    poller = stack.spawn_poller()  # no worker yet: the first batch waits in the function's queue
    retried_seconds = await _vanish_the_first_job(stack, "the batch was never invoked again")
    pool = await stack.start_pool(processes=1, prefetch=1)
    tally = await stack.settled(ids, within=45)

    order = [identifier for line in stack.runs.lines() if line["phase"] == "start" for identifier in line["ids"]]
    line = report(
        tally.describe(
            "kafka batch whose job vanished",
            retried_after_seconds=f"{retried_seconds:.1f}",
            bound_seconds=HAND_BACK_BOUND_SECONDS,
            order=order,
        )
    )
    message = f"{line}\n{stack.logs()}"
    assert not tally.lost, message
    assert tally.duplicated == 0, message
    assert order == ids, message  # the partition waited for the lost batch: nothing overtook it
    assert poller.running, message
    assert pool.running, message
    assert stack.pool_deaths() == 0, message


async def _create_topic(broker: KafkaBroker, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(broker: KafkaBroker, topic: str, ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        for identifier in ids:
            await producer.send_and_wait(topic, json.dumps({"id": identifier, "seconds": 0.2}).encode(), partition=0)
    finally:
        await producer.stop()
