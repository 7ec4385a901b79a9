"""What a Kafka mapping asks the broker about offsets: where to start, and how far behind it is."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from broker.mapping import EventSourceMapping
from broker.sources.kafka.shape import lane_name


async def starting_offset(consumer: Any, mapping: EventSourceMapping, partition: TopicPartition) -> int | None:
    """The offset StartingPosition names; None for TRIM_HORIZON (the consumer's own default)."""
    position = mapping.starting_position
    if position == "AT_TIMESTAMP":
        moment = int((mapping.starting_position_timestamp or 0) * 1000)
        found = (await consumer.offsets_for_times({partition: moment}))[partition]
        if found is not None:
            return int(found.offset)
    if position in ("LATEST", "AT_TIMESTAMP"):  # a timestamp after the last record: the end
        return int((await consumer.end_offsets([partition]))[partition])
    return None


async def lags(consumer: Any, committed: dict[str, int]) -> dict[TopicPartition, int]:
    """OffsetLag of every assigned partition: end offset - committed (the oldest kept offset if none)."""
    partitions = list(consumer.assignment())
    if not partitions:
        return {}
    ends = await consumer.end_offsets(partitions)
    unknown = [p for p in partitions if lane_name(p.topic, p.partition) not in committed]
    starts = await consumer.beginning_offsets(unknown) if unknown else {}
    return {p: max(ends[p] - committed.get(lane_name(p.topic, p.partition), starts.get(p, 0)), 0) for p in partitions}
