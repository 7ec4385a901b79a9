"""Event invocations per second for three functions on a 3-primary Redis Cluster, beside the same
work on one redis-server, in the same run.

    python bench/cluster_invoke.py [--events 2000] [--processes 1]

Each function ("alpha", "delta", "beta": one slot on each primary) gets its own worker pool of
`--processes` processes serving it alone, so no worker waits on several functions' wake lists. The
queues are filled first (the client's `enqueue_many`, 200 per round trip); the clock runs from the
first job taken until every queue and processing list is empty, so start-up is not counted. The
handler does nothing: the figure is the store's and the workers' overhead. On a machine with fewer
cores than worker processes plus Redis servers, the CPU, not the store, bounds both figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import connection
from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.rig import RedisServer
from tests.rig.redis_cluster import RedisClusterRig

FUNCTIONS = ("alpha", "delta", "beta")
BATCH = 200
POLL_SECONDS = 0.05  # the status read is 3 round trips: polled often, it would compete with the workers


def fill(queue: InvocationQueue, events: int) -> None:
    for name in FUNCTIONS:
        for start in range(0, events, BATCH):
            batch = [
                Invocation(name, "{}", InvocationType.EVENT, trigger="async") for _ in range(min(BATCH, events - start))
            ]
            failed = [answer for answer in queue.enqueue_many(batch) if isinstance(answer, Exception)]
            if failed:
                raise RuntimeError(f"enqueue refused: {failed[0]}")


def backlog(queue: InvocationQueue) -> tuple[int, int]:
    status = queue.status(list(FUNCTIONS))
    return sum(status.queued.values()), sum(status.running.values())


def run(url: str, events: int, processes: int) -> float:
    redis = connection.connect(url)
    queue = InvocationQueue(redis)
    fill(queue, events)
    directory = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    pools = []
    for name in FUNCTIONS:
        config = directory / f"{name}.yaml"
        config.write_text(f"Functions:\n  - FunctionName: {name}\n    Handler: examples.handlers.noop\n")
        argv = [sys.executable, "-m", "broker.cli", "--log-level", "WARNING", "worker", "--config", str(config),
                "--processes", str(processes)]  # fmt: skip
        pools.append(subprocess.Popen(argv, cwd=ROOT, env={"HEADWATER_REDIS_URL": url, "PATH": "/usr/bin:/bin"}))
    try:
        total = events * len(FUNCTIONS)
        while backlog(queue)[0] >= total:
            time.sleep(POLL_SECONDS)
        started = time.perf_counter()
        while any(backlog(queue)):
            if any(pool.poll() is not None for pool in pools):
                raise RuntimeError("a worker pool exited")
            time.sleep(POLL_SECONDS)
        return total / (time.perf_counter() - started)
    finally:
        for pool in pools:
            pool.terminate()
        for pool in pools:
            pool.wait(timeout=60)
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="events per function (default 2000)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes per function (default 1)")
    options = parser.parse_args()
    with RedisServer() as single:
        alone = run(single.url, options.events, options.processes)
    with RedisClusterRig() as cluster:
        spread = run(cluster.url, options.events, options.processes)
    print(f"3 functions x {options.events} Event invocations, {options.processes} worker process(es) per function")
    print(f"  one redis-server:          {alone:8,.0f} events/s")
    print(f"  3-primary Redis Cluster:   {spread:8,.0f} events/s   ({spread / alone:.2f}x)")


if __name__ == "__main__":
    main()
