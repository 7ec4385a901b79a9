"""A Headwater whose configuration changes at run time: a real worker pool, a real `headwater api`
(SigV4) and a real `headwater poll` reading moto's SQS, on their own Redis database, so that the
settings put here never reach the rest of the API suite.

The file defines one mapping (disabled, so the file's identity and read-only rules can be checked)
and one function whose concurrency and EventInvokeConfig the file sets; retries are fast, so a
policy that was not applied shows as extra attempts within the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import yaml
from redis import Redis

from broker import keys
from tests.api.conftest import KEY_ID, REPO_ROOT, SECRET, ApiStack, _wait_until_serving, write_keys
from tests.rig import MotoServer, RedisServer
from tests.rig import aws_env as moto_aws_env
from tests.rig.common import free_ports
from tests.rig.redis import reply_text

DATABASE = 11
ACCOUNT = "000000000000"
FILE_QUEUE = "file-orders"
FILE_MAPPING_UUID = "0f11e000-0000-4000-8000-000000000001"


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{name}"


@dataclass
class RuntimeStack:
    api: ApiStack
    sqs: Any
    file_queue_arn: str

    def queue(self, name: str) -> tuple[str, str]:
        """A new SQS queue in moto: (url, ARN). A message taken by a receive its poller abandoned
        (a long poll cut short by a restart) is back within the 5 s visibility timeout."""
        url = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return str(url), str(arn)

    def state(self, uuid: str) -> dict[str, str]:
        """What the pollers last reported for a mapping (empty once they forgot it)."""
        stored = self.api.redis.hgetall(keys.mapping_state(uuid))
        return {reply_text(key): reply_text(value) for key, value in stored.items()}


def _configuration(redis_url: str, file_queue_arn: str) -> dict[str, Any]:
    environment = {"Variables": {"TEST_REDIS_URL": redis_url}}
    return {
        "Functions": [
            {"FunctionName": "echo", "Handler": "tests.handlers.core.record", "Environment": environment},
            {"FunctionName": "fail", "Handler": "tests.handlers.core.fail", "Environment": environment},
            {
                "FunctionName": "filed",
                "Handler": "tests.handlers.core.record",
                "Environment": environment,
                "ReservedConcurrentExecutions": 3,
                "EventInvokeConfig": {"MaximumRetryAttempts": 1},
            },
        ],
        "EventSourceMappings": [
            {"UUID": FILE_MAPPING_UUID, "FunctionName": "filed", "EventSourceArn": file_queue_arn, "Enabled": False}
        ],
        "Headwater": {"WorkerHeartbeatTtlSeconds": 3, "AsyncRetryDelaysSeconds": [0.2, 0.2]},
    }


def _start(stack: ApiStack, name: str, arguments: list[str], env: dict[str, str]) -> None:
    log = (stack.directory / f"{name}.log").open("wb")
    stack.log_files.append(log)
    command = [sys.executable, "-m", "broker.cli", *arguments, "--config", str(stack.directory / "headwater.yaml")]
    stack.processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))


@pytest.fixture(scope="package")
def runtime(
    redis_server: RedisServer, moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeStack]:
    directory = tmp_path_factory.mktemp("runtime")
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{DATABASE}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    aws = moto_aws_env(moto_server.endpoint_url)
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    api_port, metrics_port = free_ports(2)
    endpoint = f"http://127.0.0.1:{api_port}"
    api = ApiStack(directory, redis_url, endpoint, endpoint, f"http://127.0.0.1:{metrics_port}", directory / "keys")
    stack = RuntimeStack(api, sqs, "")
    _, stack.file_queue_arn = stack.queue(FILE_QUEUE)
    (directory / "headwater.yaml").write_text(yaml.safe_dump(_configuration(redis_url, stack.file_queue_arn)))
    write_keys(api.keys_file, (KEY_ID, SECRET))
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    _start(api, "worker", ["worker", "--processes", "2", "--grace-seconds", "5"], env)
    _start(api, "api", ["api", "--port", str(api_port), "--keys-file", str(api.keys_file),
                        "--metrics-port", str(metrics_port), "--grace-seconds", "5"], env)  # fmt: skip
    _start(api, "poll", ["poll", "--grace-seconds", "5"], {**env, **aws})
    try:
        _wait_until_serving(api, endpoint)
        _wait_for_the_poller(stack)
        yield stack
    finally:
        api.close()
        sqs.close()


def _wait_for_the_poller(stack: RuntimeStack) -> None:
    """The poller has applied its configuration once it reports the file's disabled mapping."""
    deadline = time.monotonic() + 30
    while stack.state(FILE_MAPPING_UUID).get("State") != "Disabled":
        if time.monotonic() > deadline:
            raise AssertionError(f"the poller did not start within 30 s; logs:\n{stack.api.logs()}")
        time.sleep(0.1)
