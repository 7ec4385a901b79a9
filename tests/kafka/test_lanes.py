"""When a Kafka partition's lane asks the consumer to stop fetching it (`Lanes.should_pause`).

A paused partition misses the fetch already sent to the broker, so its next record waits out that
fetch's long poll (500 ms): pausing only when there is a reason keeps low-load latency at the bare
loop's (bench/latency.py's Kafka row). Order is kept by the lane itself, one batch out at a time.
"""

from __future__ import annotations

import time

from broker.sources.base import Record
from broker.sources.kafka.lanes import Lanes, Position

LANE = "orders-0"


def shape(offset: int, epoch: int) -> Record:
    return Record(f"{LANE}@{offset}", LANE, {"offset": offset}, 10, time.time(), {}, Position(offset, epoch))


def lanes(batch_size: int) -> Lanes:
    return Lanes(batch_size=batch_size, window_seconds=0.0, shape=shape)


def test_a_batch_out_leaves_its_partition_fetching_and_holds_the_next_batch_back() -> None:
    lanes_ = lanes(batch_size=1)
    lanes_.assign(LANE)
    lanes_.add(LANE, 0, 10, time.monotonic())
    assert not lanes_.should_pause(LANE)  # a batch about to be taken is no reason to stop fetching
    first = lanes_.take_ready(time.monotonic())
    assert first is not None
    assert not lanes_.should_pause(LANE)  # the batch out: the next record is fetched meanwhile

    lanes_.add(LANE, 1, 10, time.monotonic())
    assert lanes_.should_pause(LANE)  # the next batch is buffered: enough ahead
    assert lanes_.take_ready(time.monotonic()) is None  # and it waits for the one out
    assert lanes_.settle(first)
    assert not lanes_.should_pause(LANE)
    second = lanes_.take_ready(time.monotonic())
    assert second is not None
    assert [record.item_id for record in second.records] == [f"{LANE}@1"]


def test_two_batches_buffered_pause_a_partition_with_nothing_out() -> None:
    lanes_ = lanes(batch_size=2)
    lanes_.assign(LANE)
    for offset in range(3):
        lanes_.add(LANE, offset, 10, time.monotonic())
    assert not lanes_.should_pause(LANE)
    lanes_.add(LANE, 3, 10, time.monotonic())
    assert lanes_.should_pause(LANE)


def test_a_batch_of_an_earlier_assignment_still_out_pauses_the_partition_given_back() -> None:
    lanes_ = lanes(batch_size=10)
    lanes_.assign(LANE)
    lanes_.add(LANE, 0, 10, time.monotonic())
    old = lanes_.take_ready(time.monotonic())
    assert old is not None
    lanes_.revoke(LANE)
    lanes_.assign(LANE)  # back, under a new epoch, while the old batch still runs

    assert lanes_.should_pause(LANE)  # its records come again from the committed offset: not beside it
    assert not lanes_.settle(old)  # settled, but no longer owned: not committed here
    assert not lanes_.should_pause(LANE)
