"""The batch range an on-failure record names for a sharded stream (Lambda's `KinesisBatchInfo` and
`DDBStreamBatchInfo` share it): metadata only, since a consumer re-reads the shard by sequence number."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.sources.base import Batch
from broker.sources.shards.track import Position


def batch_range(batch: Batch, stream_arn: str, timestamp: Callable[[float], str]) -> dict[str, Any]:
    """The shard, first and last sequence numbers and arrival times (written by `timestamp`), and size.

    A window's final batch has no records: `span` names the records it concludes, and its size is 0."""
    first, last = batch.span[0], batch.span[-1]
    handle = first.handle
    assert isinstance(handle, Position)
    return {
        "shardId": handle.shard_id,
        "startSequenceNumber": first.item_id,
        "endSequenceNumber": last.item_id,
        "approximateArrivalOfFirstRecord": timestamp(first.arrived_at),
        "approximateArrivalOfLastRecord": timestamp(last.arrived_at),
        "batchSize": len(batch),
        "streamArn": stream_arn,
    }
