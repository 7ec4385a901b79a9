"""Kinesis → handler: Headwater's events/s and steady-state iterator age, beside a bare GetRecords loop.

Starts its own redis-server and kinesalite (tests/rig) and a stream of SHARDS shards. Two phases,
each measured for Headwater (`headwater worker` + `headwater poll`) and for the baseline, a bare
asyncio loop per shard calling GetRecords and the same handler inline (the upper bound of what
anything in between can reach on this machine, with the same cadence: at once while records
come, once a second when idle):

1. throughput: RECORDS records written first, then read from TRIM_HORIZON; events/s from the
   first batch handled to the last record;
2. iterator age under a producer writing RATE records/s for SECONDS: the age of each batch's last
   record when the handler starts (Lambda's IteratorAge, plus the hop through the queue for
   Headwater), median and 99th percentile over the steady state (the first 3 s are left out).

    python bench/kinesis_mapping.py [--records 10000] [--rate 200] [--seconds 15] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import yaml
from redis import Redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from broker import keys
from tests.rig import KinesaliteServer, RedisServer, aws_env, free_port
from tests.rig.redis import reply_text

SHARDS = 2
WARM_UP_SECONDS = 3.0
SAMPLES_KEY = "bench:kinesis:batches"


def handle(event: dict[str, Any], context: Any) -> None:
    """The function under test: notes when it ran, how many records, and the last record's age."""
    now = time.time()
    records = event["Records"]
    age = now - records[-1]["kinesis"]["approximateArrivalTimestamp"]
    _redis().rpush(SAMPLES_KEY, f"{now} {len(records)} {age}")


_client: Redis | None = None


def _redis() -> Redis:
    global _client  # noqa: PLW0603  (one connection per worker process, made on first use)
    if _client is None:
        _client = Redis.from_url(os.environ["REDIS_URL"])
    return _client


def samples(redis: Redis) -> list[tuple[float, int, float]]:
    raw = redis.lrange(SAMPLES_KEY, 0, -1)
    return [(float(a), int(b), float(c)) for a, b, c in (reply_text(item).split() for item in raw)]


# -- the stream ------------------------------------------------------------------------------------
async def create_stream(client: Any, name: str) -> str:
    await client.create_stream(StreamName=name, ShardCount=SHARDS)
    await client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
    summary = await client.describe_stream_summary(StreamName=name)
    return str(summary["StreamDescriptionSummary"]["StreamARN"])


async def put(client: Any, name: str, count: int, start: int = 0) -> None:
    body = json.dumps({"orderId": 0, "note": "x" * 60}).encode()
    for first in range(start, start + count, 500):
        entries = [{"Data": body, "PartitionKey": str(i)} for i in range(first, min(first + 500, start + count))]
        await client.put_records(StreamName=name, Records=entries)


async def produce(client: Any, name: str, rate: int, seconds: float) -> None:
    """RATE records/s in ten writes a second, for SECONDS."""
    started, written = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) - written
        if due > 0:
            await put(client, name, due, written)
            written += due
        await asyncio.sleep(0.1)


# -- Headwater -------------------------------------------------------------------------------------
def start_headwater(redis_url: str, env: dict[str, str], arn: str, position: str, workers: int) -> list[Any]:
    directory = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    config = directory / "headwater.yaml"
    function = {"FunctionName": "bench", "Handler": "bench.kinesis_mapping.handle", "Timeout": 30,
                "Environment": {"Variables": {"REDIS_URL": redis_url}}}  # fmt: skip
    mapping = {"FunctionName": "bench", "EventSourceArn": arn, "StartingPosition": position, "BatchSize": 100}
    config.write_text(yaml.safe_dump({"Functions": [function], "EventSourceMappings": [mapping]}))
    env = {**os.environ, **env, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    env["HEADWATER_LOG_LEVEL"] = "WARNING"
    cli = [sys.executable, "-m", "broker.cli"]
    commands = [
        [*cli, "worker", "--config", str(config), "--processes", str(workers)],
        [*cli, "poll", "--config", str(config), "--metrics-port", str(free_port())],
    ]
    with (directory / "processes.log").open("wb") as log:
        return [subprocess.Popen(c, env=env, cwd=REPO_ROOT, stdout=log, stderr=log) for c in commands]


def stop(processes: list[Any]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


# -- the bare loop ---------------------------------------------------------------------------------
async def bare_loop(client: Any, name: str, position: str, until: asyncio.Event) -> None:
    shards = (await client.list_shards(StreamName=name))["Shards"]

    async def read(shard_id: str) -> None:
        answer = await client.get_shard_iterator(StreamName=name, ShardId=shard_id, ShardIteratorType=position)
        iterator = answer["ShardIterator"]
        while iterator and not until.is_set():
            answer = await client.get_records(ShardIterator=iterator, Limit=10000)
            iterator = answer.get("NextShardIterator")
            records = answer["Records"]
            for start in range(0, len(records), 100):  # the handler sees Lambda-sized batches, as Headwater's
                chunk = records[start : start + 100]
                stamps = [{"kinesis": {"approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp()}}
                          for r in chunk]  # fmt: skip
                handle({"Records": stamps}, None)
            await asyncio.sleep(0.2 if records else 1.0)

    await asyncio.gather(*(read(shard["ShardId"]) for shard in shards))


# -- measurements ----------------------------------------------------------------------------------
async def wait_for_count(redis: Redis, count: int, within: float) -> list[tuple[float, int, float]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = samples(redis)
        if sum(n for _, n, _ in seen) >= count:
            return seen
        await asyncio.sleep(0.1)
    raise SystemExit(f"only {sum(n for _, n, _ in samples(redis))} of {count} records were handled")


def rate_of(seen: list[tuple[float, int, float]], count: int) -> float:
    first = min(at for at, _, _ in seen)
    last = max(at for at, _, _ in seen)
    return (count - seen[0][1]) / max(last - first, 1e-6)


def ages(seen: list[tuple[float, int, float]], since: float) -> tuple[float, float]:
    steady = sorted(age for at, _, age in seen if at >= since)
    if not steady:
        return float("nan"), float("nan")
    return statistics.median(steady), steady[min(len(steady) - 1, int(len(steady) * 0.99))]


@dataclass
class Bench:
    client: Any
    redis: Redis
    redis_url: str
    env: dict[str, str]
    workers: int

    async def stream(self) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        return name, await create_stream(self.client, name)

    async def throughput(self, records: int) -> tuple[float, float]:
        """(bare, Headwater) events/s over RECORDS records written beforehand."""
        name, arn = await self.stream()
        await put(self.client, name, records)
        self.redis.delete(SAMPLES_KEY)
        done = asyncio.Event()
        loop = asyncio.create_task(bare_loop(self.client, name, "TRIM_HORIZON", done))
        bare = rate_of(await wait_for_count(self.redis, records, 120), records)
        done.set()
        await loop
        self.redis.delete(SAMPLES_KEY)
        processes = start_headwater(self.redis_url, self.env, arn, "TRIM_HORIZON", self.workers)
        try:
            ours = rate_of(await wait_for_count(self.redis, records, 180), records)
        finally:
            stop(processes)
        return bare, ours

    async def leases_held(self) -> None:
        """Wait until every worker process is up and the poller holds a lease on every shard."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.redis.zcard(keys.workers("bench")) < self.workers:
                await asyncio.sleep(0.1)
                continue
            for key in self.redis.scan_iter(match=f"{keys.PREFIX}:shards:*"):
                uuid_ = reply_text(key).rsplit(":", 1)[1].strip("{}")
                owners = [
                    self.redis.hget(keys.shard_lease(uuid_, reply_text(s)), "owner") for s in self.redis.smembers(key)
                ]
                if len(owners) == SHARDS and all(owners):
                    return
            await asyncio.sleep(0.1)
        raise SystemExit("the workers or the poller's shard leases were not up within 60 s")

    async def age_under_load(self, runner: str, rate: int, seconds: float) -> tuple[float, float]:
        """(median, p99) iterator age of `runner` ("bare" or "headwater") under a steady producer."""
        name, arn = await self.stream()
        self.redis.delete(SAMPLES_KEY)
        done = asyncio.Event()
        loop, processes = None, []
        if runner == "bare":
            loop = asyncio.create_task(bare_loop(self.client, name, "TRIM_HORIZON", done))
        else:
            processes = start_headwater(self.redis_url, self.env, arn, "TRIM_HORIZON", self.workers)
            await self.leases_held()  # the poller's start (Python, leases) is not the steady state
        started = time.time()
        await produce(self.client, name, rate, seconds)
        await asyncio.sleep(1.5)
        done.set()
        if loop is not None:
            await loop
        stop(processes)
        return ages(samples(self.redis), started + WARM_UP_SECONDS)


async def main(records: int, rate: int, seconds: float, workers: int) -> None:
    with RedisServer() as redis_server, KinesaliteServer() as kinesalite:
        env = {**aws_env(kinesalite.endpoint_url), "AWS_ENDPOINT_URL_KINESIS": kinesalite.endpoint_url}
        os.environ.update({**env, "REDIS_URL": redis_server.url})  # the inline handler's Redis, as the workers'
        redis = Redis.from_url(redis_server.url)
        async with aioboto3.Session().client("kinesis") as client:
            bench = Bench(client, redis, redis_server.url, env, workers)
            bare, ours = await bench.throughput(records)
            headwater = f"Headwater ({workers} workers, BatchSize 100):"
            print(f"{'bare GetRecords loop, handler inline:':44}{bare:9.0f} events/s")
            print(f"{headwater:44}{ours:9.0f} events/s   {ours / bare:6.1%} of bare")
            print(f"iterator age at {rate} records/s over {SHARDS} shards (median / p99 of each batch's last record):")
            for label, runner in (("  bare GetRecords loop:", "bare"), ("  Headwater:", "headwater")):
                median, p99 = await bench.age_under_load(runner, rate, seconds)
                print(f"{label:44}{median:9.3f} s / {p99:.3f} s")
        redis.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.records, arguments.rate, arguments.seconds, arguments.workers))
