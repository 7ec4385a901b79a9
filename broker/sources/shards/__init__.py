"""What every sharded stream source shares (Kinesis now, DynamoDB Streams next): shard leases
through `broker.shard_leases`, one reader per owned shard, lanes by partition key, checkpoints
after the outcome. A source subclasses `ShardedSource` with its service calls and shapes."""

from broker.sources.shards.source import Fetched, IteratorExpiredError, ShardedSource, ThrottledError
from broker.sources.shards.track import Position, ShardTrack

__all__ = ["Fetched", "IteratorExpiredError", "Position", "ShardTrack", "ShardedSource", "ThrottledError"]
