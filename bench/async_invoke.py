"""Events per second for a no-op handler through `Event` invocations on ONE worker process,
beside the same work through bare rq (SimpleWorker, and its default forking Worker) and Celery
(solo pool), all on the same private Redis, in the same run.

    python bench/async_invoke.py [--events 5000] [--appendfsync everysec|always]

Each system gets the same pre-filled queue; the clock runs from the moment its worker takes the
first job to the moment the queue and its in-flight bookkeeping are empty, so process start-up and
imports are not counted for anyone. The handler does nothing: the figure is the system's overhead.
Last, Headwater again with two worker processes, for how one pool scales with its processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import keys
from broker.client import Client
from broker.config import parse_config
from broker.embedded_redis import EmbeddedRedis
from broker.invocation import InvocationType

POLL_SECONDS = 0.002


def drain_rate(
    redis: Redis, events: int, queued: Callable[[], int], in_flight: Callable[[], int], worker: subprocess.Popen[bytes]
) -> float:
    """Events/s from the first job taken until nothing is queued or in flight."""
    deadline = time.monotonic() + 600
    while queued() >= events:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker exited ({worker.returncode}) before taking a job")
        time.sleep(POLL_SECONDS)
    started = time.perf_counter()
    while queued() or in_flight():
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not drain the queue within 10 minutes")
        time.sleep(POLL_SECONDS)
    return events / (time.perf_counter() - started)


def run_headwater(redis: Redis, url: str, events: int, processes: int = 1) -> float:
    config = parse_config({"Functions": [{"FunctionName": "noop", "Handler": "examples.handlers.noop"}]})
    client = Client(config, redis)
    before = command_calls(redis)
    started = time.perf_counter()
    for _ in range(events):
        client.invoke("noop", {}, InvocationType.EVENT)
    accept = events / (time.perf_counter() - started)
    enqueued = command_calls(redis)
    if processes == 1:
        print(f"  headwater: accepted {accept:,.0f} Event invocations/s (client, one at a time)")
    config_file = Path(tempfile.mkdtemp()) / "bench.yaml"
    config_file.write_text("Functions:\n  - FunctionName: noop\n    Handler: examples.handlers.noop\n")
    worker = spawn(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "--log-level",
            "WARNING",
            "worker",
            "--config",
            str(config_file),
            "--processes",
            str(processes),
        ],
        url,
    )

    def in_flight() -> int:
        return sum(int(redis.llen(key)) for key in redis.scan_iter(keys.PROCESSING_PREFIX + "*"))

    try:
        rate = drain_rate(redis, events, lambda: int(redis.llen(keys.queue_key("noop"))), in_flight, worker)
    finally:
        stop(worker)
    drained = command_calls(redis)
    per_enqueue, per_run = (enqueued - before) / events, (drained - enqueued) / events
    if processes == 1:
        commands = f"{per_enqueue:.1f} to accept, {per_run:.1f} to run (scripts' inside)"
        print(f"  headwater: Redis commands per event {commands}")
    return rate


def command_calls(redis: Redis) -> int:
    """Commands Redis has executed (those run inside scripts included), less this bench's own polling."""
    stats = cast(dict[str, dict[str, int]], redis.info("commandstats"))
    ours = {"cmdstat_llen", "cmdstat_scan", "cmdstat_info", "cmdstat_flushall"}
    return sum(int(stat["calls"]) for name, stat in stats.items() if name not in ours)


def run_rq(redis: Redis, url: str, events: int, worker_class: str) -> float:
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue("bench", connection=redis, serializer=JSONSerializer)
    for _ in range(events):
        queue.enqueue("examples.handlers.noop", None, None, result_ttl=0)
    worker = spawn(["rq", "worker", "--burst", "--quiet", "--url", url, "--serializer", "rq.serializers.JSONSerializer",
                    "--worker-class", worker_class, "bench"], url)  # fmt: skip
    try:
        return drain_rate(
            redis, events, lambda: int(redis.llen("rq:queue:bench")), lambda: int(redis.zcard("rq:wip:bench")), worker
        )
    finally:
        stop(worker)


def run_celery(redis: Redis, url: str, events: int) -> float:
    os.environ["BENCH_REDIS_URL"] = url
    from bench.celery_app import noop

    for _ in range(events):
        noop.apply_async(({}, None), queue="bench")
    worker = spawn(["celery", "-A", "bench.celery_app", "worker", "-P", "solo", "-Q", "bench", "--loglevel", "WARNING",
                    "--without-heartbeat", "--without-mingle", "--without-gossip"], url)  # fmt: skip
    try:
        return drain_rate(redis, events, lambda: int(redis.llen("bench")), lambda: int(redis.hlen("unacked")), worker)
    finally:
        stop(worker)


def spawn(command: list[str], url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEADWATER_REDIS_URL": url, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--appendfsync", default="everysec", choices=["everysec", "always"])
    args = parser.parse_args()
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="headwater-bench-")), appendfsync=args.appendfsync)
    server.start()
    redis = Redis.from_url(server.url)
    print(f"{args.events} no-op events, one worker process each, Redis AOF appendfsync={args.appendfsync}")
    figures: dict[str, float] = {}
    try:
        runs: list[tuple[str, Callable[[], float]]] = [
            ("headwater", lambda: run_headwater(redis, server.url, args.events)),
            ("rq SimpleWorker", lambda: run_rq(redis, server.url, args.events, "rq.worker.SimpleWorker")),
            (
                "rq Worker (fork per job)",
                lambda: run_rq(redis, server.url, max(200, args.events // 10), "rq.worker.Worker"),
            ),
            ("celery solo", lambda: run_celery(redis, server.url, args.events)),
            ("headwater, 2 processes", lambda: run_headwater(redis, server.url, args.events, processes=2)),
        ]
        for name, run in runs:
            redis.flushall()
            figures[name] = run()
            print(f"  {name:<26} {figures[name]:>9,.0f} events/s")
    finally:
        server.stop()
    ratio = figures["headwater"] / figures["celery solo"]
    print(f"headwater / celery solo = {ratio:.2f}  (goal: >= 2.00)")
    print(f"headwater / rq SimpleWorker = {figures['headwater'] / figures['rq SimpleWorker']:.2f}")
    scaling = figures["headwater, 2 processes"] / figures["headwater"]
    print(f"headwater 2 processes / 1 process = {scaling:.2f}  (goal: >= 1.80; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
