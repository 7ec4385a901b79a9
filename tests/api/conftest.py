"""A running Headwater behind its Lambda API for the whole package: a real `headwater worker` pool,
two real `headwater api` processes (one signed with SigV4 keys, one `--no-auth` for the fuzz), and
clients built the way users build them: boto3, the AWS CLI, raw HTTP signed by botocore.

The stack uses its own database of the session redis-server, so it is started once per package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config as BotoConfig
from redis import Redis

from tests.rig import RedisServer
from tests.rig.common import free_ports
from tests.waiting import stop_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
KEY_ID, SECRET = "AKIDHEADWATERTEST01", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE+KEY"
ROTATED_KEY_ID, ROTATED_SECRET = "AKIDHEADWATERTEST02", "second/secret+for/rotation"
DATABASE = 9


@dataclass
class ApiStack:
    directory: Path
    redis_url: str
    endpoint: str  # signed API
    open_endpoint: str  # --no-auth API
    metrics_url: str
    keys_file: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_files: list[Any] = field(default_factory=list)
    clients: dict[tuple[str, str], Any] = field(default_factory=dict)
    redis: Redis = field(init=False)

    def __post_init__(self) -> None:
        self.redis = Redis.from_url(self.redis_url)

    def close(self) -> None:
        stop_processes(self.processes, timeout=15)
        for log in self.log_files:
            log.close()
        for client in self.clients.values():
            client.close()
        self.redis.close()

    def client(self, *, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
        """boto3's Lambda client against the signed API, without retries, so an error is seen once.
        One client per key, closed with the stack (its connections would otherwise leak)."""
        if (key_id, secret) not in self.clients:
            self.clients[key_id, secret] = boto3.client(
                "lambda",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                config=BotoConfig(retries={"mode": "legacy", "total_max_attempts": 1}),
            )
        return self.clients[key_id, secret]

    def aws(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The AWS CLI (PyPI's awscli), configured only through its environment."""
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.directory),
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_MAX_ATTEMPTS": "1",
        }
        command = ["aws", "lambda", *arguments, "--endpoint-url", self.endpoint]
        completed = subprocess.run(
            command, check=False, env=env, cwd=self.directory, capture_output=True, text=True, timeout=60
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"aws exited {completed.returncode}: {completed.stderr}")
        return completed

    def noted(self, list_name: str = "calls") -> list[Any]:
        return [json.loads(item) for item in self.redis.lrange(list_name, 0, -1)]

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.directory.glob("*.log")))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as answer:
            return str(answer.read().decode())


def write_keys(path: Path, *pairs: tuple[str, str]) -> None:
    path.write_text("# test keys\n" + "".join(f"{key_id}:{secret}\n" for key_id, secret in pairs))


def _functions(redis_url: str) -> list[dict[str, Any]]:
    environment = {"Variables": {"TEST_REDIS_URL": redis_url}}
    return [
        {"FunctionName": "echo", "Handler": "tests.handlers.core.record", "Environment": environment},
        {"FunctionName": "fail", "Handler": "tests.handlers.core.fail", "Environment": environment},
        {"FunctionName": "slow", "Handler": "tests.handlers.core.slow", "Timeout": 1, "Environment": environment},
        {"FunctionName": "closed", "Handler": "tests.handlers.core.record", "ReservedConcurrentExecutions": 0},
    ]


def _start(stack: ApiStack, name: str, *arguments: str) -> None:
    env = {**os.environ, "HEADWATER_REDIS_URL": stack.redis_url, "PYTHONPATH": str(REPO_ROOT)}
    log = (stack.directory / f"{name}.log").open("wb")
    stack.log_files.append(log)
    command = [sys.executable, "-m", "broker.cli", *arguments, "--config", str(stack.directory / "headwater.yaml")]
    stack.processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))


def _wait_until_serving(stack: ApiStack, url: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in stack.processes):
            raise AssertionError(f"a process of the API stack exited; logs:\n{stack.logs()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
        except OSError as error:
            if getattr(error, "code", None) is not None:  # an HTTP error answer: it is serving
                return
            time.sleep(0.1)
        else:
            return
    raise AssertionError(f"{url} did not answer within 30 s; logs:\n{stack.logs()}")


@pytest.fixture(scope="package")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    directory = tmp_path_factory.mktemp("api")
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{DATABASE}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    api_port, open_port, metrics_port = free_ports(3)
    stack = ApiStack(
        directory=directory,
        redis_url=redis_url,
        endpoint=f"http://127.0.0.1:{api_port}",
        open_endpoint=f"http://127.0.0.1:{open_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}",
        keys_file=directory / "keys",
    )
    (directory / "headwater.yaml").write_text(
        yaml.safe_dump({"Functions": _functions(redis_url), "Headwater": {"WorkerHeartbeatTtlSeconds": 3}})
    )
    write_keys(stack.keys_file, (KEY_ID, SECRET))
    _start(stack, "worker", "worker", "--processes", "2", "--grace-seconds", "5")
    signed = ["api", "--port", str(api_port), "--keys-file", str(stack.keys_file), "--metrics-port", str(metrics_port)]
    _start(stack, "api", *signed, "--grace-seconds", "5")
    _start(stack, "api-open", "api", "--port", str(open_port), "--no-auth", "--grace-seconds", "5")
    try:
        for url in (stack.endpoint, stack.open_endpoint, f"{stack.metrics_url}/healthz"):
            _wait_until_serving(stack, url)
        yield stack
    finally:
        stack.close()
