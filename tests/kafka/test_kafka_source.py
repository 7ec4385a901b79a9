"""The Kafka source alone, in this process, on the real broker: starting positions, rebalances,
a batch outliving max.poll.interval, and the security settings handed to aiokafka."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from prometheus_client import REGISTRY

from broker.errors import ConfigError
from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, SourceContext
from broker.sources.kafka.access import client_settings
from broker.sources.kafka.source import KafkaSource  # the class itself: the package's lazy attribute is Any to mypy
from tests.kafka.conftest import KafkaStack
from tests.waiting import eventually

FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300}


def mapping_for(stack: KafkaStack, name: str = "consumer", **fields: Any) -> EventSourceMapping:
    return EventSourceMapping.model_validate(
        {
            "FunctionName": name,
            "Topics": [stack.topic],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [stack.broker.bootstrap_servers]}},
            "MaximumBatchingWindowInSeconds": 0,
            **fields,
        }
    )


def source_for(mapping: EventSourceMapping, drain_seconds: float | None = None, **consumer_options: Any) -> KafkaSource:
    extras: dict[str, Any] = {"kafka_consumer_options": {**FAST_GROUP, **consumer_options}}
    if drain_seconds is not None:
        extras["kafka_drain_seconds"] = drain_seconds
    context = SourceContext(aws_session=None, region="us-east-1", function_timeout_seconds=3, extras=extras)
    return KafkaSource(mapping, context)


@pytest.fixture
async def sources() -> AsyncIterator[Callable[[KafkaSource], KafkaSource]]:
    started: list[KafkaSource] = []

    def track(source: KafkaSource) -> KafkaSource:
        started.append(source)
        return source

    yield track
    for source in started:
        await source.stop()


async def read_values(*sources: KafkaSource, count: int, within: float = 30.0) -> list[str]:
    """Read and settle batches from each source in turn until `count` records came; their values."""
    values: list[str] = []

    async def enough() -> bool:
        for source in sources:
            batch = await source.read_batch()
            if batch is not None:
                values.extend(_value(record.event) for record in batch.records)
                await source.settle(batch, frozenset())
        return len(values) >= count

    await eventually(enough, within, lambda: f"{count} records, got {values}")
    return values


async def assigned(source: KafkaSource, within: float = 30.0) -> None:
    """Read (and drop) until the group gave `source` every partition: the reads drive the join."""

    async def holds_every_partition() -> bool:
        if source.desired_concurrency(0) >= 3 and source.consumer.assignment() != set():
            return True
        assert await source.read_batch() is None, "a batch came before the assignment was complete"
        return False

    await eventually(holds_every_partition, within, lambda: "no partitions assigned")


def _value(event: dict[str, Any]) -> str:
    import base64

    return base64.b64decode(event["value"]).decode()


@pytest.mark.kafka
async def test_starting_position_applies_only_without_a_committed_offset(stack: KafkaStack, sources: Any) -> None:
    await stack.produce({"value": "old-1"}, {"value": "old-2"})
    oldest = sources(source_for(mapping_for(stack, "from-oldest")))
    latest_mapping = mapping_for(stack, "from-latest", StartingPosition="LATEST")
    latest = sources(source_for(latest_mapping))
    for source in (oldest, latest):
        await source.start()
        await assigned(source)
    await stack.produce({"value": "new-1"})

    assert await read_values(oldest, count=3) == ["old-1", "old-2", "new-1"]
    assert await read_values(latest, count=1) == ["new-1"]
    assert oldest.group_id != latest.group_id == latest_mapping.uuid  # the stable UUID names the group

    await latest.stop()
    await stack.produce({"value": "while-stopped"})
    again = sources(source_for(latest_mapping))
    await again.start()
    assert await read_values(again, count=1) == ["while-stopped"]  # LATEST is ignored: the group has an offset


@pytest.mark.kafka
async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(stack: KafkaStack, sources: Any) -> None:
    await stack.produce({"value": "before"})
    moment = time.time()
    await asyncio.sleep(0.05)  # let the broker clock pass `moment` before the next record is stamped
    await stack.produce({"value": "after"})
    source = sources(source_for(mapping_for(stack, StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=moment)))
    await source.start()
    assert await read_values(source, count=1) == ["after"]


@pytest.mark.kafka
async def test_a_batch_outliving_max_poll_interval_keeps_the_group(stack: KafkaStack, sources: Any) -> None:
    mapping = mapping_for(stack)
    source = sources(source_for(mapping, max_poll_interval_ms=1500))
    await stack.produce({"partition": 0, "value": "slow"})
    await source.start()
    slow = await _next_batch(source)
    rebalances = _rebalances(mapping)

    started = time.monotonic()
    await stack.produce({"partition": 1, "value": "other partition"})
    other = await _next_batch(source)  # the consumer keeps fetching the partitions not in flight
    await source.settle(other, frozenset())
    while time.monotonic() - started < 3.0:  # a measured span: twice max_poll_interval, the first batch still out
        assert await source.read_batch() is None
    await source.settle(slow, frozenset())

    assert _rebalances(mapping) == rebalances
    assert await stack.committed_for(mapping.uuid) == {0: 1, 1: 1}


@pytest.mark.kafka
async def test_a_revoked_partitions_batch_is_not_committed_and_is_read_again(stack: KafkaStack, sources: Any) -> None:
    """A batch still out when the revoke's drain ends is left to the next owner."""
    mapping = mapping_for(stack)
    first = sources(source_for(mapping, drain_seconds=1))
    await stack.produce(*({"partition": p, "value": f"p{p}"} for p in range(3)))
    await first.start()
    out = [await _next_batch(first) for _ in range(3)]
    second = sources(source_for(mapping, drain_seconds=1))
    await second.start()  # the group rebalances: every partition of `first` is revoked (eager protocol)

    async def revoked() -> bool:
        await first.read_batch()  # the reads let the consumer take part in the rebalance
        return not first.owns(out[0])

    await eventually(revoked, 30, lambda: "the first source kept its partitions")
    for batch in out:
        await first.settle(batch, frozenset())
    assert await stack.committed_for(mapping.uuid) == {}

    values = await read_values(first, second, count=3)
    assert sorted(values) == ["p0", "p1", "p2"]
    assert await stack.committed_for(mapping.uuid) == {0: 1, 1: 1, 2: 1}


@pytest.mark.kafka
async def test_a_revoke_waits_for_batches_in_flight_and_commits_them(stack: KafkaStack, sources: Any) -> None:
    mapping = mapping_for(stack)
    first = sources(source_for(mapping))
    await stack.produce(*({"partition": p, "value": f"p{p}"} for p in range(3)))
    await first.start()
    out = [await _next_batch(first) for _ in range(3)]
    second = sources(source_for(mapping))
    # The group rebalances: `first` is asked to revoke every partition, and `second.start()` returns
    # only once the group has let it join, after `first` is done with the revoke.
    starting = asyncio.ensure_future(second.start())
    await eventually(lambda: len(first.draining) == 3, 20, lambda: f"the revoke never started: {first.draining}")
    assert await first.read_batch() is None  # a draining partition yields nothing more
    for batch in out:
        assert first.owns(batch)  # still owned while it drains: its outcome is committed here
        await first.settle(batch, frozenset())
    await asyncio.wait_for(starting, 30)
    assert await stack.committed_for(mapping.uuid) == {0: 1, 1: 1, 2: 1}

    await stack.produce(*({"partition": p, "value": f"q{p}"} for p in range(3)))
    values = await read_values(first, second, count=3)
    assert sorted(values) == ["q0", "q1", "q2"]  # nobody reads p0..p2 again


@pytest.mark.kafka
async def test_a_record_the_client_cannot_decode_is_skipped_and_reported(stack: KafkaStack, sources: Any) -> None:
    await stack.produce({"partition": 0, "value": "before"})
    _produce_with_undecodable_header(stack)
    await stack.produce({"partition": 0, "value": "after"})
    source = sources(source_for(mapping_for(stack)))
    await source.start()
    assert await read_values(source, count=2) == ["before", "after"]
    assert len(source.unreadable) == 1
    assert source.unreadable[0].startswith(f"{stack.topic}-0@1: ")
    assert await stack.committed_for(source.group_id) == {0: 3}


RAW_HEADER_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class RawName(str):  # encodes to bytes that are not UTF-8
    def encode(self, encoding="utf-8", errors="strict"):
        return b"\\xff\\xfe-trace"

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        await producer.send_and_wait(sys.argv[2], b"unreadable", partition=0, headers=[(RawName("x"), b"v")])
    finally:
        await producer.stop()

asyncio.run(main())
"""


def _produce_with_undecodable_header(stack: KafkaStack) -> None:
    """A record whose header name is not UTF-8. aiokafka's C record builder refuses to write one,
    so a child process produces it with aiokafka's pure-Python builder (AIOKAFKA_NO_EXTENSIONS)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    command = [sys.executable, "-c", RAW_HEADER_PRODUCER, stack.broker.bootstrap_servers, stack.topic]
    subprocess.run(command, env=env, check=True, timeout=60)


async def _next_batch(source: KafkaSource, within: float = 30.0) -> Batch:
    batch: Batch = await eventually(source.read_batch, within, lambda: "no batch")
    return batch


def _rebalances(mapping: EventSourceMapping) -> float:
    return REGISTRY.get_sample_value("headwater_kafka_rebalances_total", {"mapping": mapping.uuid}) or 0.0


# -- security settings (no broker needed: they are checked on the client aiokafka builds) -------------
def _secured(tmp_path: Path, *configurations: dict[str, str]) -> EventSourceMapping:
    return EventSourceMapping.model_validate(
        {
            "FunctionName": "secure",
            "Topics": ["orders"],
            "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["kafka.internal:9096"]}},
            "SourceAccessConfigurations": list(configurations),
        }
    )


def _first_ca() -> str:
    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    return bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)] + "\n"


async def test_sasl_scram_and_root_ca_reach_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "kafka-credentials.json"
    secret.write_text(json.dumps({"username": "ingest", "password": "s3cret"}))
    monkeypatch.setenv("KAFKA_ROOT_CA", json.dumps({"certificate": _first_ca()}))
    mapping = _secured(
        tmp_path,
        {"Type": "SASL_SCRAM_512_AUTH", "URI": f"file://{secret}"},
        {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": "env:KAFKA_ROOT_CA"},
    )
    settings = await client_settings(mapping.source_access_configurations, aws_session=None)
    context = settings.pop("ssl_context")
    assert settings == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ingest",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert len(context.get_ca_certs()) == 1  # the given root, not the system's bundle
    # The consumer is built from these settings (no private aiokafka attribute is read to check it);
    # its group id and manual commits show in behaviour: the starting-position and commit tests.
    consumer = await source_for(mapping).build_consumer()
    await consumer.stop()


async def test_basic_auth_is_sasl_plain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_LOGIN", json.dumps({"username": "u", "password": "p"}))
    mapping = _secured(tmp_path, {"Type": "BASIC_AUTH", "URI": "env:KAFKA_LOGIN"})
    settings = await client_settings(mapping.source_access_configurations, aws_session=None)
    assert (settings["security_protocol"], settings["sasl_mechanism"]) == ("SASL_SSL", "PLAIN")
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("u", "p")


async def test_no_access_configuration_is_plaintext(tmp_path: Path) -> None:
    assert await client_settings(_secured(tmp_path).source_access_configurations, None) == {
        "security_protocol": "PLAINTEXT"
    }


async def test_unusable_secrets_are_configuration_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_LOGIN", json.dumps({"username": "u"}))
    for uri, problem in [
        ("env:NOPE_" + uuid.uuid4().hex, "is not set"),
        ("env:KAFKA_LOGIN", "'password'"),
        (f"file://{tmp_path}/missing.json", "cannot read"),
        ("s3://bucket/key", "must be"),
    ]:
        source = source_for(_secured(tmp_path, {"Type": "BASIC_AUTH", "URI": uri}))
        with pytest.raises(ConfigError, match=problem):
            await source.build_consumer()
