"""A running Headwater for the core tests: a config file, real `headwater worker` subprocesses,
a client, and ways to wait for what the handlers report through Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from redis import Redis

from broker import connection
from broker.client import Client
from broker.config import Config, load_config
from tests.waiting import stop_processes

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    redis_url: str
    directory: Path
    config_path: Path
    env: dict[str, str]
    redis: Redis = field(init=False)
    pools: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _log_files: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = connection.connect(self.redis_url)  # a single Redis, or a cluster (tests/cluster)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def client(self) -> Client:
        return Client(self.config, self.redis_url)

    def start_pool(self, processes: int = 1, grace_seconds: float = 10, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.directory / f"pool-{len(self.pools)}.log").open("wb")
        self._log_files.append(log)
        command = [sys.executable, "-m", "broker.cli", "worker", "--config", str(self.config_path),
                   "--processes", str(processes), "--grace-seconds", str(grace_seconds), *extra]  # fmt: skip
        pool = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.pools.append(pool)
        self.wait_for(lambda: pool.poll() is None and len(self.worker_pids(pool)) >= processes)
        return pool

    def running_pools(self) -> list[subprocess.Popen[bytes]]:
        return [pool for pool in self.pools if pool.poll() is None]

    def worker_pids(self, pool: subprocess.Popen[bytes] | None = None) -> list[int]:
        """The registered workers of this stack's pools (or of one): other suites' session-wide pools
        may share the session Redis, and their workers must not count here."""
        parents = {pool.pid} if pool is not None else {running.pid for running in self.running_pools()}
        lease_sets = self.redis.scan_iter("headwater:workers:{*}")  # one per function served
        members = {m for key in lease_sets for m in cast(list[bytes], self.redis.zrange(key, 0, -1))}  # not decoded
        registered = [int(member.decode().split(":")[1]) for member in members]
        return [pid for pid in registered if _parent_of(pid) in parents]

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.directory.glob("pool-*.log")))

    def noted(self, list_name: str = "calls") -> list[Any]:
        return [json.loads(item) for item in self.redis.lrange(list_name, 0, -1)]

    def wait_for(self, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pools and all(pool.poll() not in (None, 0) for pool in self.pools):
                raise AssertionError(f"every worker pool died; logs:\n{self.logs()[-4000:]}")
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout} s; worker logs:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        stop_processes(self.pools, timeout=30)
        for log in self._log_files:
            log.close()
        self.redis.close()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def write_config(path: Path, functions: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> Path:
    document: dict[str, Any] = {"Functions": functions}
    document["Headwater"] = {"AsyncRetryDelaysSeconds": [0.2, 0.2], "WorkerHeartbeatTtlSeconds": 3, **(settings or {})}
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def make_stack(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a Stack for the given functions; every function gets TEST_REDIS_URL in its environment."""
    yield from stacks_on(redis_url, tmp_path)


def stacks_on(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """`make_stack`'s body, for any Redis URL (tests/cluster passes a `redis+cluster://` one)."""
    stacks: list[Stack] = []

    def make(functions: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> Stack:
        for function in functions:
            variables = function.setdefault("Environment", {}).setdefault("Variables", {})
            variables["TEST_REDIS_URL"] = redis_url
        config_path = write_config(tmp_path / "headwater.yaml", functions, settings)
        env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
        stack = Stack(redis_url, tmp_path, config_path, env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of the session Redis (emptied for this test) that does not decode replies."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()
