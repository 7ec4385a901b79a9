"""What a sharded stream service supplies (Kinesis, DynamoDB Streams): its calls, what a read returns,
and the refusals a reader handles. `ShardedSource` subclasses implement `ShardService`.

The acknowledgement contract asks nothing of the service itself: checkpoints are kept in Redis with
the shard leases (`broker.shard_leases`), never in the stream, so a service is only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from broker.errors import SourceError
from broker.shard_leases import ShardInfo
from broker.sources.base import Record
from broker.sources.shards.track import Position


class ThrottledError(SourceError):
    """The service refused a read for its rate limits; the shard's reader backs off."""


class IteratorExpiredError(SourceError):
    """The shard iterator is too old; the reader asks for a new one after the last record read."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One read of a shard: raw records in order, the next iterator (None: the shard ended)."""

    records: list[Any]
    next_iterator: str | None
    behind_ms: int | None = None


class ShardService(Protocol):
    """The calls and shapes of one sharded stream service, as `ShardedSource` subclasses supply them.

    `unreadable` is the source's own list (`Source.unreadable`): a reader appends the reason of each
    record it read but could not shape, and the poller counts and reports them."""

    unreadable: list[str]

    async def list_shards(self) -> list[ShardInfo]: ...

    async def open_iterator(self, shard_id: str, after: str | None, from_first_record: bool) -> str | None: ...

    async def fetch(self, iterator: str, limit: int) -> Fetched: ...

    def sequence_of(self, raw: Any) -> str: ...

    def partition_key_of(self, raw: Any) -> str: ...

    def shape(self, raw: Any, position: Position) -> Record: ...
