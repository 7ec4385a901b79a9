"""The running side of a DynamoDB Streams mapping: the shared sharded-stream machinery over its calls.

Per shard, as Lambda: with no checkpoint the reader starts at StartingPosition (TRIM_HORIZON or
LATEST); a shard that appeared while the mapping ran (DynamoDB rolls its shards over every few
hours, and splits them as the table grows) is read from its first record, after its parent ended;
with a checkpoint, AFTER_SEQUENCE_NUMBER it. A checkpoint older than the stream's 24-hour
retention can no longer be resumed from: the reader starts at the oldest record still there and
says what was lost (Lambda loses those records too). GetRecords runs at once while records come
(at most five times a second) and four times a second when the shard is idle, as Lambda polls
DynamoDB; throttles back off. With ParallelizationFactor > 1 the lanes go by item (its whole
primary key), so each item's changes stay in order. The acknowledgement contract, leases,
resharding and tumbling windows are `broker.sources.shards`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError
from broker.logs import get_logger
from broker.sources.base import Batch, Record, SourceContext, runtime
from broker.sources.dynamodb import shape
from broker.sources.dynamodb.client import READ_LIMIT, DynamoDbStreamsClient, StreamNotFoundError, TrimmedError
from broker.sources.dynamodb.kind import DynamoDbKind
from broker.sources.shards import Fetched, Position, ShardedSource

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping
    from broker.shard_leases import ShardInfo

log = get_logger(__name__)


@runtime(DynamoDbKind)
class DynamoDbSource(ShardedSource):
    idle_poll_seconds = 0.25
    busy_poll_seconds = 0.2  # GetRecords at most five times a second per shard
    read_limit = READ_LIMIT

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        arn = mapping.event_source_arn or ""
        self.client = DynamoDbStreamsClient(context.aws_session, context.region, arn)
        self.stream = shape.Stream(arn, context.region)

    async def open_service(self) -> None:
        await self.client.open()

    async def close_service(self) -> None:
        await self.client.close()

    async def start(self) -> None:
        try:
            await super().start()
        except StreamNotFoundError as error:  # Lambda refuses a mapping on a stream that does not exist
            raise ConfigError([error.message], source=f"EventSourceArn {self.stream.arn}") from error

    # -- the service ----------------------------------------------------------------------------------
    async def list_shards(self) -> list[ShardInfo]:
        return await self.client.list_shards()

    async def open_iterator(self, shard_id: str, after: str | None, from_first_record: bool) -> str | None:
        if after:
            try:
                return await self.client.shard_iterator(shard_id, "AFTER_SEQUENCE_NUMBER", after)
            except TrimmedError:
                log.warning(
                    "records after the checkpoint passed the stream's retention; reading from the oldest one left",
                    shard=shard_id,
                    checkpoint=after,
                )
                return await self.client.shard_iterator(shard_id, "TRIM_HORIZON")
        position = "TRIM_HORIZON" if from_first_record else (self.mapping.starting_position or "LATEST")
        return await self.client.shard_iterator(shard_id, position)

    async def fetch(self, iterator: str, limit: int) -> Fetched:
        return await self.client.get_records(iterator, limit)

    # -- shapes -------------------------------------------------------------------------------------
    def sequence_of(self, raw: Any) -> str:
        return str(raw["dynamodb"]["SequenceNumber"])

    def partition_key_of(self, raw: Any) -> str:
        return shape.item_key(raw)

    def shape(self, raw: Any, position: Position) -> Record:
        return shape.record(raw, position, self.stream)

    def shape_event(self, batch: Batch) -> dict[str, Any]:
        return shape.event(batch)

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        return shape.batch_info(batch, self.stream.arn)
