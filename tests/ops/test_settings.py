"""Headwater's environment variables (broker/settings.py): parsed once, reported like configuration
errors, and a bad per-source option disabling only that source's mappings in a real `headwater poll`.
Also: `headwater poll` reaches Redis through broker.connection's factory, so a Sentinel URL works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from broker import keys
from broker.config import load_config
from broker.connection import connect
from broker.errors import ConfigError
from broker.queue import InvocationQueue
from broker.settings import SettingsError, Unusable, get_settings, usable
from broker.sources.kafka.client import environment_options
from tests.rig import KafkaBroker
from tests.rig.common import start_or_fail
from tests.rig.sentinel import SentinelGroup
from tests.waiting import eventually, stop_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTION = "consume"
OPTIONS = "HEADWATER_KAFKA_CONSUMER_OPTIONS"
SECRET = "hunter2-not-for-logs"


# -- parsing, in this process ----------------------------------------------------------------------
def test_every_variable_is_parsed_once_and_again_only_when_one_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_LOG_LEVEL", "debug")
    monkeypatch.setenv("HEADWATER_SHARD_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("HEADWATER_API_KEYS_FILE", "")  # empty: unset
    monkeypatch.setenv(OPTIONS, '{"session_timeout_ms": 6000}')

    settings = get_settings()

    assert (settings.log_level, settings.shard_lease_seconds, settings.api_keys_file) == ("DEBUG", 2.5, None)
    assert settings.kafka_consumer_options == {"session_timeout_ms": 6000}
    assert get_settings() is settings
    monkeypatch.setenv("HEADWATER_SHARD_LEASE_SECONDS", "4")
    assert get_settings().shard_lease_seconds == 4.0


def test_an_invalid_variable_is_a_settings_error_naming_it_without_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_REDIS_URL", f"http://:{SECRET}@127.0.0.1:6379/0")
    monkeypatch.setenv("HEADWATER_SHARD_LEASE_SECONDS", "-1")

    with pytest.raises(SettingsError) as raised:
        get_settings()

    assert isinstance(raised.value, ConfigError)
    assert raised.value.problems == [
        "HEADWATER_REDIS_URL: must be a Redis URL (one of redis://, rediss://, unix://, redis+sentinel://, redis+cluster://)",
        "HEADWATER_SHARD_LEASE_SECONDS: Input should be greater than 0 (got '-1')",
    ]
    assert "\n" not in raised.value.message
    assert SECRET not in raised.value.message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"sasl_plain_password": "' + SECRET, "not valid JSON: Unterminated string starting at (line 1, column 25)"),
        ("[6000]", "must be a JSON object of aiokafka consumer options (got list)"),
    ],
    ids=["bad-json", "not-an-object"],
)
def test_a_bad_per_source_variable_is_kept_for_its_source_to_refuse(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv(OPTIONS, value)

    options = get_settings().kafka_consumer_options  # the process starts: only Kafka mappings are refused

    assert options == Unusable(OPTIONS, problem)
    with pytest.raises(ConfigError) as raised:
        usable(options)
    assert raised.value.problems == [f"{OPTIONS}: {problem}"]
    assert SECRET not in raised.value.message


def test_an_unknown_aiokafka_option_is_refused_by_the_kafka_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPTIONS, '{"session_timeout_ms": 6000, "sesion_timeout_ms": 6000}')

    with pytest.raises(ConfigError) as raised:
        environment_options()

    assert raised.value.problems == [f"{OPTIONS}: unknown aiokafka consumer option(s) sesion_timeout_ms"]


def test_an_aiokafka_option_value_aiokafka_would_trip_over_later_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's constructor takes these on trust; its start, or its first fetch, raises on them."""
    bad = {"session_timeout_ms": "abc", "fetch_max_bytes": -1, "check_crcs": 1, "isolation_level": "dirty"}
    fine = {"fetch_min_bytes": 0, "max_poll_records": None, "sasl_plain_password": SECRET, "client_id": "mine"}
    monkeypatch.setenv(OPTIONS, json.dumps({**bad, **fine}))

    with pytest.raises(ConfigError) as raised:
        environment_options()

    assert raised.value.problems == [
        f"{OPTIONS}: check_crcs must be true or false (got int)",
        f"{OPTIONS}: fetch_max_bytes must be 1 or more (got -1)",
        f"{OPTIONS}: isolation_level must be one of read_uncommitted, read_committed",
        f"{OPTIONS}: session_timeout_ms must be a whole number (got str)",
    ]
    monkeypatch.setenv(OPTIONS, json.dumps(fine))
    assert environment_options() == fine


# -- the command line --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("HEADWATER_LOG_LEVEL", "chatty", "HEADWATER_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' "),
        ("HEADWATER_REDIS_URL", f"reddis://:{SECRET}@localhost", "HEADWATER_REDIS_URL: must be a Redis URL"),
        ("HEADWATER_SHARD_LEASE_SECONDS", "soon", "HEADWATER_SHARD_LEASE_SECONDS: Input should be a valid number"),
    ],
    ids=["log-level", "redis-url", "shard-lease"],
)
def test_the_cli_reports_an_invalid_variable_as_one_line_and_exit_2(variable: str, value: str, said: str) -> None:
    env = {**os.environ, variable: value, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "broker.cli", "quarantine", "list"]

    answer = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False)

    assert answer.returncode == 2
    assert answer.stdout == ""
    assert answer.stderr.startswith(f"headwater: InvalidConfiguration: environment: {said}")
    assert len(answer.stderr.splitlines()) == 1
    assert SECRET not in answer.stderr


# -- a real `headwater poll` -------------------------------------------------------------------------
class Poller:
    """One `headwater poll` process over a configuration of one function and the given mappings."""

    def __init__(self, directory: Path, env: dict[str, str], mappings: list[dict[str, Any]]) -> None:
        self.config_path = directory / "headwater.yaml"
        document = {
            "Functions": [{"FunctionName": FUNCTION, "Handler": "tests.handlers.core.record"}],
            "EventSourceMappings": [{"FunctionName": FUNCTION, **mapping} for mapping in mappings],
        }
        self.config_path.write_text(yaml.safe_dump(document))
        self.uuids = [mapping.uuid for mapping in load_config(self.config_path).event_source_mappings]
        self.log_path = directory / "poller.log"
        command = [sys.executable, "-m", "broker.cli", "poll", "--config", str(self.config_path)]
        with self.log_path.open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [*command, "--grace-seconds", "1"],
                cwd=REPO_ROOT,
                env={**env, "PYTHONPATH": str(REPO_ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def explain(self) -> str:
        return f"poller exit code {self.process.poll()}; its log:\n{self.log_path.read_text(errors='replace')[-4000:]}"

    def stop(self) -> None:
        stop_processes([self.process], timeout=15)


StartPoller = Callable[[dict[str, str], list[dict[str, Any]]], Poller]


@dataclass(frozen=True)
class SqsQueue:
    arn: str
    env: dict[str, str]  # what sends the poller's AWS SDK calls to moto


def _state(redis: Any, uuid: str) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in redis.hgetall(keys.mapping_state(uuid)).items()}


@pytest.fixture
def sqs_queue(aws_env: dict[str, str]) -> SqsQueue:
    """A fresh queue on moto holding one message."""
    client = boto3.client("sqs", endpoint_url=aws_env["AWS_ENDPOINT_URL"], region_name=aws_env["AWS_REGION"])
    url = client.create_queue(QueueName="settings-uploads")["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody=json.dumps({"key": "cat.png"}))
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return SqsQueue(str(attributes["QueueArn"]), {**os.environ, **aws_env})


@pytest.fixture
def start_poller(tmp_path: Path) -> Iterator[StartPoller]:
    pollers: list[Poller] = []

    def start(env: dict[str, str], mappings: list[dict[str, Any]]) -> Poller:
        pollers.append(Poller(tmp_path, env, mappings))
        return pollers[-1]

    yield start
    for poller in pollers:
        poller.stop()


@pytest.mark.kafka
@pytest.mark.parametrize(
    "case",
    [
        ('{"sesion_timeout_ms": 6000}', f"{OPTIONS}: unknown aiokafka consumer option(s) sesion_timeout_ms"),
        ('{"session_timeout_ms": 6000', f"{OPTIONS}: not valid JSON: "),
        ('{"session_timeout_ms": "abc"}', f"{OPTIONS}: session_timeout_ms must be a whole number (got str)"),
        # Below the broker's group.min.session.timeout.ms (6 s): aiokafka's start fails when it joins the group.
        (
            '{"session_timeout_ms": 1000}',
            f"{OPTIONS}: aiokafka refused the consumer when it was started (InvalidSessionTimeoutError); "
            "check session_timeout_ms",
        ),
    ],
    ids=["unknown-option", "bad-json", "bad-value", "refused-at-start"],
)
async def test_a_bad_kafka_consumer_option_disables_the_kafka_mapping_while_the_sqs_mapping_runs(
    kafka_broker: KafkaBroker, redis_url: str, sqs_queue: SqsQueue, start_poller: StartPoller, case: tuple[str, str]
) -> None:
    options, reason = case
    kafka = {
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka_broker.bootstrap_servers]}},
        "Topics": ["settings-orders"],
        "StartingPosition": "TRIM_HORIZON",
    }
    env = {**sqs_queue.env, "HEADWATER_REDIS_URL": redis_url, OPTIONS: options}
    poller = start_poller(env, [kafka, {"EventSourceArn": sqs_queue.arn, "BatchSize": 1}])
    kafka_uuid, sqs_uuid = poller.uuids
    redis = connect(redis_url)

    def disabled() -> dict[str, str] | None:
        assert poller.process.poll() is None, poller.explain()
        state = _state(redis, kafka_uuid)
        return state if state.get("State") == "Disabled" else None

    state = await eventually(disabled, 30, poller.explain)
    assert state["StateTransitionReason"].startswith(f"FUNCTION_CONFIG_NOT_VALID: {reason}")
    # The SQS mapping runs meanwhile: its message was read and its invocation enqueued.
    queue = InvocationQueue(redis)
    await eventually(lambda: queue.depth(FUNCTION) == 1, 30, poller.explain)
    assert _state(redis, sqs_uuid)["State"] == "Enabled"
    assert poller.process.poll() is None
    redis.close()


async def test_poll_reaches_redis_through_a_sentinel_url(sqs_queue: SqsQueue, start_poller: StartPoller) -> None:
    """Every client of `headwater poll` comes from broker.connection, which resolves Sentinel URLs
    (redis-py's own `from_url` refuses the scheme)."""
    group = start_or_fail(SentinelGroup(sentinels=1, quorum=1, password=SECRET))
    try:
        poller = start_poller(
            {**sqs_queue.env, "HEADWATER_REDIS_URL": group.url()}, [{"EventSourceArn": sqs_queue.arn}]
        )
        redis = connect(group.url())
        queue = InvocationQueue(redis)

        def running() -> bool:
            assert poller.process.poll() is None, poller.explain()
            return _state(redis, poller.uuids[0]).get("State") == "Enabled" and queue.depth(FUNCTION) == 1

        await eventually(running, 30, poller.explain)
        poller.stop()
        assert poller.process.returncode == 0, poller.explain()
        redis.close()
    finally:
        group.close()
