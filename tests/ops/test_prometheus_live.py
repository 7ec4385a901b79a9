"""Every dashboard panel's query and every alert expression, evaluated by a real Prometheus (Debian's
`prometheus`) that scrapes a live worker pool, poller, API and redis_exporter under a little load.

A query that errors, or returns no series, fails the test: it would be an empty panel or an alert
that can never fire. Series that exist only after a failure are made to exist by causing the failure
(a failing function with a dead-letter queue and a destination that do not exist, a poison job); the
rest are declared at zero by the processes (broker/metrics.declare_functions / declare_build).

The stream series (iterator age, shard leases, lease takes, fences, redeliveries) come from a Kinesis
mapping on moto; the lease, fence and redelivery counters are declared at zero per stream mapping.

Deliberate exceptions, in KAFKA_ONLY: the Kafka series (offset lag, rebalances) need a Kafka broker,
which takes longer to start than this whole test; tests/kafka checks them on a real broker.
Alert expressions are checked twice: as written (must evaluate), and with their thresholds removed
(the signal they compare must have series); PROBES replaces the second for alerts whose signal is an
absence.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from broker import keys
from broker.invocation import InvocationType
from tests.workers.conftest import REPO_ROOT, Stack

CHART = REPO_ROOT / "deploy" / "helm" / "headwater"
NAMESPACE = "hw"
SCRAPE_SECONDS = 1
KAFKA_ONLY = ("headwater_kafka_offset_lag", "headwater_kafka_rebalances_total")
PROBES = {
    # Fires only when every target of a job is gone: probe what it compares instead.
    "HeadwaterTargetAbsent": [
        "count by (namespace, job) (max_over_time(headwater_build_info[6h]))",
        "count by (namespace, job) (up == 1)",
        "max by (namespace) (headwater_queue_depth)",
    ],
}
THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?=\s*(?:$|\)|\n|and\b|or\b|unless\b))")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, int], rules: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE}}],
                }
                for job, port in targets.items()
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run scripts/install-test-deps (Debian's prometheus package)"
        self._log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr!r}: {error.read().decode()}") from None
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        self._log.close()


def start(stack: Stack, name: str, *arguments: str) -> subprocess.Popen[bytes]:
    log = (stack.directory / f"{name}.log").open("wb")
    stack._log_files.append(log)  # closed by the stack's teardown
    command = [sys.executable, "-m", "broker.cli", *arguments, "--config", str(stack.config_path)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=stack.env, stdout=log, stderr=subprocess.STDOUT)
    stack.pools.append(process)  # stopped (SIGTERM, then waited for) with the stack
    return process


def functions(dead_letter_arn: str, failed_arn: str) -> list[dict[str, Any]]:
    return [
        {"FunctionName": "orders", "Handler": "tests.handlers.core.record", "ReservedConcurrentExecutions": 4},
        {
            "FunctionName": "failing",
            "Handler": "tests.handlers.core.fail",
            "DeadLetterConfig": {"TargetArn": dead_letter_arn},  # a queue that does not exist
            "EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Destination": failed_arn}}},
        },
    ]


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.fixture
def live(
    aws_env: dict[str, str], make_stack: Callable[..., Stack], prometheus_dir: Path
) -> Iterator[tuple[Prometheus, Stack]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="orders-in")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    missing = "arn:aws:sqs:us-east-1:123456789012:"
    stack = make_stack(functions(missing + "no-such-dlq", missing + "no-such-destination"))
    document = yaml.safe_load(stack.config_path.read_text())
    stream_arn = _stream("clicks-in")
    document["EventSourceMappings"] = [
        {"FunctionName": "orders", "EventSourceArn": queue_arn, "BatchSize": 5},
        {"FunctionName": "orders", "EventSourceArn": stream_arn, "StartingPosition": "TRIM_HORIZON", "BatchSize": 5},
    ]
    stack.config_path.write_text(yaml.safe_dump(document))
    ports = {"hw-worker": free_port(), "hw-poller": free_port(), "hw-api": free_port(), "hw-redis": free_port()}
    start(stack, "worker", "worker", "--processes", "2", "--metrics-port", str(ports["hw-worker"]))
    start(stack, "poller", "poll", "--metrics-port", str(ports["hw-poller"]))
    start(stack, "api", "api", "--no-auth", "--port", str(free_port()), "--metrics-port", str(ports["hw-api"]))
    exporter = subprocess.Popen(
        [
            shutil.which("prometheus-redis-exporter") or "prometheus-redis-exporter",
            f"--redis.addr={stack.redis_url}",
            f"--web.listen-address=127.0.0.1:{ports['hw-redis']}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = Prometheus(prometheus_dir, ports, CHART / "rules" / "alerts.yaml")
    try:
        load(stack, sqs, url, "clicks-in")
        yield prometheus, stack
    finally:
        prometheus.close()
        exporter.terminate()
        exporter.wait(timeout=10)


def _stream(name: str) -> str:
    """A one-shard Kinesis stream on moto; returns its ARN."""
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    return str(kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"])


def load(stack: Stack, sqs: Any, queue_url: str, stream: str) -> None:
    """A little of everything: sync and async invocations, SQS and Kinesis records, failures, a poison job."""
    client = stack.client
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    stack.wait_for(lambda: stack.redis.zcard(keys.workers("orders")) >= 2)
    for n in range(5):
        client.invoke("orders", {"n": n})
        client.invoke("orders", {"n": n}, InvocationType.EVENT)
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": n}))
        kinesis.put_record(StreamName=stream, Data=json.dumps({"n": n}).encode(), PartitionKey="p")
    client.invoke("failing", {"n": 0}, InvocationType.EVENT)
    # A poison job, written whole before it is queued (a worker must never see it half made).
    poison = keys.job_id("failing")
    stack.redis.hset(keys.job(poison), "data", b"not zlib")
    stack.redis.rpush(keys.queue_key("failing"), poison)
    stack.redis.lpush(keys.wake(keys.queue_name("failing")), "1")
    stack.wait_for(lambda: stack.redis.hlen(keys.quarantine("failing")) == 1)
    # 10 direct invocations, at least one SQS and one Kinesis batch, and the failing event's 3 tries.
    stack.wait_for(lambda: len(stack.noted("calls")) >= 10 + 1 + 1 + 3, timeout=40)


def dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        stack = list(board["panels"])
        while stack:
            panel = stack.pop()
            stack += panel.get("panels", [])
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", NAMESPACE)
                expr = expr.replace("$function", ".*").replace("$mapping", ".*")
                found.append((f"{path.name}: {panel['title']}", expr))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_panel_and_alert_has_series_on_a_live_prometheus(live: tuple[Prometheus, Stack]) -> None:
    prometheus, _ = live
    deadline = time.monotonic() + 60  # generous: the machine may be busy; a pass takes about 20 s
    while not prometheus.ready() or len(prometheus.query("up == 1")) < 4:
        up = {sample["metric"]["job"]: sample["value"][1] for sample in prometheus.query("up")}
        assert time.monotonic() < deadline, (up, prometheus_dir_log(prometheus))
        time.sleep(0.2)
    for _ in range(2):  # increase() and rate() want samples before and after the load
        _wait_for_scrapes(prometheus, 3)
    empty = []
    for where, expr in dashboard_queries():
        if not prometheus.query(expr) and not any(name in expr for name in KAFKA_ONLY):
            empty.append(f"{where}: {expr}")
    for name, expr in alert_expressions():
        prometheus.query(expr)  # errors fail here
        for probe in PROBES.get(name, [THRESHOLD.sub("", expr)]):
            if not prometheus.query(probe) and not any(metric in probe for metric in KAFKA_ONLY):
                empty.append(f"alert {name}: {probe}")

    assert not empty, "queries without series:\n" + "\n".join(empty)
    builds = prometheus.query("headwater_build_info")
    assert {sample["metric"]["job"] for sample in builds} == {"hw-worker", "hw-poller", "hw-api"}  # every process
    assert all(sample["metric"]["version"] and sample["metric"]["commit"] for sample in builds)  # "unknown" unset
    infos = [sample["metric"] for sample in prometheus.query("headwater_mapping_info")]
    kinds = sorted((info["function"], info["source_type"]) for info in infos)
    assert kinds == [("orders", "kinesis"), ("orders", "sqs")]
    assert all(info["mapping"] for info in infos)  # the mapping's UUID, the label every per-mapping series has


def _wait_for_scrapes(prometheus: Prometheus, count: int) -> None:
    start = float(prometheus.query("max(timestamp(up))")[0]["value"][1])
    deadline = time.monotonic() + 15
    while float(prometheus.query("max(timestamp(up))")[0]["value"][1]) < start + count * SCRAPE_SECONDS:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def prometheus_dir_log(prometheus: Prometheus) -> str:
    return Path(prometheus._log.name).read_text(errors="replace")[-3000:]
