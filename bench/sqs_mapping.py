"""An SQS event source mapping through Headwater beside a bare aioboto3 receive/delete loop, in one run.

    python bench/sqs_mapping.py [--events 2000] [--samples 30]

Starts its own redis-server and moto server (tests/rig) on free loopback ports, then measures:

(a) throughput: events/s from the queue to a no-op handler through Headwater (the poller, in this
    process, and one `headwater worker` process; BatchSize 10), and through a bare loop that
    receives ten and deletes them, on the same kind of queue fed the same way;
(b) added latency at low load: one message at a time, from SendMessage to the handler starting
    (Headwater) or to ReceiveMessage returning it (bare loop); p50 and p95.

moto scans its whole queue for every message sent or received, so a pre-filled queue would measure
moto: both sides get the same producer, which keeps about 100 messages waiting. Absolute figures
are bound by moto on this machine; the ratio is the point. Sandboxes are warmed first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aioboto3
import yaml
from prometheus_client import REGISTRY
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.mapping import EventSourceMapping
from broker.supervisor import Supervisor
from tests.rig import MotoServer, RedisServer, aws_env
from tests.rig.common import ManagedProcess

WAITING_TARGET = 100  # messages the producer keeps in the queue
VISIBILITY_TIMEOUT = "30"


def functions(redis_url: str) -> list[dict[str, Any]]:
    recorder = {"Handler": "tests.handlers.sources.handle", "Environment": {"Variables": {"REDIS_URL": redis_url}}}
    return [{"FunctionName": "noop", "Handler": "examples.handlers.noop"}, {"FunctionName": "recorder", **recorder}]


class Bench:
    def __init__(self, sqs: Any, redis_url: str, directory: Path) -> None:
        self.sqs = sqs
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.directory = directory

    async def queue(self) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        url = (await self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": VISIBILITY_TIMEOUT}))[
            "QueueUrl"
        ]
        arn = (await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        return url, arn

    async def feed(self, url: str, events: int, consumed: Callable[[], int], body: Callable[[int], str]) -> float:
        """Send `events` messages, keeping about WAITING_TARGET waiting; events/s from first to last consumed."""
        sent, started = 0, time.perf_counter()
        while consumed() < events:
            if sent < events and sent - consumed() < WAITING_TARGET:
                entries = [{"Id": str(i), "MessageBody": body(sent + i)} for i in range(min(10, events - sent))]
                await self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
                sent += len(entries)
            else:
                await asyncio.sleep(0.002)
        return events / (time.perf_counter() - started)

    async def poller(self, mapping: dict[str, Any]) -> tuple[Supervisor, asyncio.Task[None]]:
        config = self.directory / f"poll-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump({"Functions": functions(self.redis_url), "EventSourceMappings": [mapping]}))
        supervisor = Supervisor(config, self.redis_url, grace_seconds=5)
        return supervisor, asyncio.create_task(supervisor.run())

    async def headwater_rate(self, events: int) -> float:
        url, arn = await self.queue()
        mapping = {"FunctionName": "noop", "EventSourceArn": arn, "BatchSize": 10}
        labels = {"event_source": EventSourceMapping.model_validate(mapping).uuid, "source_type": "sqs"}

        def deleted() -> int:
            return int(REGISTRY.get_sample_value("headwater_esm_events_total", {**labels, "stage": "deleted"}) or 0)

        supervisor, task = await self.poller(mapping)
        await self.feed(url, 50, deleted, lambda i: "{}")  # warm the sandbox and the poller's loops
        rate = await self.feed(url, events, lambda: deleted() - 50, lambda i: "{}")
        supervisor.stop()
        await task
        return rate

    async def bare_rate(self, events: int) -> float:
        url, _ = await self.queue()
        done = [0]
        loop = asyncio.create_task(self._receive_and_delete(url, done))
        rate = await self.feed(url, events, lambda: done[0], lambda i: "{}")
        loop.cancel()
        return rate

    async def _receive_and_delete(self, url: str, done: list[int]) -> None:
        while True:
            answer = await self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=20)
            messages = answer.get("Messages", [])
            if messages:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                await self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                done[0] += len(messages)

    async def headwater_latency(self, samples: int) -> list[float]:
        url, arn = await self.queue()
        supervisor, task = await self.poller({"FunctionName": "recorder", "EventSourceArn": arn, "BatchSize": 10})
        ns = uuid.uuid4().hex[:8]

        async def one(index: int) -> float:
            sent = time.time()
            await self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"ns": ns, "id": str(index)}))
            await _until(lambda: self.redis.llen(f"seen:{ns}") > index)
            return float(json.loads(self.redis.lindex(f"seen:{ns}", index))["started"]) - sent

        latencies = await _sampled(one, samples)
        supervisor.stop()
        await task
        return latencies

    async def bare_latency(self, samples: int) -> list[float]:
        url, _ = await self.queue()
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def receive() -> None:
            while True:
                answer = await self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=20)
                for message in answer.get("Messages", []):
                    await arrived.put(time.time())
                    await self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

        receiver = asyncio.create_task(receive())

        async def one(index: int) -> float:
            sent = time.time()
            await self.sqs.send_message(QueueUrl=url, MessageBody="{}")
            return await arrived.get() - sent

        latencies = await _sampled(one, samples)
        receiver.cancel()
        return latencies


async def _sampled(one: Callable[[int], Awaitable[float]], samples: int) -> list[float]:
    await one(0)  # warm-up, not counted
    return [await one(index) for index in range(1, samples + 1)]


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.001)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(redis_url: str, events: int, samples: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    worker = start_worker(redis_url, directory)
    try:
        async with aioboto3.Session().client("sqs") as sqs:
            bench = Bench(sqs, redis_url, directory)
            print(f"(a) throughput, {events} events, no-op handler, BatchSize 10, 1 worker process")
            ours = await bench.headwater_rate(events)
            bare = await bench.bare_rate(events)
            print(f"    headwater:  {ours:8.0f} events/s")
            print(f"    bare loop:  {bare:8.0f} events/s   (receive 10, delete 10)")
            print(f"    ratio:      {ours / bare:8.2f}")
            print(f"(b) latency at low load, {samples} messages one at a time")
            mine, theirs = await bench.headwater_latency(samples), await bench.bare_latency(samples)
            for label, values in (("headwater", mine), ("bare loop", theirs)):
                p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
                print(f"    {label + ':':11} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
            added = (statistics.median(mine) - statistics.median(theirs)) * 1000
            print(f"    added by headwater (p50): {added:.1f} ms")
    finally:
        worker.stop(timeout=15)


def start_worker(redis_url: str, directory: Path) -> ManagedProcess:
    config = directory / "worker.yaml"
    config.write_text(yaml.safe_dump({"Functions": functions(redis_url)}))
    argv = [sys.executable, "-m", "broker.cli", "--log-level", "WARNING", "worker", "--config", str(config),
            "--processes", "1"]  # fmt: skip
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    worker = ManagedProcess("headwater-worker", argv, directory / "worker.log", cwd=ROOT, env=env)
    worker.start()
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while not redis.zcard("headwater:workers"):
        if time.monotonic() > deadline or not worker.running:
            raise RuntimeError(f"the worker did not start:\n{worker.tail()}")
        time.sleep(0.05)
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    from broker import logs

    logs.configure("WARNING")
    with RedisServer() as redis, MotoServer() as moto:
        os.environ.update(aws_env(moto.endpoint_url))
        started = time.monotonic()
        asyncio.run(measure(redis.url, args.events, args.samples))
        print(f"(run took {time.monotonic() - started:.0f} s; moto {moto.endpoint_url}, redis {redis.url})")


if __name__ == "__main__":
    main()
