"""Kafka → no-op handler throughput: Headwater (BatchSize 100 and 1000) beside a bare aiokafka loop.

Starts its own redis-server and Kafka broker (tests/rig), writes RECORDS small records over 3
partitions, then for each BatchSize runs `headwater worker` and `headwater poll` against a fresh
consumer group and times the committed offsets from the first commit to the last. The baseline is
one aiokafka consumer calling the same handler inline, per fetched batch, with auto-commit: the
upper bound of what any broker in between can reach on this machine.

    python bench/kafka_mapping.py [--records 100000] [--workers 2]

100,000 records by default: at today's rates 20,000 were gone in under a second, about five of the
committed-offset samples this script can take, so one sample more or less moved the figure by 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.handlers.kafka_handlers import noop
from tests.rig import KafkaBroker, RedisServer, free_port

PARTITIONS = 3


async def create_topic(servers: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    await admin.close()


async def prepare(servers: str, topic: str, records: int) -> None:
    await create_topic(servers, topic)
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    body = json.dumps({"orderId": 0, "note": "x" * 60}).encode()
    sends = [await producer.send(topic, body, key=str(i).encode(), partition=i % PARTITIONS) for i in range(records)]
    await asyncio.gather(*sends)
    await producer.stop()


async def committed_total(servers: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for meta in offsets.values())


def start_headwater(
    broker: KafkaBroker,
    redis_url: str,
    topic: str,
    *,
    batch_size: int,
    workers: int,
    handler: str = "tests.handlers.kafka_handlers.noop",
    window: float = 1,
) -> Headwater:
    """A config with one function (no-op unless `handler` names another) and its mapping, a worker pool and a
    poller process."""
    group = f"bench-{batch_size}-{uuid.uuid4().hex[:6]}"
    mapping = {
        "FunctionName": "noop",
        "Topics": [topic],
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": batch_size,
        "MaximumBatchingWindowInSeconds": window,
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [broker.bootstrap_servers]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
    }
    function = {"FunctionName": "noop", "Handler": handler, "Timeout": 30}
    return launch(redis_url, function, mapping, workers=workers, group=group)


def launch(
    redis_url: str, function: dict[str, Any], mapping: dict[str, Any], *, workers: int, group: str = ""
) -> Headwater:
    """Write a config with `function` and `mapping` and start `headwater worker` and `headwater poll` on it (any
    source: the AWS_* environment of this process reaches the poller)."""
    directory = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    config = directory / "headwater.yaml"
    config.write_text(yaml.safe_dump({"Functions": [function], "EventSourceMappings": [mapping]}))
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "TEST_REDIS_URL": redis_url}
    env |= {"PYTHONPATH": str(REPO_ROOT), "HEADWATER_LOG_LEVEL": "WARNING"}
    cli = [sys.executable, "-m", "broker.cli"]
    commands = [
        [*cli, "worker", "--config", str(config), "--processes", str(workers)],
        [*cli, "poll", "--config", str(config), "--metrics-port", str(free_port())],
    ]
    with (directory / "processes.log").open("wb") as log:
        processes = [subprocess.Popen(c, env=env, cwd=REPO_ROOT, stdout=log, stderr=log) for c in commands]
    return Headwater(group, directory, processes)


@dataclass
class Headwater:
    group: str
    directory: Path
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


async def through_headwater(broker: KafkaBroker, headwater: Headwater, records: int) -> float:
    """Events/s between the first commit and the commit of the last record (joining excluded)."""
    try:
        first = done = None
        deadline = time.monotonic() + 120
        while done is None and time.monotonic() < deadline:
            total = await committed_total(broker.bootstrap_servers, headwater.group)
            now = time.monotonic()
            if total > 0 and first is None:
                first = (now, total)
            if total >= records:
                done = now
            await asyncio.sleep(0.1)
        if first is None or done is None:
            raise SystemExit(f"Headwater did not finish within 120 s; see {headwater.directory / 'processes.log'}")
        return (records - first[1]) / max(done - first[0], 1e-6)
    finally:
        await asyncio.to_thread(headwater.stop)


async def bare_consumer(
    servers: str, topic: str, records: int, handler: Callable[[dict[str, Any], Any], object] = noop
) -> float:
    """Events/s of one aiokafka consumer calling `handler` inline per fetched batch, until `records` are seen."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, group_id=f"bare-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    seen, started = 0, None
    while seen < records:
        fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
        for partition, messages in fetched.items():
            started = started or time.monotonic()
            handler({"records": {f"{partition.topic}-{partition.partition}": [m.value for m in messages]}}, None)
            seen += len(messages)
    elapsed = time.monotonic() - (started or time.monotonic())
    await consumer.stop()
    return records / max(elapsed, 1e-6)


async def main(records: int, workers: int) -> None:
    with RedisServer() as redis, KafkaBroker() as broker:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        await prepare(broker.bootstrap_servers, topic, records)
        bare = await bare_consumer(broker.bootstrap_servers, topic, records)
        print(f"{'bare aiokafka loop, handler inline:':42}{bare:10.0f} events/s")
        for batch_size in (100, 1000):
            headwater = start_headwater(broker, redis.url, topic, batch_size=batch_size, workers=workers)
            rate = await through_headwater(broker, headwater, records)
            label = f"Headwater BatchSize {batch_size:<5} ({workers} workers):"
            print(f"{label:42}{rate:10.0f} events/s   {rate / bare:6.1%} of bare")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.records, arguments.workers))
