"""A shard reader meeting a record its service cannot shape: the record is skipped and reported, the
shard reads on, and the checkpoint passes it only in read order.

The reader runs for real against an in-memory `ShardService` (our own protocol: one closed shard of
three records, the second of which makes `shape` raise) and a real `ShardTrack`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from broker.shard_leases import OwnedShard, ShardInfo
from broker.sources.base import Record
from broker.sources.shards.reader import ReadPace, ShardReader
from broker.sources.shards.service import Fetched
from broker.sources.shards.track import Position, ShardTrack

pytestmark = pytest.mark.timeout(10)


class OneClosedShard:
    """A `ShardService` whose one shard holds `records` and then ends; a record marked poison fails to shape."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.unreadable: list[str] = []

    async def list_shards(self) -> list[ShardInfo]:
        return []

    async def open_iterator(self, shard_id: str, after: str | None, from_first_record: bool) -> str | None:
        return "the-only-iterator"

    async def fetch(self, iterator: str, limit: int) -> Fetched:
        return Fetched(self.records, next_iterator=None)

    def sequence_of(self, raw: Any) -> str:
        return str(raw["sequence"])

    def partition_key_of(self, raw: Any) -> str:
        return "key"

    def shape(self, raw: Any, position: Position) -> Record:
        if raw.get("poison"):
            raise KeyError("data")  # a shape meeting input it did not foresee
        return Record(raw["sequence"], "shard-0", {}, 10, 0.0, {}, handle=position)


async def test_a_record_that_cannot_be_shaped_is_skipped_reported_and_passed_in_order() -> None:
    service = OneClosedShard([{"sequence": "1"}, {"sequence": "2", "poison": True}, {"sequence": "3"}])
    track = ShardTrack(OwnedShard("shard-0", 1, None, False), lanes=1, batch_size=10, window_seconds=0)
    ended = asyncio.Event()
    reader = ShardReader(
        service, track, ReadPace(0.0, 0.0, 100), on_records=lambda: None, on_caught_up=lambda: None, on_end=ended.set
    )
    await asyncio.wait_for(reader.run(), 5)

    assert ended.is_set(), "the shard was read to its end past the poison record"
    assert track.reading_done
    assert len(service.unreadable) == 1
    assert service.unreadable[0].startswith("shard-0@2: KeyError")
    batch = track.take_ready(time.monotonic())
    assert batch is not None
    assert [record.item_id for record in batch.records] == ["1", "3"]
    assert track.progress is None, "the skipped record is done, but record 1 before it is not"
    track.settle(batch)
    assert track.progress == "3"
    assert track.finished, "nothing of the shard is left unsettled: it can be checkpointed at its end"
