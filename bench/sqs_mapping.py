"""An SQS event source mapping through Headwater beside a bare aioboto3 receive/delete loop, in one run.

    python bench/sqs_mapping.py [--service elasticmq|moto] [--events N] [--samples 30]

Starts its own redis-server and SQS server (tests/rig: ElasticMQ by default, moto on request) on
free loopback ports, then measures, each time Headwater (the poller in this process, one
`headwater worker` process, a no-op handler, BatchSize 10) beside a bare loop that receives ten
and deletes them:

(a) throughput from a pre-filled queue: N messages wait before the consumer starts; events/s from
    its start to the last deletion (the poller's own start-up, a few ms, is inside);
(b) throughput under a paced producer that keeps about 100 messages waiting; events/s from the
    first send to the last deletion;
(c) added latency at low load: one message at a time, from SendMessage to the handler starting
    (Headwater) or to ReceiveMessage returning it (bare loop); p50 and p95 of each and the
    difference.

The worker's sandbox is warmed before anything is timed. ElasticMQ is a real queue and fast enough
for the figures to be about Headwater. moto scans its whole queue for every message sent or
received, so on moto (a) mostly measures moto and the default N is smaller; the ratio is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import yaml
from prometheus_client import Counter
from redis import Redis
from redis import asyncio as redis_async

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import keys, metrics
from broker.mapping import EventSourceMapping
from broker.supervisor import Supervisor
from tests.rig import ElasticMQServer, MotoServer, RedisServer, aws_env
from tests.rig.common import ManagedProcess

WAITING_TARGET = 100  # messages the paced producer keeps in the queue
VISIBILITY_TIMEOUT = "30"
BATCH_SIZE = 10
DEFAULT_EVENTS = {"elasticmq": 5000, "moto": 1000}
FILL_SENDERS = 4  # concurrent SendMessageBatch calls while pre-filling


def functions(redis_url: str) -> list[dict[str, Any]]:
    recorder = {"Handler": "tests.handlers.sources.handle", "Environment": {"Variables": {"REDIS_URL": redis_url}}}
    return [{"FunctionName": "noop", "Handler": "examples.handlers.noop"}, {"FunctionName": "recorder", **recorder}]


@dataclass(frozen=True)
class Rates:
    headwater: float
    bare: float


class Bench:
    def __init__(self, sqs: Any, redis_url: str, directory: Path) -> None:
        self.sqs = sqs
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.directory = directory

    async def queue(self) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        attributes = {"VisibilityTimeout": VISIBILITY_TIMEOUT}
        url = (await self.sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        answer = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url, answer["Attributes"]["QueueArn"]

    async def feed(self, url: str, events: int, consumed: Callable[[], int]) -> float:
        """Send `events` messages, keeping about WAITING_TARGET waiting; events/s from first send to last consumed."""
        sent, started = 0, time.perf_counter()
        while consumed() < events:
            if sent < events and sent - consumed() < WAITING_TARGET:
                count = min(10, events - sent)
                await self._send_ten(url, count)
                sent += count
            else:
                await asyncio.sleep(0.002)
        return events / (time.perf_counter() - started)

    async def fill(self, url: str, events: int) -> None:
        """Put `events` messages in the queue before anyone reads it."""
        calls = [min(10, events - start) for start in range(0, events, 10)]

        async def sender(share: list[int]) -> None:
            for count in share:
                await self._send_ten(url, count)

        await asyncio.gather(*(sender(calls[i::FILL_SENDERS]) for i in range(FILL_SENDERS)))

    async def _send_ten(self, url: str, count: int) -> None:
        entries = [{"Id": str(i), "MessageBody": "{}"} for i in range(count)]
        answer = await self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
        if answer.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {answer['Failed']}")

    async def poller(self, mapping: dict[str, Any]) -> tuple[Supervisor, asyncio.Task[None]]:
        config = self.directory / f"poll-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump({"Functions": functions(self.redis_url), "EventSourceMappings": [mapping]}))
        supervisor = Supervisor(config, self.redis_url, grace_seconds=5)
        return supervisor, asyncio.create_task(supervisor.run())

    async def warm(self) -> None:
        """Start the no-op function's sandbox in the worker, so no timed run pays a cold start."""
        await self.headwater_rate(50, prefilled=False)

    async def headwater_rate(self, events: int, *, prefilled: bool) -> float:
        url, arn = await self.queue()
        mapping = {"FunctionName": "noop", "EventSourceArn": arn, "BatchSize": BATCH_SIZE}
        labels = {"mapping": EventSourceMapping.model_validate(mapping).uuid, "source_type": "sqs"}

        def deleted() -> int:
            return int(_counter_value(metrics.MAPPING_EVENTS, {**labels, "stage": "deleted"}))

        if prefilled:
            await self.fill(url, events)
            started = time.perf_counter()
            supervisor, task = await self.poller(mapping)
            await _until(lambda: deleted() >= events)
            rate = events / (time.perf_counter() - started)
        else:
            supervisor, task = await self.poller(mapping)
            rate = await self.feed(url, events, deleted)
        supervisor.stop()
        await task
        return rate

    async def bare_rate(self, events: int, *, prefilled: bool) -> float:
        url, _ = await self.queue()
        done = [0]
        if prefilled:
            await self.fill(url, events)
        started = time.perf_counter()
        loop = asyncio.create_task(self.receive_and_delete(url, done))
        if prefilled:
            await _until(lambda: done[0] >= events)
            rate = events / (time.perf_counter() - started)
        else:
            rate = await self.feed(url, events, lambda: done[0])
        loop.cancel()
        return rate

    async def receive_and_delete(
        self, url: str, done: list[int], handle: Callable[[list[dict[str, Any]]], object] | None = None
    ) -> None:
        """The bare loop: long-poll up to ten, call `handle` (if any) on them inline, delete them; forever."""
        while True:
            answer = await self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=20)
            messages = answer.get("Messages", [])
            if messages:
                if handle is not None:
                    handle(messages)
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                await self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                done[0] += len(messages)

    async def rates(self, events: int, *, prefilled: bool) -> Rates:
        headwater = await self.headwater_rate(events, prefilled=prefilled)
        return Rates(headwater, await self.bare_rate(events, prefilled=prefilled))

    async def headwater_latency(self, samples: int) -> list[float]:
        url, arn = await self.queue()
        mapping = {"FunctionName": "recorder", "EventSourceArn": arn, "BatchSize": BATCH_SIZE}
        supervisor, task = await self.poller(mapping)
        ns = uuid.uuid4().hex[:8]

        seen = redis_async.Redis.from_url(self.redis_url)  # asynchronous: the poller shares this event loop

        async def one(index: int) -> float:
            sent = time.time()
            await self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"ns": ns, "id": str(index)}))
            await _until_answered(lambda: seen.llen(f"seen:{ns}"), index)
            entry = self.redis.lindex(f"seen:{ns}", index)
            assert entry is not None
            return float(json.loads(entry)["started"]) - sent

        latencies = await _sampled(one, samples)
        supervisor.stop()
        await task
        await seen.aclose()
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


def _counter_value(counter: Counter, labels: dict[str, str]) -> float:
    """A sample of one counter, read from that counter alone: the poller runs in this process, and a
    whole-registry scan (the process collector reads /proc) every millisecond would slow it."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == labels:
                return sample.value
    return 0.0


async def _until_answered(count: Callable[[], Awaitable[int]], above: int) -> None:
    """`_until` for a count read asynchronously (Redis, from the loop the poller runs in)."""
    while True:
        if await count() > above:
            return
        await asyncio.sleep(0.001)


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.001)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def print_rates(title: str, rates: Rates) -> None:
    print(title)
    print(f"    headwater:  {rates.headwater:8.0f} events/s")
    print(f"    bare loop:  {rates.bare:8.0f} events/s   (receive 10, delete 10)")
    print(f"    ratio:      {rates.headwater / rates.bare:8.2f}")


def print_latency(samples: int, mine: list[float], theirs: list[float]) -> None:
    print(f"(c) latency at low load, {samples} messages one at a time")
    for label, values in (("headwater", mine), ("bare loop", theirs)):
        p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
        print(f"    {label + ':':11} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    added = [(percentile(mine, q) - percentile(theirs, q)) * 1000 for q in (0.5, 0.95)]
    print(f"    added:      p50 {added[0]:+7.1f} ms   p95 {added[1]:+7.1f} ms")


async def measure(redis_url: str, events: int, samples: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    worker = start_worker(redis_url, directory)
    try:
        async with aioboto3.Session().client("sqs") as sqs:
            bench = Bench(sqs, redis_url, directory)
            await bench.warm()
            print(f"BatchSize {BATCH_SIZE}, no-op handler, 1 worker process")
            print_rates(f"(a) pre-filled queue, {events} messages", await bench.rates(events, prefilled=True))
            print_rates(
                f"(b) paced producer (about {WAITING_TARGET} waiting), {events} messages",
                await bench.rates(events, prefilled=False),
            )
            mine, theirs = await bench.headwater_latency(samples), await bench.bare_latency(samples)
            print_latency(samples, mine, theirs)
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
    while not redis.zcard(keys.workers("noop")):
        if time.monotonic() > deadline or not worker.running:
            raise RuntimeError(f"the worker did not start:\n{worker.describe_log()}")
        time.sleep(0.05)
    return worker


def sqs_server(service: str) -> ElasticMQServer | MotoServer:
    return ElasticMQServer() if service == "elasticmq" else MotoServer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=sorted(DEFAULT_EVENTS), default="elasticmq", help="the SQS server")
    parser.add_argument("--events", type=int, help="messages per throughput run (default: 5000, 1000 on moto)")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    events = args.events or DEFAULT_EVENTS[args.service]
    from broker import logs

    logs.configure("WARNING")
    with RedisServer() as redis, sqs_server(args.service) as server:
        os.environ.update(aws_env(server.endpoint_url))
        described = f"ElasticMQ {server.version}" if isinstance(server, ElasticMQServer) else "moto"
        print(f"SQS mapping on {described} ({server.endpoint_url}), redis {redis.url}")
        started = time.monotonic()
        asyncio.run(measure(redis.url, events, args.samples))
        print(f"(run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
