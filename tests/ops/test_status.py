"""`headwater status` and `headwater mappings`, run as real subprocesses against a real worker pool:
every place a job can be (queued, running, scheduled for a retry, quarantined) is made real first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import yaml

from broker import keys
from broker.invocation import Invocation, InvocationType
from broker.queue import InvocationQueue
from tests.workers.conftest import REPO_ROOT, Stack

FUNCTIONS = [
    {"FunctionName": "slow", "Handler": "tests.handlers.core.slow", "Timeout": 30},
    {"FunctionName": "failing", "Handler": "tests.handlers.core.fail"},
    {"FunctionName": "poisoned", "Handler": "tests.handlers.core.record"},
]
KAFKA_MAPPING: dict[str, Any] = {
    "UUID": "5c1c4a8e-2f7e-4a55-9a3a-1d2b3c4d5e6f",
    "FunctionName": "slow",
    "Topics": ["orders"],
    "StartingPosition": "LATEST",
    "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["kafka.internal:9092"]}},
}
SQS_MAPPING: dict[str, Any] = {
    "UUID": "0b7c7c1e-9d8f-4e2a-8b6c-5a4d3c2b1a09",
    "FunctionName": "failing",
    "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:refunds",
    "Enabled": False,
}


def headwater(stack: Stack, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "HEADWATER_CONFIG": str(stack.config_path)}
    command = [sys.executable, "-m", "broker.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False)


def with_mappings(stack: Stack) -> None:
    document = yaml.safe_load(stack.config_path.read_text())
    document["EventSourceMappings"] = [KAFKA_MAPPING, SQS_MAPPING]
    document["Headwater"]["AsyncRetryDelaysSeconds"] = [120, 120]  # a failed event waits in the schedule
    stack.config_path.write_text(yaml.safe_dump(document))


def poison(stack: Stack) -> str:
    """A job of `poisoned` whose data is not rq's: the first worker to claim it quarantines it."""
    job_id = InvocationQueue(stack.redis).enqueue(Invocation("poisoned", "{}", InvocationType.EVENT, trigger="async"))
    stack.redis.hset(keys.job(job_id), "data", b"not zlib")
    return job_id


def status(stack: Stack) -> dict[str, Any]:
    answer = headwater(stack, "status", "--output", "json")
    assert answer.returncode == 0, answer.stderr
    return dict(json.loads(answer.stdout))


def test_status_counts_every_place_a_job_can_be_and_each_mappings_state(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FUNCTIONS)
    with_mappings(stack)
    poison(stack)
    stack.start_pool(processes=1, grace_seconds=1)  # the slow runs are cut off at teardown, not awaited
    client = stack.client
    client.invoke("failing", {"n": 1}, InvocationType.EVENT)
    stack.wait_for(
        lambda: stack.redis.zcard(keys.scheduled("failing")) == 1 and stack.redis.hlen(keys.quarantine("poisoned")) == 1
    )
    for n in range(3):
        client.invoke("slow", {"seconds": 20, "n": n}, InvocationType.EVENT)
    stack.wait_for(lambda: stack.noted("started"))

    answer = status(stack)

    functions = {row.pop("FunctionName"): row for row in answer["Functions"]}
    slow = functions.pop("slow")
    assert slow["Running"] >= 1
    assert slow["Running"] + slow["Queued"] == 3  # the rest queued or claimed ahead
    assert (slow["ScheduledRetries"], slow["Quarantined"]) == (0, 0)
    assert functions == {
        "failing": {"Queued": 0, "Running": 0, "ScheduledRetries": 1, "Quarantined": 0, "Workers": 1},
        "poisoned": {"Queued": 0, "Running": 0, "ScheduledRetries": 0, "Quarantined": 1, "Workers": 1},
    }
    assert slow["Workers"] == 1
    assert answer["Workers"] == {"Alive": 1, "LeaseExpired": 0}
    mappings = {row["UUID"]: row for row in answer["EventSourceMappings"]}
    kafka, sqs = mappings[KAFKA_MAPPING["UUID"]], mappings[SQS_MAPPING["UUID"]]
    assert (kafka["State"], kafka["EventSource"], kafka["LastProcessingResult"]) == (
        "Creating",
        "orders",
        "No records processed",
    )
    assert (sqs["State"], sqs["EventSource"], sqs["LastProcessingResult"]) == (
        "Disabled",
        SQS_MAPPING["EventSourceArn"],
        None,
    )
    assert sqs["SecondsInState"] >= 0


def test_status_and_mappings_tables_show_the_last_processing_result(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FUNCTIONS)
    with_mappings(stack)

    table = headwater(stack, "status")
    listed = headwater(stack, "mappings")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["FUNCTION", "QUEUED", "RUNNING", "SCHEDULED", "QUARANTINED", "WORKERS"]
    assert lines[1].split() == ["slow", "0", "0", "0", "0", "0"]
    assert "workers alive: 0" in table.stdout
    kafka_row = next(line for line in lines if line.startswith(KAFKA_MAPPING["UUID"]))
    assert kafka_row.split()[1:3] == ["slow", "Creating"]
    assert kafka_row.endswith("No records processed")
    assert listed.returncode == 0, listed.stderr
    assert "LAST PROCESSING RESULT" in listed.stdout.splitlines()[0]
    assert "No records processed" in listed.stdout


def test_status_without_redis_is_one_line_and_exit_2(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FUNCTIONS)
    answer = headwater(stack, "status", "--redis-url", "redis://127.0.0.1:1/0")
    assert answer.returncode == 2
    assert answer.stderr.startswith("headwater: cannot reach Redis at redis://127.0.0.1:1/0")
    assert len(answer.stderr.splitlines()) == 1
