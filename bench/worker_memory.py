"""Memory of one idle worker process, its forkserver and its warm sandbox, before and after a long run,
beside the memory of a bare Redis client process in the same run.

    python bench/worker_memory.py [--events 100000] [--batch 1000]

`headwater worker --processes 1` is started as operators start it (the `headwater` console script)
with a no-op handler, on a private Redis. After one event has warmed the sandbox, the RSS and PSS of
the three processes are read while idle; then `--events` Event invocations are enqueued in batches
(`InvocationQueue.enqueue_many`, as the API batches them) while the worker runs them, and once the
queue is empty the same processes are read again, idle. Growth is after minus before, per process.
PSS shares each page among the processes mapping it, so the forkserver and the sandbox forked from it
are not counted twice; RSS counts every page each process maps. The pool process (the supervisor,
which runs no invocation) and multiprocessing's resource tracker are shown for completeness.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.client import Client
from broker.config import parse_config
from broker.embedded_redis import EmbeddedRedis
from broker.invocation import Invocation, InvocationType

FUNCTION = {"FunctionName": "noop", "Handler": "examples.handlers.noop"}
CONFIG = "Functions:\n  - FunctionName: noop\n    Handler: examples.handlers.noop\n"
BARE_CLIENT = "import sys, time, redis; redis.Redis.from_url(sys.argv[1]).ping(); time.sleep(3600)"
READINGS, READING_GAP_SECONDS, SETTLE_SECONDS = 3, 0.1, 1.0


@dataclass(frozen=True)
class Memory:
    """One process's memory in MB (median of a few readings)."""

    rss_mb: float
    pss_mb: float


def memory(pid: int) -> Memory:
    """RSS and PSS from /proc, each the median of READINGS readings."""
    rss, pss = [], []
    for _ in range(READINGS):
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.endswith("kB\n")}
        rss.append(fields["Rss"] / 1024)
        pss.append(fields["Pss"] / 1024)
        time.sleep(READING_GAP_SECONDS)
    return Memory(statistics.median(rss), statistics.median(pss))


def children(pid: int) -> list[tuple[int, str]]:
    """The direct children of `pid` with their command lines."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append((int(entry.name), command))
    return found


def the_child(pid: int, marker: str) -> int:
    matches = [child for child, command in children(pid) if marker in command]
    if len(matches) != 1:
        raise RuntimeError(f"expected one child of {pid} running {marker!r}, found {matches}")
    return matches[0]


def processes(pool_pid: int) -> dict[str, int]:
    """The pool's processes by role: the worker, its forkserver and the sandbox the forkserver forked."""
    worker = the_child(pool_pid, "multiprocessing.spawn")
    forkserver = the_child(worker, "multiprocessing.forkserver")
    [sandbox] = [child for child, _ in children(forkserver)]
    tracker = the_child(pool_pid, "resource_tracker")
    return {"worker": worker, "forkserver": forkserver, "sandbox": sandbox, "pool": pool_pid, "tracker": tracker}


def wait_until(condition: Callable[[], bool], what: str, pool: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if pool.poll() is not None:
            raise RuntimeError(f"the worker pool exited ({pool.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)


def drained(client: Client) -> Callable[[], bool]:
    def check() -> bool:
        status = client.queue.status([FUNCTION["FunctionName"]])
        return not any(sum(counts.values()) for counts in (status.queued, status.running, status.scheduled))

    return check


def enqueue(client: Client, events: int, batch: int) -> None:
    """`events` no-op Event invocations, `batch` per round trip; every one must be accepted."""
    for start in range(0, events, batch):
        size = min(batch, events - start)
        invocations = [Invocation("noop", "{}", InvocationType.EVENT, trigger="async") for _ in range(size)]
        refused = [answer for answer in client.queue.enqueue_many(invocations) if isinstance(answer, Exception)]
        if refused:
            raise RuntimeError(f"Redis refused {len(refused)} of a batch: {refused[0]}")


TRIO = ("worker", "forkserver", "sandbox")  # what one idle worker costs (the pool is shared by all its workers)


def report(before: dict[str, Memory], after: dict[str, Memory], baseline: Memory) -> None:
    print(f"  {'process':<26}{'RSS before':>11}{'after':>9}{'growth':>9}   {'PSS before':>11}{'after':>9}{'growth':>9}")
    for role, first in before.items():
        last = after[role]
        print(
            f"  {role:<26}{first.rss_mb:>11.1f}{last.rss_mb:>9.1f}{last.rss_mb - first.rss_mb:>+9.1f}   "
            f"{first.pss_mb:>11.1f}{last.pss_mb:>9.1f}{last.pss_mb - first.pss_mb:>+9.1f}"
        )
    rss_before, rss_after = (sum(figures[role].rss_mb for role in TRIO) for figures in (before, after))
    pss_before, pss_after = (sum(figures[role].pss_mb for role in TRIO) for figures in (before, after))
    print(
        f"  {' + '.join(TRIO)}: RSS {rss_before:.1f} -> {rss_after:.1f} MB, PSS {pss_before:.1f} -> {pss_after:.1f} MB"
    )
    bare = f"RSS {baseline.rss_mb:.1f} MB, PSS {baseline.pss_mb:.1f} MB"
    print(f"  baseline, a bare `import redis` + PING process, idle: {bare}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="invocations per enqueue round trip")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("headwater")
    if not script.is_file():
        raise SystemExit(f"{script} missing: install the project first (pip install -e .)")
    directory = Path(tempfile.mkdtemp(prefix="headwater-memory-"))
    (directory / "headwater.yaml").write_text(CONFIG)
    server = EmbeddedRedis(directory / "redis", appendfsync="everysec")
    server.start()
    env = {**os.environ, "HEADWATER_REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "HEADWATER_LOG_LEVEL": "WARNING"}
    client = Client(parse_config({"Functions": [FUNCTION]}), server.url)
    command = [sys.executable, str(script), "worker", "--config", str(directory / "headwater.yaml"), "--processes", "1"]
    pool = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    bare = subprocess.Popen([sys.executable, "-c", BARE_CLIENT, server.url], cwd=ROOT, env=env)
    try:
        client.invoke("noop", {}, InvocationType.EVENT)  # the cold start: the sandbox is warm from here on
        wait_until(drained(client), "the warm-up event", pool, 60)
        time.sleep(SETTLE_SECONDS)
        roles = processes(pool.pid)
        before = {role: memory(pid) for role, pid in roles.items()}
        baseline = memory(bare.pid)
        print(f"{args.events:,} no-op Event invocations through one worker process, in batches of {args.batch}")
        started = time.perf_counter()
        enqueue(client, args.events, args.batch)
        wait_until(drained(client), f"the run of {args.events} events", pool, 600 + args.events / 50)
        print(f"  ran in {time.perf_counter() - started:.1f} s")
        time.sleep(SETTLE_SECONDS)
        if processes(pool.pid) != roles:
            raise RuntimeError("a process was replaced during the run (a crash or a discarded sandbox)")
        report(before, {role: memory(pid) for role, pid in roles.items()}, baseline)
    finally:
        for process in (bare, pool):
            process.terminate()
            process.wait(timeout=60)
        server.stop()


if __name__ == "__main__":
    main()
