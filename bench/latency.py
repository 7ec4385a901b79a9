"""Added latency at low load, from the caller's enqueue to the handler's first line, beside a bare loop.

    python bench/latency.py [--calls 300] [--gap-ms 10] [--only event,sqs,kafka]

Measured in one run, on one private Redis, one worker process, one call or message in flight at a time:

* `Event` through `broker.client.Client`: the time from just before `invoke` (the client's checks and
  its Redis write included) to the moment the handler starts;
* sync `RequestResponse` through the same client: the same interval, and the whole call as the caller
  sees it (the result back);
* the baseline: a bare loop in its own process, `BRPOP` on a Redis list and the handler called inline,
  fed with `LPUSH` (no lease, no claim token, no sandbox, no retries: the floor Redis and Python set);
* an SQS queue on ElasticMQ (tests/rig): the time from just before `SendMessage` to the handler's start,
  through a real `headwater poll` and `headwater worker --processes 1` (BatchSize 1,
  MaximumBatchingWindowInSeconds 0), beside a bare receive/delete loop in its own process that long-polls
  and calls the handler inline (`bench/sqs_mapping.py`'s);
* a Kafka topic on a real broker (tests/rig, 3 partitions): the time from just before the produce (acks=1,
  no linger) to the handler's start, through the same two processes (BatchSize 1, window 0), beside a bare
  aiokafka consumer in its own process calling the handler inline (`bench/kafka_mapping.py`'s).

The handler stamps its own start (wall clock, one host) and appends it to a file, so no measurement
rides on the path measured. Each Headwater row also prints its p50/p95/p99 minus the same cut of its bare
loop. Every consumer takes one uncounted message first (the sandbox's cold start, the consumer group's
join). `--only` runs a subset, so a quick look at one source does not start the others' servers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
BARE_LIST = "bench:latency:bare"
CONFIG = "Functions:\n  - FunctionName: stamp\n    Handler: bench.latency.handler\n"
STAMP = {"FunctionName": "stamp", "Handler": "bench.latency.handler", "Timeout": 30}
SOURCES = ("event", "sqs", "kafka")
WARM_TIMEOUT = 120  # seconds for a consumer's first message: a cold sandbox, a consumer group's join
T = TypeVar("T")


def handler(event: dict[str, Any], context: Any) -> dict[str, float]:
    """Stamps its start; imported by the sandbox, so this module imports only the standard library (at the top:
    the SQS and Kafka rows import their clients where they run)."""
    started = time.time()
    for payload in _payloads(event):
        with open(payload["log"], "a") as log:
            log.write(f"{started - payload['sent']}\n")
    return {"started": started}


def _payloads(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The producer's payloads in an invocation, an SQS batch or a Kafka batch. Kafka values are base64 text
    from Headwater (as Lambda sends them) and raw bytes from the bare loop."""
    if "Records" in event:
        return [json.loads(record["body"]) for record in event["Records"]]
    if "records" in event:
        batches = event["records"].values()
        return [json.loads(base64.b64decode(r["value"]) if isinstance(r, dict) else r) for b in batches for r in b]
    return [event]


def bare_consumer(url: str) -> None:
    """The baseline's worker: pop, decode, call the handler inline; until the list's `stop` entry."""
    from redis import Redis

    redis = Redis.from_url(url)
    while True:
        popped = redis.brpop([BARE_LIST], timeout=5)
        if popped is None or popped[1] == b"stop":
            return
        handler(json.loads(popped[1]), None)


def bare_sqs(redis_url: str, queue_url: str) -> None:
    """The SQS baseline's process: bench/sqs_mapping.py's receive/delete loop, the handler called inline."""
    import aioboto3

    from bench.sqs_mapping import Bench

    def handle(messages: list[dict[str, Any]]) -> None:
        handler({"Records": [{"body": message["Body"]} for message in messages]}, None)

    async def run() -> None:
        async with aioboto3.Session().client("sqs") as sqs:
            await Bench(sqs, redis_url, Path(tempfile.gettempdir())).receive_and_delete(queue_url, [0], handle)

    asyncio.run(run())


def bare_kafka(servers: str, topic: str, records: int) -> None:
    """The Kafka baseline's process: bench/kafka_mapping.py's aiokafka loop, the handler called inline."""
    from bench.kafka_mapping import bare_consumer

    asyncio.run(bare_consumer(servers, topic, records, handler))


class Loop:
    """An asyncio loop on its own thread, so the synchronous `measure` can send through aioboto3 and aiokafka
    (the same hop for Headwater and for the bare loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


def measure(
    send: Callable[[dict[str, Any]], object], log: Path, calls: int, gap_seconds: float, timeout: float = 30
) -> list[float]:
    """Seconds from send to handler start for `calls` events, one at a time, `gap_seconds` apart."""
    log.write_text("")
    for index in range(calls):
        send({"sent": time.time(), "log": str(log)})
        deadline = time.monotonic() + timeout
        while len(log.read_text().splitlines()) <= index:
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {index} did not reach its handler within {timeout:g} s (see {log.parent})")
            time.sleep(0.0005)
        time.sleep(gap_seconds)
    return [float(line) for line in log.read_text().splitlines()]


def warm_then_measure(send: Callable[[dict[str, Any]], object], log: Path, calls: int, gap: float) -> list[float]:
    """`measure` after one uncounted message, given WARM_TIMEOUT to arrive."""
    measure(send, log.with_name(f"{log.name}-warm"), 1, gap, timeout=WARM_TIMEOUT)
    return measure(send, log, calls, gap)


def cuts(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 in milliseconds."""
    every = statistics.quantiles(samples, n=100, method="inclusive")
    return every[49] * 1000, every[94] * 1000, every[98] * 1000


def row(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    p50, p95, p99 = cuts(samples)
    text = f"  {name:<40} p50 {p50:6.2f}  p95 {p95:6.2f}  p99 {p99:6.2f} ms"
    if baseline is not None:
        added = [mine - theirs for mine, theirs in zip(cuts(samples), cuts(baseline), strict=True)]
        text += f"   ({added[0]:+.2f} / {added[1]:+.2f} / {added[2]:+.2f} ms p50/p95/p99 over the bare loop)"
    return text


def event_rows(redis_url: str, directory: Path, env: dict[str, str], calls: int, gap: float) -> None:
    """The bare LPUSH/BRPOP loop, then `Event` and sync `RequestResponse` through the Python client."""
    from redis import Redis

    from broker.client import Client
    from broker.config import load_config
    from broker.invocation import InvocationType

    (directory / "headwater.yaml").write_text(CONFIG)
    redis = Redis.from_url(redis_url)
    client = Client(load_config(directory / "headwater.yaml"), redis)
    bare = subprocess.Popen([sys.executable, __file__, "--bare-consumer", redis_url], cwd=ROOT, env=env)
    try:
        baseline = warm_then_measure(
            lambda event: redis.lpush(BARE_LIST, json.dumps(event)), directory / "bare", calls, gap
        )
    finally:
        redis.lpush(BARE_LIST, "stop")
        bare.wait(timeout=30)
    print(row("bare LPUSH/BRPOP loop, handler inline", baseline))

    command = [sys.executable, "-m", "broker.cli", "worker", "--config", str(directory / "headwater.yaml")]
    worker = subprocess.Popen([*command, "--processes", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        client.invoke("stamp", {"sent": time.time(), "log": str(directory / "warm")})  # the cold start
        events = measure(
            lambda event: client.invoke("stamp", event, InvocationType.EVENT), directory / "event", calls, gap
        )
        print(row("Headwater Event (Python client)", events, baseline))
        round_trips: list[float] = []

        def call(event: dict[str, Any]) -> None:
            started = time.perf_counter()
            client.invoke("stamp", event, InvocationType.REQUEST_RESPONSE)
            round_trips.append(time.perf_counter() - started)

        sync = measure(call, directory / "sync", calls, gap)
        print(row("Headwater RequestResponse (to start)", sync, baseline))
        print(row("Headwater RequestResponse (whole call)", round_trips))
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def sqs_rows(redis_url: str, directory: Path, calls: int, gap: float) -> None:
    """An ElasticMQ queue each for the bare receive/delete loop and for Headwater's SQS mapping."""
    import aioboto3

    from bench.kafka_mapping import launch
    from bench.sqs_mapping import Bench
    from tests.rig import ElasticMQServer, aws_env

    with ElasticMQServer() as server, Loop() as loop:
        os.environ.update(aws_env(server.endpoint_url))  # for this process's client and every child's
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print(f"  SQS on ElasticMQ {server.version}, long polling")
        client = aioboto3.Session().client("sqs")
        sqs = loop.run(client.__aenter__())
        try:
            bench = Bench(sqs, redis_url, directory)

            def sender(url: str) -> Callable[[dict[str, Any]], object]:
                return lambda event: loop.run(sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event)))

            url, _ = loop.run(bench.queue())
            bare = subprocess.Popen([sys.executable, __file__, "--bare-sqs", redis_url, url], cwd=ROOT, env=env)
            try:
                baseline = warm_then_measure(sender(url), directory / "sqs-bare", calls, gap)
            finally:
                bare.terminate()
                bare.wait(timeout=30)
            print(row("bare SQS receive/delete, handler inline", baseline))

            url, arn = loop.run(bench.queue())
            mapping = {"FunctionName": "stamp", "EventSourceArn": arn, "BatchSize": 1}
            headwater = launch(redis_url, STAMP, {**mapping, "MaximumBatchingWindowInSeconds": 0}, workers=1)
            try:
                mine = warm_then_measure(sender(url), directory / "sqs", calls, gap)
            finally:
                headwater.stop()
            print(row("Headwater SQS mapping, BatchSize 1", mine, baseline))
        finally:
            loop.run(client.__aexit__(None, None, None))


def kafka_rows(redis_url: str, directory: Path, calls: int, gap: float) -> None:
    """A topic each for the bare aiokafka loop and for Headwater's Kafka mapping, one producer for both."""
    from aiokafka import AIOKafkaProducer

    from bench.kafka_mapping import PARTITIONS, create_topic, start_headwater
    from tests.rig import KafkaBroker

    async def start_producer() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks=1, linger_ms=0)
        await producer.start()
        return producer

    with KafkaBroker() as broker, Loop() as loop:
        servers = broker.bootstrap_servers
        print(f"  Kafka ({servers}), {PARTITIONS} partitions, acks=1")
        producer = loop.run(start_producer())
        try:

            def sender(topic: str) -> Callable[[dict[str, Any]], object]:
                return lambda event: loop.run(producer.send_and_wait(topic, json.dumps(event).encode()))

            topic = f"latency-bare-{uuid.uuid4().hex[:6]}"
            loop.run(create_topic(servers, topic))
            argv = [sys.executable, __file__, "--bare-kafka", servers, topic, str(calls + 1)]
            bare = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                baseline = warm_then_measure(sender(topic), directory / "kafka-bare", calls, gap)
            finally:
                bare.terminate()
                bare.wait(timeout=30)
            print(row("bare aiokafka loop, handler inline", baseline))

            topic = f"latency-{uuid.uuid4().hex[:6]}"
            loop.run(create_topic(servers, topic))
            handler_path = "bench.latency.handler"
            headwater = start_headwater(
                broker, redis_url, topic, batch_size=1, workers=1, handler=handler_path, window=0
            )
            try:
                mine = warm_then_measure(sender(topic), directory / "kafka", calls, gap)
            finally:
                headwater.stop()
            print(row("Headwater Kafka mapping, BatchSize 1", mine, baseline))
        finally:
            loop.run(producer.stop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(SOURCES), help="a comma-separated subset of " + ",".join(SOURCES))
    args = parser.parse_args()
    only = [source.strip() for source in args.only.split(",") if source.strip()]
    if not only or set(only) - set(SOURCES):
        parser.error(f"--only takes a comma-separated subset of {','.join(SOURCES)}, not {args.only!r}")
    sys.path.insert(0, str(ROOT))
    from broker.embedded_redis import EmbeddedRedis

    directory = Path(tempfile.mkdtemp(prefix="headwater-latency-"))
    server = EmbeddedRedis(directory / "redis", appendfsync="everysec")
    server.start()
    env = {**os.environ, "HEADWATER_REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "HEADWATER_LOG_LEVEL": "WARNING"}
    os.environ.update(HEADWATER_LOG_LEVEL="WARNING")  # the mapping rows' processes inherit it
    gap = args.gap_ms / 1000
    print(f"added latency, enqueue to handler start, {args.calls} calls one at a time, {args.gap_ms:g} ms apart")
    try:
        if "event" in only:
            event_rows(server.url, directory, env, args.calls, gap)
        if "sqs" in only:
            sqs_rows(server.url, directory, args.calls, gap)
        if "kafka" in only:
            kafka_rows(server.url, directory, args.calls, gap)
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-consumer"]:
        bare_consumer(sys.argv[2])
    elif sys.argv[1:2] == ["--bare-sqs"]:
        sys.path.insert(0, str(ROOT))
        bare_sqs(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--bare-kafka"]:
        sys.path.insert(0, str(ROOT))
        bare_kafka(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
