"""The running side of a Kinesis mapping: the shared sharded-stream machinery over Kinesis's calls.

Per shard, as Lambda: with no checkpoint the reader starts at StartingPosition (TRIM_HORIZON,
LATEST, or AT_TIMESTAMP at StartingPositionTimestamp); a shard that appeared while the mapping
ran (a split or merge child) is read from its first record, since nothing before it can have been
missed; with a checkpoint, AFTER_SEQUENCE_NUMBER it. GetRecords runs at once while records come
(at most five times a second, Kinesis's per-shard limit) and about once a second when the shard
is idle; throttles back off. The acknowledgement contract, leases, resharding and tumbling
windows (TumblingWindowInSeconds) are `broker.sources.shards`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.sources.base import Batch, Record, SourceContext, runtime
from broker.sources.kinesis import shape
from broker.sources.kinesis.client import KinesisClient
from broker.sources.kinesis.kind import KinesisKind, stream_name
from broker.sources.shards import Fetched, Position, ShardedSource

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping
    from broker.shard_leases import ShardInfo


@runtime(KinesisKind)
class KinesisSource(ShardedSource):
    idle_poll_seconds = 1.0
    busy_poll_seconds = 0.2

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        arn = mapping.event_source_arn or ""
        self.client = KinesisClient(context.aws_session, context.region, stream_name(arn))
        # Lambda names the function's execution role; Headwater functions have none, so a role
        # named after the function stands in (README, "Differences from Lambda").
        role = f"arn:aws:iam::{context.account_id}:role/{mapping.function_name}"
        self.stream = shape.Stream(arn, context.region, role, bool(mapping.filter_criteria.filters))

    async def open_service(self) -> None:
        await self.client.open()

    async def close_service(self) -> None:
        await self.client.close()

    # -- the service ----------------------------------------------------------------------------------
    async def list_shards(self) -> list[ShardInfo]:
        return await self.client.list_shards()

    async def open_iterator(self, shard_id: str, after: str | None, from_first_record: bool) -> str | None:
        if after:
            return await self.client.shard_iterator(shard_id, "AFTER_SEQUENCE_NUMBER", after, None)
        position = "TRIM_HORIZON" if from_first_record else (self.mapping.starting_position or "LATEST")
        at = self.mapping.starting_position_timestamp if position == "AT_TIMESTAMP" else None
        return await self.client.shard_iterator(shard_id, position, None, at)

    async def fetch(self, iterator: str, limit: int) -> Fetched:
        return await self.client.get_records(iterator, limit)

    # -- shapes -------------------------------------------------------------------------------------
    def sequence_of(self, raw: Any) -> str:
        return str(raw["SequenceNumber"])

    def partition_key_of(self, raw: Any) -> str:
        return str(raw["PartitionKey"])

    def shape(self, raw: Any, position: Position) -> Record:
        return shape.record(raw, position, self.stream)

    def shape_event(self, batch: Batch) -> dict[str, Any]:
        return shape.event(batch)

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        return shape.batch_info(batch, self.stream.arn)
