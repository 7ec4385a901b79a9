"""Tumbling windows (TumblingWindowInSeconds) on Kinesis: the state carried from one invocation of a
window to the next, the final invocation, batches cut at window boundaries, a window rebuilt after
its poller was killed, and a response without `state` retried as a failure.

Everything runs for real (moto's Kinesis over HTTP, a worker pool and `headwater poll` processes)
with windows of 2 s, against a Redis and a worker pool of this module's own whose functions run
`tests.kinesis.window_handler`. A test first waits, if need be, for the start of a window, so the
records it puts at once share one window.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import keys
from broker.invocation import Result, Status
from broker.shard_leases import OwnedShard
from broker.sources.base import Record
from broker.sources.shards import ShardTrack
from broker.sources.shards.windows import ShardWindows
from tests.harness import emptied, none_left, private_redis, running_stack, serving_pool
from tests.kinesis.conftest import KinesisHarness, check_kinesis_event
from tests.rig import MotoServer, RedisServer
from tests.rig.common import ManagedProcess
from tests.sources.contract import Stack, bodies

pytestmark = pytest.mark.timeout(60)
on_moto = pytest.mark.parametrize("kinesis_endpoint", ["moto"], indirect=True)
WINDOW_HANDLER = "tests.kinesis.window_handler.handle"
WINDOW_SECONDS = 2
WRAPPER_KEYS = [
    "Records", "window", "state", "shardId", "eventSourceARN", "isFinalInvokeForWindow", "isWindowTerminatedEarly",
]  # fmt: skip


window_redis = private_redis("window_redis", scope="module")


@pytest.fixture(scope="module")
def window_workers(window_redis: RedisServer, moto_server: MotoServer) -> Iterator[ManagedProcess]:
    with serving_pool("kinesis-window-workers", window_redis.url, WINDOW_HANDLER, 1) as pool:
        yield pool


@pytest.fixture
async def stack(
    window_redis: RedisServer, kinesis_endpoint: dict[str, str], window_workers: ManagedProcess, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(emptied(window_redis), kinesis_endpoint, window_workers, tmp_path) as running:
        yield running


@on_moto
async def test_state_is_carried_through_a_window_and_finalized(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    sent = bodies(ns, 5)
    await _at_window_start()
    await harness.send(sent)
    await stack.start_poller([_mapping(harness, BatchSize=2)])
    runs = await _wait_for_finals(stack, harness, 1)
    assert [run["ids"] for run in runs] == [["m1", "m2"], ["m3", "m4"], ["m5"], []]
    events = [run["event"] for run in runs]
    assert all(list(event) == WRAPPER_KEYS for event in events)
    assert [event["state"] for event in events] == [
        {}, {"ids": ["m1", "m2"]}, {"ids": ["m1", "m2", "m3", "m4"]}, {"ids": ["m1", "m2", "m3", "m4", "m5"]},
    ]  # fmt: skip
    assert [event["isFinalInvokeForWindow"] for event in events] == [False, False, False, True]
    assert not any(event["isWindowTerminatedEarly"] for event in events)
    assert {event["shardId"] for event in events} == {"shardId-000000000000"}
    assert {event["eventSourceARN"] for event in events} == {harness.arn}
    arrived = events[0]["Records"][0]["kinesis"]["approximateArrivalTimestamp"]
    start = arrived // WINDOW_SECONDS * WINDOW_SECONDS
    assert all(event["window"] == {"start": _iso(start), "end": _iso(start + WINDOW_SECONDS)} for event in events)
    for event, run in zip(events[:3], runs, strict=False):
        check_kinesis_event(
            {"Records": event["Records"]}, [body for body in sent if body["id"] in run["ids"]], harness.arn
        )
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed once the window closed")


@on_moto
async def test_a_batch_never_spans_two_windows(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await _at_window_start()
    await harness.send(bodies(ns, 3, prefix="a"))
    await _at_window_start(next_window=True)  # the next window: its records are read with these
    await harness.send(bodies(ns, 3, prefix="b"))
    await stack.start_poller([_mapping(harness, BatchSize=10)])
    runs = await _wait_for_finals(stack, harness, 2)
    assert [run["ids"] for run in runs] == [["a1", "a2", "a3"], [], ["b1", "b2", "b3"], []]
    events = [run["event"] for run in runs]
    assert [event["isFinalInvokeForWindow"] for event in events] == [False, True, False, True]
    assert [event["state"] for event in events] == [{}, {"ids": ["a1", "a2", "a3"]}, {}, {"ids": ["b1", "b2", "b3"]}]
    for event in (events[0], events[2]):
        bounds = event["window"]
        for record in event["Records"]:
            assert bounds["start"] <= _iso(record["kinesis"]["approximateArrivalTimestamp"]) < bounds["end"]
    assert events[0]["window"]["end"] == events[2]["window"]["start"]
    assert events[1]["window"] == events[0]["window"]


@on_moto
async def test_a_window_is_rebuilt_after_its_poller_is_killed(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await _at_window_start()
    await harness.send(bodies(ns, 4, m3={"block": True}))
    mapping = _mapping(harness, "recorder-patient", BatchSize=2)
    first = stack.spawn_poller([mapping])
    await stack.wait_for(lambda: stack.started(ns), what="the window's second batch to start")
    shard = keys.shard_lease(_mapping_uuid(harness), "shardId-000000000000")
    assert not stack.redis.hget(shard, "checkpoint"), "the checkpoint stays before the open window's first record"
    first.kill()
    stack.release(ns)
    stack.spawn_poller([mapping])
    runs = await _wait_for_finals(stack, harness, 1)
    assert runs[-1]["event"]["state"] == {"ids": ["m1", "m2", "m3", "m4"]}, "rebuilt from {}: each record once"
    replayed = [(run["ids"], run["event"]["state"]) for run in runs if run["ids"] == ["m1", "m2"]]
    assert replayed == [(["m1", "m2"], {}), (["m1", "m2"], {})], "the window was read again from its start"
    await stack.wait_for(none_left(harness.unacknowledged), what="checkpointed after the final invocation")


@on_moto
async def test_a_response_without_state_is_retried_as_a_failure(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await _at_window_start()
    await harness.send(bodies(ns, 4, m3={"stateless": 1}))
    await stack.start_poller([_mapping(harness, BatchSize=2, MaximumRetryAttempts=3)])
    runs = await _wait_for_finals(stack, harness, 1)
    assert [(run["ids"], run["event"]["state"]) for run in runs] == [
        (["m1", "m2"], {}),
        (["m3", "m4"], {"ids": ["m1", "m2"]}),
        (["m3", "m4"], {"ids": ["m1", "m2"]}),  # the answer without state moved nothing
        ([], {"ids": ["m1", "m2", "m3", "m4"]}),
    ]


@on_moto
async def test_a_state_over_one_megabyte_ends_the_window_early(stack: Stack, harness: KinesisHarness) -> None:
    await harness.create()
    ns = stack.namespace()
    await _at_window_start()
    await harness.send(bodies(ns, 3, m2={"big": True}))
    await stack.start_poller([_mapping(harness, BatchSize=1)])
    runs = await _wait_for_finals(stack, harness, 2)
    events = [run["event"] for run in runs]
    assert [run["ids"] for run in runs] == [["m1"], ["m2"], [], ["m3"], []]
    assert [(e["isFinalInvokeForWindow"], e["isWindowTerminatedEarly"]) for e in events] == [
        (False, False), (False, False), (True, True), (False, False), (True, False),
    ]  # fmt: skip
    assert events[2]["state"]["ids"] == ["m1", "m2"], "the final invocation carries the big state"
    assert [events[3]["state"], events[4]["state"]] == [{}, {"ids": ["m3"]}], "the window goes on, fresh"
    assert len({json.dumps(event["window"]) for event in events}) == 1


def test_the_checkpoint_waits_for_the_windows_final_invocation() -> None:
    """The bookkeeping alone: batches cut at the boundary, the final invocation before the next
    window, and the checkpoint held before the open window's first record."""
    windows = ShardWindows(10, "shard-0", "arn:stream")
    track = ShardTrack(OwnedShard("shard-0", 1, None, False), 1, 10, 0, windows=windows)
    for number, arrived in enumerate([100.0, 101.0, 109.0, 110.0]):
        position = track.position(str(number))
        track.add(Record(str(number), "shard-0", {}, 10, arrived, {}, handle=position), "key", 0.0)
    batch = track.take_ready(1.0)
    assert batch is not None
    assert [record.item_id for record in batch.records] == ["0", "1", "2"]
    assert windows.event(batch, {"Records": ["r"] * 3})["window"] == {
        "start": "1970-01-01T00:01:40Z",
        "end": "1970-01-01T00:01:50Z",
    }
    asyncio.run(_answer_and_settle(track, batch, '{"state": {"n": 3}}'))
    assert track.progress is None, "the window is open until its final invocation succeeds"
    final = track.take_ready(1.0)
    assert final is not None
    assert (final.final, final.records) == (True, ()), "an empty batch: no record to filter, count or age"
    assert [record.item_id for record in final.span] == ["0", "2"], "placed by the window's first and last records"
    assert windows.event(final, {"Records": []})["isFinalInvokeForWindow"] is True
    assert windows.event(final, {"Records": []})["state"] == {"n": 3}
    asyncio.run(_answer_and_settle(track, final, '{"state": {}}'))
    assert track.progress == "2"
    following = track.take_ready(time.monotonic())  # the lane was freed on the loop's clock
    assert following is not None
    assert [record.item_id for record in following.records] == ["3"]
    assert windows.event(following, {"Records": ["r"]})["state"] == {}


# -- helpers --------------------------------------------------------------------------------------
def _mapping(harness: KinesisHarness, function: str = "recorder", **fields: Any) -> dict[str, Any]:
    return harness.mapping(function, TumblingWindowInSeconds=WINDOW_SECONDS, **fields)


async def _answer_and_settle(track: ShardTrack, batch: Any, payload: str) -> None:
    assert track.windows is not None
    assert track.windows.answered(batch, Result("r", Status.SUCCESS, payload), frozenset())
    track.settle(batch)


async def _at_window_start(*, next_window: bool = False) -> None:
    """Return at once when at least half of the current window is left (unless `next_window`),
    else at the next window's start: records put right after share one window."""
    into = time.time() % WINDOW_SECONDS
    if next_window or into > WINDOW_SECONDS / 2:
        await asyncio.sleep(WINDOW_SECONDS - into + 0.05)


async def _wait_for_finals(stack: Stack, harness: KinesisHarness, count: int) -> list[dict[str, Any]]:
    """Every invocation recorded once `count` final invocations ran."""

    def runs() -> list[dict[str, Any]]:
        return [json.loads(item) for item in stack.redis.lrange(f"windows:{harness.arn}", 0, -1)]

    await stack.wait_for(
        lambda: sum(run["event"]["isFinalInvokeForWindow"] for run in runs()) >= count,
        what=f"{count} final invocation(s)",
    )
    return runs()


def _mapping_uuid(harness: KinesisHarness) -> str:
    uuid = harness.mapping_uuid()
    assert uuid is not None, "no shard was registered"
    return uuid


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
