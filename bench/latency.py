"""Added latency at low load, from the caller's enqueue to the handler's first line, beside a bare loop.

    python bench/latency.py [--calls 300] [--gap-ms 10]

Measured in one run, on one private Redis, one worker process, one call in flight at a time:

* `Event` through `broker.client.Client`: the time from just before `invoke` (the client's checks and
  its Redis write included) to the moment the handler starts;
* sync `RequestResponse` through the same client: the same interval, and the whole call as the caller
  sees it (the result back);
* the baseline: a bare loop in its own process, `BRPOP` on a Redis list and the handler called inline,
  fed with `LPUSH` (no lease, no claim token, no sandbox, no retries: the floor Redis and Python set).

The handler stamps its own start (wall clock, one host) and appends it to a file, so no measurement
rides on the path measured. SQS and Kafka latency (the issue's other rows) are for later: their
sources need a paced producer and their own bare loops (`bench/sqs_mapping.py` has the SQS one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BARE_LIST = "bench:latency:bare"
CONFIG = "Functions:\n  - FunctionName: stamp\n    Handler: bench.latency.handler\n"


def handler(event: dict[str, Any], context: Any) -> dict[str, float]:
    """Stamps its start; imported by the sandbox, so this module imports only the standard library."""
    started = time.time()
    with open(event["log"], "a") as log:
        log.write(f"{started - event['sent']}\n")
    return {"started": started}


def bare_consumer(url: str) -> None:
    """The baseline's worker: pop, decode, call the handler inline; until the list's `stop` entry."""
    from redis import Redis

    redis = Redis.from_url(url)
    while True:
        popped = redis.brpop([BARE_LIST], timeout=5)
        if popped is None or popped[1] == b"stop":
            return
        handler(json.loads(popped[1]), None)


def measure(send: Callable[[dict[str, Any]], object], log: Path, calls: int, gap_seconds: float) -> list[float]:
    """Seconds from send to handler start for `calls` events, one at a time, `gap_seconds` apart."""
    log.write_text("")
    for index in range(calls):
        send({"sent": time.time(), "log": str(log)})
        deadline = time.monotonic() + 30
        while len(log.read_text().splitlines()) <= index:
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {index} did not reach its handler within 30 s")
            time.sleep(0.0005)
        time.sleep(gap_seconds)
    return [float(line) for line in log.read_text().splitlines()]


def row(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    p50, p95, p99 = (cuts[i] * 1000 for i in (49, 94, 98))
    text = f"  {name:<40} p50 {p50:6.2f}  p95 {p95:6.2f}  p99 {p99:6.2f} ms"
    if baseline is not None:
        added = p50 - statistics.median(baseline) * 1000
        text += f"   (+{added:.2f} ms p50 over the bare loop)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from redis import Redis

    from broker.client import Client
    from broker.config import load_config
    from broker.embedded_redis import EmbeddedRedis
    from broker.invocation import InvocationType

    directory = Path(tempfile.mkdtemp(prefix="headwater-latency-"))
    (directory / "headwater.yaml").write_text(CONFIG)
    server = EmbeddedRedis(directory / "redis", appendfsync="everysec")
    server.start()
    env = {**os.environ, "HEADWATER_REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "HEADWATER_LOG_LEVEL": "WARNING"}
    redis = Redis.from_url(server.url)
    client = Client(load_config(directory / "headwater.yaml"), redis)
    gap = args.gap_ms / 1000
    print(f"added latency, enqueue to handler start, {args.calls} calls one at a time, {args.gap_ms:g} ms apart")
    try:
        bare = subprocess.Popen([sys.executable, __file__, "--bare-consumer", server.url], cwd=ROOT, env=env)
        try:
            baseline = measure(
                lambda event: redis.lpush(BARE_LIST, json.dumps(event)), directory / "bare", args.calls, gap
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
                lambda event: client.invoke("stamp", event, InvocationType.EVENT), directory / "event", args.calls, gap
            )
            print(row("Headwater Event (Python client)", events, baseline))
            round_trips: list[float] = []

            def call(event: dict[str, Any]) -> None:
                started = time.perf_counter()
                client.invoke("stamp", event, InvocationType.REQUEST_RESPONSE)
                round_trips.append(time.perf_counter() - started)

            sync = measure(call, directory / "sync", args.calls, gap)
            print(row("Headwater RequestResponse (to start)", sync, baseline))
            print(row("Headwater RequestResponse (whole call)", round_trips))
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-consumer"]:
        bare_consumer(sys.argv[2])
    else:
        main()
