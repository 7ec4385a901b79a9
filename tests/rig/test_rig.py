"""The rig serves real services: each test does real I/O against one of them."""

from __future__ import annotations

import asyncio
import uuid

import boto3
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.rig import KafkaBroker, MotoServer, RedisServer


def test_redis_crash_and_restart_keeps_acknowledged_writes() -> None:
    with RedisServer() as server:
        url = server.url
        client = redis.Redis.from_url(url)
        try:
            client.set("event:1", "accepted")
            client.rpush("queue", "a", "b", "c")
        finally:
            client.close()

        server.kill()  # SIGKILL: no shutdown hook gets to save anything
        assert not server.running
        server.restart()

        assert server.url == url
        client = redis.Redis.from_url(url)
        try:
            assert client.get("event:1") == b"accepted"
            assert client.lrange("queue", 0, -1) == [b"a", b"b", b"c"]
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
        finally:
            client.close()


def test_redis_url_is_flushed_and_reachable(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next user of redis_url must not see it
    finally:
        client.close()


def test_moto_sqs_round_trip_over_http(aws_env: dict[str, str], moto_server: MotoServer) -> None:
    sqs = boto3.client("sqs")  # configured only by the environment the fixture set
    queue_url = sqs.create_queue(QueueName="rig-check")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody='{"hello": "world"}')

    received = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]

    assert [message["Body"] for message in received] == ['{"hello": "world"}']
    assert sqs.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"] == moto_server.endpoint_url
    moto_server.reset()
    assert sqs.list_queues().get("QueueUrls", []) == []


@pytest.mark.kafka
async def test_kafka_produce_then_consume_in_a_group(kafka_broker: KafkaBroker) -> None:
    topic = f"rig-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"payload", key=b"k1")
        partitions = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    assert partitions == {0, 1, 2}  # num.partitions=3 applies to auto-created topics

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, record.partition))
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k1", b"payload")
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert committed == record.offset + 1
