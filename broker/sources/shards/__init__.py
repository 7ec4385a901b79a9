"""What every sharded stream source shares (Kinesis, DynamoDB Streams): shard leases through
`broker.shard_leases`, one reader per owned shard, lanes by partition key, checkpoints after the
outcome. A source subclasses `ShardedSource` with its service calls and shapes.

One job per module: `source` (the face the generic runner sees), `service` (what a subclass
supplies), `ownership` (the lease loop, what a balance changes, fenced checkpoints), `reader` (one
shard's GetRecords loop), `track` (one shard's lanes, batches and how far its checkpoint may go),
`windows` (tumbling windows), `batch_info` (the range an on-failure record names)."""

from broker.sources.shards.service import Fetched, IteratorExpiredError, ThrottledError
from broker.sources.shards.source import ShardedSource
from broker.sources.shards.track import Position, ShardTrack

__all__ = ["Fetched", "IteratorExpiredError", "Position", "ShardTrack", "ShardedSource", "ThrottledError"]
