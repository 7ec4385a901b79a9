"""A running Kafka mapping for the tests: a fresh topic, a config file, a real `headwater worker`
pool, poller processes, and Kafka-side helpers (produce, read a topic, committed offsets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis import Redis

from tests.handlers import kafka_handlers
from tests.rig import KafkaBroker, free_port
from tests.waiting import eventually, stop_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
# A dead poller's partitions move once its session expires: the broker's minimum (6 s), not 45 s.
CONSUMER_OPTIONS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


def poller_command(config_path: Path, metrics_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "broker.cli",
        "poll",
        "--config",
        str(config_path),
        "--metrics-port",
        str(metrics_port),
        "--grace-seconds",
        "10",
    ]


@dataclass
class KafkaStack:
    broker: KafkaBroker
    redis_url: str
    directory: Path
    topic: str = field(default_factory=lambda: f"orders-{uuid.uuid4().hex[:8]}")
    group: str = field(default_factory=lambda: f"group-{uuid.uuid4().hex[:8]}")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    metrics_ports: dict[int, int] = field(default_factory=dict)  # poller pid -> port
    log_paths: dict[int, Path] = field(default_factory=dict)  # pid -> its output

    def __post_init__(self) -> None:
        self.redis = Redis.from_url(self.redis_url)
        self.config_path = self.directory / "headwater.yaml"
        self.env = {
            **os.environ,
            "HEADWATER_REDIS_URL": self.redis_url,
            "TEST_REDIS_URL": self.redis_url,
            "HEADWATER_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "HEADWATER_KAFKA_CONSUMER_OPTIONS": json.dumps(CONSUMER_OPTIONS),
            "PYTHONPATH": str(REPO_ROOT),
        }

    # -- configuration and processes ----------------------------------------------------------------
    def configure(self, handler: str, timeout: int = 30, **mapping: Any) -> None:
        """One function (tests.handlers.kafka_handlers.HANDLER) and one mapping on this topic."""
        document = {
            "Functions": [
                {
                    "FunctionName": "consumer",
                    "Handler": f"tests.handlers.kafka_handlers.{handler}",
                    "Timeout": timeout,
                    # A sandbox sees only its function's variables (and Lambda's), not the worker's.
                    "Environment": {"Variables": {"TEST_REDIS_URL": self.redis_url}},
                }
            ],
            "EventSourceMappings": [
                {
                    "FunctionName": "consumer",
                    "SelfManagedEventSource": {
                        "Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [self.broker.bootstrap_servers]}
                    },
                    "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": self.group},
                    "Topics": [self.topic],
                    "StartingPosition": "TRIM_HORIZON",
                    **mapping,
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(document))

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        path = self.directory / f"{name}-{len(self.processes)}.log"
        with path.open("wb") as log:  # the child keeps its copy
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        self.log_paths[process.pid] = path
        return process

    def start_workers(self, processes: int = 2) -> subprocess.Popen[bytes]:
        return self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "broker.cli",
                "worker",
                "--config",
                str(self.config_path),
                "--processes",
                str(processes),
                "--grace-seconds",
                "5",
            ],
        )

    def start_poller(self) -> subprocess.Popen[bytes]:
        port = free_port()
        process = self._spawn("poller", poller_command(self.config_path, port))
        self.metrics_ports[process.pid] = port
        return process

    def logs(self) -> str:
        return "".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def stop_all(self) -> None:
        stop_processes(self.processes, timeout=15)

    # -- what the handlers noted ----------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(item)["event"] for item in self.redis.lrange(kafka_handlers.EVENTS, 0, -1)]

    def open_gate(self, batches: int = 1) -> None:
        self.redis.rpush(kafka_handlers.GATE, *["go"] * batches)

    async def wait_for(self, condition: Callable[[], Awaitable[Any] | Any], within: float = 45.0) -> Any:
        def checked() -> Any:
            if any(p.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM) for p in self.processes):
                raise AssertionError(f"a process died:\n{self.logs()}")
            return condition()

        return await eventually(checked, within, lambda: f"condition not met\n{self.logs()}")

    # -- Kafka side -------------------------------------------------------------------------------------
    async def create_topic(self, name: str | None = None, partitions: int = PARTITIONS) -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name or self.topic, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()
        return name or self.topic

    async def produce(self, *messages: dict[str, Any]) -> None:
        """Each message: value (str), optional partition, key (str), headers [(name, bytes)]."""
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap_servers)
        await producer.start()
        try:
            for message in messages:
                key = message.get("key")
                await producer.send_and_wait(
                    message.get("topic", self.topic),
                    message["value"].encode(),
                    key=key.encode() if key else None,
                    partition=message.get("partition", 0),
                    headers=message.get("headers"),
                )
        finally:
            await producer.stop()

    async def committed(self) -> dict[int, int]:
        """The mapping group's committed offset per partition of the topic."""
        return await self.committed_for(self.group)

    async def committed_for(self, group: str) -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap_servers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {
            tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic and meta.offset >= 0
        }

    async def read_topic(self, topic: str, count: int, within: float = 30.0) -> list[Any]:
        """The first `count` messages of every partition of `topic`, read without a group."""
        numbers = await _partitions_of(self.broker.bootstrap_servers, topic)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap_servers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, number) for number in sorted(numbers)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            messages: list[Any] = []

            async def enough() -> bool:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    messages.extend(batch)
                return len(messages) >= count

            await eventually(enough, within, lambda: f"{count} messages on {topic}, got {len(messages)}")
            return messages
        finally:
            await consumer.stop()

    def owned_partitions(self, process: subprocess.Popen[bytes]) -> set[int]:
        """The partitions a poller holds: those its latest "partitions assigned" log event names (the group
        hands every member its whole assignment at each rebalance); none before the first. /metrics has
        no partition numbers: headwater_kafka_offset_lag is summed per mapping."""
        owned: set[int] = set()
        for line in self.log_paths[process.pid].read_text(errors="replace").splitlines():
            if '"partitions assigned"' in line:
                owned = set(json.loads(line)["partitions"])
        return owned

    def offset_lag(self, process: subprocess.Popen[bytes]) -> float | None:
        """The poller's headwater_kafka_offset_lag (its partitions' sum), None while it reports none."""
        lags = [
            float(line.rsplit(" ", 1)[1])
            for line in self._metrics(process).splitlines()
            if line.startswith("headwater_kafka_offset_lag{")
        ]
        return sum(lags) if lags else None

    def last_poll(self, process: subprocess.Popen[bytes]) -> float:
        """When the poller last finished a read of its source (its last-poll gauge on /metrics), 0 before any."""
        polls = [
            float(line.rsplit(" ", 1)[1])
            for line in self._metrics(process).splitlines()
            if line.startswith("headwater_poller_last_poll_timestamp_seconds{")
        ]
        return max(polls, default=0.0)

    def _metrics(self, process: subprocess.Popen[bytes]) -> str:
        """The poller's /metrics page; empty while it is not serving it yet."""
        port = self.metrics_ports[process.pid]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                return str(answer.read().decode())
        except OSError:
            return ""


async def _partitions_of(servers: str, topic: str) -> set[int]:
    """The topic's partitions, from the cluster's metadata once the broker knows the topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()

    async def known() -> set[int] | None:
        [described] = await admin.describe_topics([topic])
        partitions = {int(partition["partition"]) for partition in described["partitions"]}
        return partitions if described["error_code"] == 0 and partitions else None

    try:
        partitions: set[int] = await eventually(known, 10, lambda: f"topic {topic} has no partitions")
    finally:
        await admin.close()
    return partitions


@pytest.fixture
async def stack(kafka_broker: KafkaBroker, redis_url: str, tmp_path: Path) -> AsyncIterator[KafkaStack]:
    stack = KafkaStack(kafka_broker, redis_url, tmp_path)
    await stack.create_topic()
    try:
        yield stack
    finally:
        stack.stop_all()
