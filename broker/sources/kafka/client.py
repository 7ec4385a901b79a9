"""The aiokafka consumer of one Kafka mapping: how it is built, how the group's rebalances reach the
source, and how a record aiokafka cannot decode is stepped over.

Kept apart from `source` (batches, lanes, commits) because these are the only places that depend on
what aiokafka asks of us: its constructor's arguments (checked against HEADWATER_KAFKA_CONSUMER_OPTIONS,
so a typo disables the mapping with a reason instead of crash-looping the poller), its insistence on
an instance of its own listener class, and its habit of raising on an undecodable record without
naming it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from broker.errors import ConfigError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.settings import get_settings, usable, variable
from broker.sources.base import SourceContext
from broker.sources.kafka import shape
from broker.sources.kafka.access import client_settings

FETCH_WAIT_MS = 200
STEP_OVER_SECONDS = 10.0  # then the fetch loop reads on, and raises here again if the record is still ahead
REJOIN_MARGIN_SECONDS = 10.0  # beyond the drain: the group's own round trips
# What HEADWATER_KAFKA_CONSUMER_OPTIONS may name: aiokafka's consumer arguments (session_timeout_ms, fetch sizes...).
CONSUMER_ARGUMENTS = frozenset(inspect.signature(AIOKafkaConsumer).parameters) - {"topics", "loop"}
log = get_logger(__name__)


class Rebalanced(Protocol):
    """What the group's rebalances are handed to (the source: see its module docstring)."""

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


def bootstrap_servers(mapping: EventSourceMapping, cluster_arn: str | None) -> str:
    """The self-managed endpoints, else (MSK by ARN, which is not resolved) HEADWATER_KAFKA_BOOTSTRAP_SERVERS."""
    endpoints = mapping.self_managed_event_source
    if endpoints is not None:
        return ",".join(endpoints.endpoints["KAFKA_BOOTSTRAP_SERVERS"])
    servers = get_settings().kafka_bootstrap_servers
    if not servers:
        needed = variable("kafka_bootstrap_servers")
        raise ConfigError([f"{cluster_arn}: an MSK mapping needs {needed} (ARNs are not resolved)"])
    return servers


async def build_consumer(
    mapping: EventSourceMapping, context: SourceContext, servers: str, group_id: str, drain_seconds: float
) -> Any:
    """The consumer, with the mapping's security settings; not yet started. Its rebalance timeout
    covers the source's drain of revoked partitions, or the group would move on without us."""
    security = await client_settings(mapping.source_access_configurations, context.aws_session)
    options: dict[str, Any] = {
        "bootstrap_servers": servers,
        "group_id": group_id,
        "client_id": f"headwater-{mapping.uuid[:8]}",
        "enable_auto_commit": False,
        # Only reached without a usable committed offset: the starting position is resolved by the
        # source, and an offset lost to retention restarts at the oldest record kept.
        "auto_offset_reset": "earliest",
        "rebalance_timeout_ms": int((drain_seconds + REJOIN_MARGIN_SECONDS) * 1000),
        **security,
        **context.extras.get("kafka_consumer_options", {}),
        **environment_options(),
    }
    return AIOKafkaConsumer(**options)


def environment_options() -> dict[str, Any]:
    """HEADWATER_KAFKA_CONSUMER_OPTIONS, checked against aiokafka's arguments. A problem is a
    `ConfigError`, which disables the Kafka mappings (with the reason) and leaves the others running."""
    options = usable(get_settings().kafka_consumer_options)
    unknown = sorted(set(options) - CONSUMER_ARGUMENTS)
    if unknown:
        problem = f"{variable('kafka_consumer_options')}: unknown aiokafka consumer option(s) {', '.join(unknown)}"
        raise ConfigError([problem], "environment")
    return options


async def step_over_undecodable(
    consumer: Any, take_in: Callable[[dict[TopicPartition, list[Any]]], None]
) -> str | None:
    """Find and step over the record aiokafka cannot decode (a header name that is not UTF-8);
    returns its reason for `Source.unreadable`, or None when no partition raised this time.

    aiokafka raises without naming the record, and would raise on it forever: each partition is read
    one record at a time (the good ones go to `take_in` as usual) up to the high watermark its last
    fetch reported, until one raises; the consumer's position is then that record's offset, and
    reading resumes just past it. The record is not delivered (its bytes never reach us). A partition
    is read until its watermark, not until one read comes back empty: the refetch of the partition
    that raised can wait behind the broker's long poll of the idle ones, longer than one read waits."""
    deadline = time.monotonic() + STEP_OVER_SECONDS
    for partition in consumer.assignment() - consumer.paused():
        while time.monotonic() < deadline:
            end = consumer.highwater(partition)
            if end is None or partition in consumer.paused() or await consumer.position(partition) >= end:
                break
            try:
                fetched = await consumer.getmany(partition, timeout_ms=FETCH_WAIT_MS, max_records=1)
            except UnicodeDecodeError as error:
                offset = await consumer.position(partition)
                name = shape.item_id(partition.topic, partition.partition, offset)
                log.error("Kafka record cannot be decoded; skipping it", record=name, error=str(error))
                consumer.seek(partition, offset + 1)
                return f"{name}: {error}"
            take_in(fetched)
    return None


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka insists on an instance of its listener class; this one hands over to the source."""

    def __init__(self, source: Rebalanced) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._source.partitions_assigned(assigned)
