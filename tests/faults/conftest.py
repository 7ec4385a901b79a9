"""The fault-injection rig: a private redis-server per test (so a test may kill, freeze or fill it
without touching anyone else's), real `headwater worker` / `headwater poll` subprocesses, and an
append-only record of every handler run kept outside Redis (tests/handlers/faults.py).

Every scenario ends the same way: wait until every accepted event has run and Redis holds no
more work (or a deadline passes), then count. `lost` = accepted ids never seen to finish a run,
`duplicated` = finished runs beyond the first per id. The counts are printed (visible with `-s`)
and carried in every assertion message, so a failing run says how much it lost.

Redis faults come from the rig (tests/rig/redis.py): kill()/start() (a crash and an AOF replay),
freeze()/thaw() (SIGSTOP/SIGCONT), set_maxmemory() (noeviction, so writes get OOM).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from broker.client import Client
from broker.config import load_config
from broker.invocation import InvocationType
from tests.rig import RedisServer
from tests.rig.common import ManagedProcess, start_or_fail
from tests.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.handlers.faults.run"
HEARTBEAT_TTL_SECONDS = 3
WORKER_DIED = "worker process died"  # what the pool logs each time it restarts a worker process


@dataclass(frozen=True)
class Tally:
    """What a scenario did to the events it accepted."""

    accepted: int
    lost: list[str]
    duplicated: int
    finished_runs: int
    started_runs: int

    def describe(self, scenario: str, **figures: object) -> str:
        extra = "".join(f" {name}={value}" for name, value in figures.items())
        lost = f" (e.g. {self.lost[:5]})" if self.lost else ""
        return (
            f"[faults] {scenario}: accepted={self.accepted} lost={len(self.lost)}{lost} "
            f"duplicated={self.duplicated} runs started={self.started_runs} finished={self.finished_runs}{extra}"
        )


class Runs:
    """The handler's run record (one JSON line per start and per end of a run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        """The complete lines: a handler may be halfway through appending the last one."""
        if not self.path.exists():
            return []
        complete = self.path.read_text().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def count(self, phase: str) -> Counter[str]:
        """Runs per id that reached `phase` ("start" or "end")."""
        return Counter(identifier for line in self.lines() if line["phase"] == phase for identifier in line["ids"])

    def tally(self, accepted: Iterable[str]) -> Tally:
        wanted = list(accepted)
        finished, started = self.count("end"), self.count("start")
        return Tally(
            accepted=len(wanted),
            lost=sorted(identifier for identifier in wanted if not finished[identifier]),
            duplicated=sum(max(0, finished[identifier] - 1) for identifier in wanted),
            finished_runs=sum(finished[identifier] for identifier in wanted),
            started_runs=sum(started[identifier] for identifier in wanted),
        )


@dataclass
class FaultStack:
    """One scenario's world: its Redis, its config file, the processes it started and the run record."""

    redis_server: RedisServer
    directory: Path
    functions: list[dict[str, Any]]
    mappings: list[dict[str, Any]] = field(default_factory=list)
    pools: list[ManagedProcess] = field(default_factory=list)
    pollers: list[ManagedProcess] = field(default_factory=list)
    runs: Runs = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.runs = Runs(self.directory / "runs.jsonl")
        self.config_path = self.directory / "headwater.yaml"
        self.write_config()

    # -- configuration ------------------------------------------------------------------------
    def write_config(self) -> None:
        for function in self.functions:
            function.setdefault("Handler", HANDLER)
            function.setdefault("Environment", {"Variables": {"RUNS_FILE": str(self.runs.path)}})
        document = {
            "Functions": self.functions,
            "EventSourceMappings": self.mappings,
            "Headwater": {
                "AsyncRetryDelaysSeconds": [0.2, 0.2],
                "WorkerHeartbeatTtlSeconds": HEARTBEAT_TTL_SECONDS,
                "ThrottleBackoffInitialSeconds": 0.2,
                "ThrottleBackoffMaxSeconds": 2,
            },
        }
        self.config_path.write_text(yaml.safe_dump(document))

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    def redis(self, timeout_seconds: float = 5.0) -> Redis:
        """A fresh client with a socket timeout, so a frozen Redis fails a call instead of hanging the test."""
        return Redis.from_url(self.redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)

    def client(self) -> Client:
        return Client(load_config(self.config_path), self.redis_url)

    def env(self) -> dict[str, str]:
        """Read at spawn time, so AWS settings a fixture put in os.environ reach the process."""
        return {**os.environ, "HEADWATER_REDIS_URL": self.redis_url, "PYTHONPATH": str(REPO_ROOT)}

    def invoke_events(self, function_name: str, count: int, seconds: float, prefix: str = "e") -> list[str]:
        """Accept `count` Event invocations; returns the event ids (what the handler records)."""
        client = self.client()
        ids = [f"{prefix}{n}" for n in range(count)]
        for identifier in ids:
            client.invoke(function_name, {"id": identifier, "seconds": seconds}, InvocationType.EVENT)
        client.redis.close()
        return ids

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `headwater ARGS...` as a user would, against this stack's Redis."""
        argv = [sys.executable, "-m", "broker.cli", *args]
        env = self.env()
        return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)

    # -- processes ------------------------------------------------------------------------------
    def spawn_pool(self, processes: int, prefetch: int, grace_seconds: float = 5.0) -> ManagedProcess:
        """Start `headwater worker` (its own process group, so `kill()` takes its workers with it)."""
        argv = [sys.executable, "-m", "broker.cli", "worker", "--config", str(self.config_path),
                "--processes", str(processes), "--prefetch", str(prefetch),
                "--grace-seconds", str(grace_seconds)]  # fmt: skip
        log = self.directory / f"pool-{len(self.pools)}.log"
        pool = ManagedProcess("headwater-worker", argv, log, cwd=REPO_ROOT, env=self.env())
        pool.start()
        self.pools.append(pool)
        return pool

    async def start_pool(self, processes: int = 2, prefetch: int = 4) -> ManagedProcess:
        """Start a pool and wait until each of its worker processes has sent a heartbeat."""
        before = self.worker_ids()
        pool = self.spawn_pool(processes, prefetch)
        await eventually(
            lambda: pool.running and len(self.worker_ids() - before) >= processes,
            30,
            lambda: f"pool did not register {processes} workers:\n{pool.describe_log()}",
        )
        return pool

    def spawn_poller(self) -> ManagedProcess:
        argv = [sys.executable, "-m", "broker.cli", "poll", "--config", str(self.config_path), "--grace-seconds", "5"]
        log = self.directory / f"poller-{len(self.pollers)}.log"
        poller = ManagedProcess("headwater-poll", argv, log, cwd=REPO_ROOT, env=self.env())
        poller.start()
        self.pollers.append(poller)
        return poller

    def worker_ids(self) -> set[str]:
        with self.redis() as redis:
            leases = redis.scan_iter("headwater:workers:{*}")  # one lease set per function served
            return {member.decode() for key in leases for member in redis.zrange(key, 0, -1)}

    def pool_deaths(self) -> int:
        """Worker processes the pools had to restart (a crash loop shows here)."""
        return sum(pool.log_path.read_text(errors="replace").count(WORKER_DIED) for pool in self.pools)

    def logs(self, characters: int = 3000) -> str:
        parts = []
        for process in [*self.pools, *self.pollers]:
            text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
            parts.append(f"--- {process.log_path.name} ---\n{text[-characters:]}")
        return "\n".join(parts)

    # -- Redis bookkeeping, read black-box ------------------------------------------------------------
    def in_flight(self) -> int:
        """Jobs held in workers' processing lists right now (claimed, running or prefetched)."""
        with self.redis() as redis:
            return sum(int(redis.llen(key)) for key in redis.scan_iter("headwater:processing:*"))

    def queued_job_ids(self, function_name: str) -> list[str]:
        with self.redis() as redis:
            return [job_id.decode() for job_id in redis.lrange(f"rq:queue:headwater.{{{function_name}}}", 0, -1)]

    def delete_job(self, function_name: str, job_id: str) -> None:
        """Make a queued job vanish (its hash and its queue entry), as a flush or a lost failover would."""
        with self.redis() as redis:
            redis.delete(f"rq:job:{job_id}")
            redis.lrem(f"rq:queue:headwater.{{{function_name}}}", 0, job_id)

    def pending(self) -> int:
        """Jobs anywhere in Redis: function queues, processing lists, the retry schedule."""
        with self.redis() as redis:
            queued = sum(int(redis.llen(key)) for key in redis.scan_iter("rq:queue:headwater.*"))
            held = sum(int(redis.llen(key)) for key in redis.scan_iter("headwater:processing:*"))
            scheduled = sum(int(redis.zcard(key)) for key in redis.scan_iter("headwater:scheduled:*"))
            return queued + held + scheduled

    async def settled(self, accepted: list[str], within: float) -> Tally:
        """Wait until every accepted id finished a run and Redis holds no more work, or `within`
        seconds pass; either way return the tally (the caller asserts on it)."""

        def done() -> bool:
            if self.runs.tally(accepted).lost:
                return False
            try:
                return self.pending() == 0
            except (RedisError, OSError):
                return False

        with contextlib.suppress(AssertionError):
            await eventually(done, within, lambda: "")
        return self.runs.tally(accepted)

    def close(self) -> None:
        for process in [*self.pollers, *self.pools]:
            process.stop(timeout=15)


# -- Redis memory -------------------------------------------------------------------------------------
def oom_errors(redis: Redis) -> int:
    """How many commands Redis refused with OOM since it started (INFO errorstats)."""
    stat = redis.info("errorstats").get("errorstat_OOM", {})
    return int(stat.get("count", 0)) if isinstance(stat, dict) else 0


def fill_to_maxmemory(server: RedisServer, redis: Redis, filler_chunks: int = 8) -> int:
    """Write filler (`filler:<n>`, 256 KB each), then cap Redis (noeviction) half of it below what it
    uses, so writes get OOM and stay refused even if a worker frees a job or two meanwhile (a cap
    set just above usage flickers: the refused write's own query buffer is what tipped it over).
    Returns how many filler keys were written; deleting them and lifting the cap undoes it."""
    chunk = b"x" * (256 << 10)
    for index in range(filler_chunks):
        redis.set(f"filler:{index}", chunk)
    server.set_maxmemory(int(redis.info("memory")["used_memory"]) - filler_chunks * len(chunk) // 2)
    try:
        redis.set("filler:probe", b"x")
    except OutOfMemoryError:
        return filler_chunks
    raise AssertionError("Redis still accepts writes above its maxmemory")


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def fault_redis() -> Iterator[RedisServer]:
    """A private redis-server (AOF, fsync always) for one test: faults must not leak into the next."""
    server = start_or_fail(RedisServer())
    yield server
    server.close()


@pytest.fixture
def fault_stack(fault_redis: RedisServer, tmp_path: Path) -> Iterator[Callable[..., FaultStack]]:
    """Build the scenario's FaultStack; everything it started is stopped afterwards (Redis thawed first)."""
    stacks: list[FaultStack] = []

    def make(functions: list[dict[str, Any]], mappings: list[dict[str, Any]] | None = None) -> FaultStack:
        stack = FaultStack(fault_redis, tmp_path, functions, mappings or [])
        stacks.append(stack)
        return stack

    yield make
    if fault_redis.frozen:  # a failed freeze scenario: workers could not drain against a stopped Redis
        fault_redis.thaw()
    for stack in stacks:
        stack.close()


def report(line: str) -> str:
    """Print a scenario's figures (visible with `pytest -s`) and return them for assertion messages."""
    print(f"\n{line}", flush=True)
    return line


def wait_briefly(seconds: float) -> None:
    """Hold a fault for its scenario's duration (an outage length), never to prove that nothing happened."""
    time.sleep(seconds)
