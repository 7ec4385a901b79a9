"""Redis Sentinel: the `redis+sentinel://` URL, durable mode's WAIT, and a failover while handlers run.

The rig (tests/rig/sentinel.py) runs one primary, one replica and three Sentinels on loopback
(quorum 2, down after 1 s), so a SIGKILLed primary is replaced in a few seconds. The product is
given only the Sentinel URL; nothing in it knows the data nodes' ports.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from broker.connection import connect, connect_async, parse_sentinel_url, wait_for_replicas
from broker.errors import ConfigError, StoreUnavailable, TooManyRequests
from broker.invocation import InvocationType
from tests.faults.conftest import FaultStack, report
from tests.rig.common import start_or_fail
from tests.rig.sentinel import SentinelGroup
from tests.waiting import eventually

PASSWORD = "data:p@ss/word"  # reserved characters on purpose: the URL must carry them percent-encoded
SENTINEL_PASSWORD = "sentinel-secret"
PROCESSES = 2
PREFETCH = 4
EVENTS_BEFORE = 24  # accepted before the primary dies
EVENTS_DURING = 16  # accepted while it dies and the replica takes over (each retried by the caller until accepted)
HANDLER_SECONDS = 0.5
# What a failover may run twice: what the pool held (running or prefetched) when the primary died,
# plus what the enqueuer had in flight (an ambiguous accept that the caller retried).
DUPLICATES_BOUND = PROCESSES * PREFETCH + 1


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    group = start_or_fail(SentinelGroup(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD))
    yield group
    group.close()


@dataclass
class SentinelStack(FaultStack):
    """The conftest's FaultStack, speaking to Redis only through the Sentinel URL, in durable mode."""

    sentinel_url: str = ""

    @property
    def redis_url(self) -> str:
        return self.sentinel_url

    def redis(self, timeout_seconds: float = 5.0) -> Redis:
        return connect(self.sentinel_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)

    def write_config(self) -> None:
        super().write_config()
        document = yaml.safe_load(self.config_path.read_text())
        document["Headwater"].update({"DurableReplicas": 1, "DurableWaitTimeoutMs": 2000})
        self.config_path.write_text(yaml.safe_dump(document))


def _primary_port(client: Redis) -> int:
    """The port of the primary a Sentinel-backed client talks to (its pool asks the Sentinels)."""
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return int(pool.get_master_address()[1])  # type: ignore[no-untyped-call]


# -- the URL ---------------------------------------------------------------------------------------------
def test_sentinel_url_forms_are_parsed_and_bad_ones_refused_without_echoing_the_password() -> None:
    target = parse_sentinel_url("redis+sentinel://:p%40ss@10.0.0.1:26380,[::1],sentinel-2/orders/3?sentinel_password=s")
    assert target.sentinels == (("10.0.0.1", 26380), ("::1", 26379), ("sentinel-2", 26379))
    assert (target.service_name, target.db, target.password, target.sentinel_password) == ("orders", 3, "p@ss", "s")
    assert parse_sentinel_url("redis+sentinel://h/orders").data_node_options() == {
        "db": 0,
        "username": None,
        "password": None,
    }

    for url, reason in [
        ("redis+sentinel://:hunter2@h:1", "the path must be /service_name"),
        ("redis+sentinel://:hunter2@h:1/orders/zero", "database number"),
        ("redis+sentinel://:hunter2@h:port/orders", "is not a number"),
        ("redis+sentinel://:hunter2@h:1,/orders", "needs a host"),
        ("redis+sentinel://:hunter2@h:1/orders?sentinel_pasword=x", "unknown query option(s) sentinel_pasword"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_sentinel_url(url)
        assert reason in str(caught.value)
        assert "hunter2" not in str(caught.value)


async def test_sentinel_url_authenticates_to_both_tiers_and_selects_the_database(
    sentinel_group: SentinelGroup,
) -> None:
    url = sentinel_group.url(db=2)
    client = connect(url)
    client.set("written-through-sentinel", "sync")
    async_client = connect_async(url)
    await async_client.set("written-through-sentinel-async", "async")
    await async_client.aclose()

    primary = sentinel_group.primary
    assert primary is not None
    with Redis("127.0.0.1", primary.port, password=PASSWORD, db=2) as direct:  # the primary's own address
        assert direct.mget("written-through-sentinel", "written-through-sentinel-async") == [b"sync", b"async"]
    without_sentinel_password = url.split("?", 1)[0]
    with pytest.raises(MasterNotFoundError):  # the Sentinels refuse to answer: no primary can be found
        connect(without_sentinel_password, retry_on_error=[], retry=None).ping()
    client.close()


def test_wait_for_replicas_counts_this_connections_writes_only(sentinel_group: SentinelGroup) -> None:
    client = connect(sentinel_group.url())
    replica = next(node for node in sentinel_group.nodes if node is not sentinel_group.primary)
    writer: Redis = client.client()  # type: ignore[no-untyped-call]  # one pinned connection: WAIT covers its writes
    try:
        writer.set("before-freeze", "1")
        assert wait_for_replicas(writer, 1, 2000) == 1
        replica.freeze()  # the replica can no longer acknowledge anything
        writer.set("while-frozen", "1")
        assert wait_for_replicas(writer, 1, 300) == 0  # the write is on the primary only
        with pytest.raises(ValueError, match="bound to one connection"):
            wait_for_replicas(client, 1, 300)  # a pooled WAIT could leave on a connection that wrote nothing
        replica.thaw()
        assert wait_for_replicas(writer, 1, 5000) == 1
    finally:
        if replica.frozen:
            replica.thaw()
        writer.close()
        client.close()


# -- a failover under load ------------------------------------------------------------------------------------
class Enqueuer(threading.Thread):
    """A caller that keeps invoking through the failover, retrying each refused call until it is accepted."""

    def __init__(self, stack: SentinelStack, ids: list[str], pause_seconds: float, deadline_seconds: float) -> None:
        super().__init__(name="enqueuer", daemon=True)
        self.stack, self.ids, self.pause_seconds = stack, ids, pause_seconds
        self.deadline = time.monotonic() + deadline_seconds
        self.accepted: list[str] = []
        self.refusals: list[str] = []

    def run(self) -> None:
        client = self.stack.client()
        for identifier in self.ids:
            while time.monotonic() < self.deadline:
                try:
                    client.invoke("slow", {"id": identifier, "seconds": HANDLER_SECONDS}, InvocationType.EVENT)
                except (RedisError, StoreUnavailable, TooManyRequests) as error:  # retryable: the caller retries
                    self.refusals.append(f"{type(error).__name__}: {error}")
                    time.sleep(0.2)
                else:
                    self.accepted.append(identifier)
                    break
            time.sleep(self.pause_seconds)
        client.redis.close()


async def test_sentinel_failover_while_handlers_run_loses_no_accepted_event(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    assert sentinel_group.primary is not None
    stack = SentinelStack(
        sentinel_group.primary, tmp_path, [{"FunctionName": "slow", "Timeout": 10}], sentinel_url=sentinel_group.url()
    )
    try:
        await stack.start_pool(processes=PROCESSES, prefetch=PREFETCH)
        accepted = stack.invoke_events("slow", EVENTS_BEFORE, HANDLER_SECONDS, prefix="before-")
        await eventually(
            lambda: sum(stack.runs.count("end").values()) >= PROCESSES,
            30,
            lambda: f"the first runs never finished\n{stack.logs()}",
        )
        in_flight = stack.in_flight()
        enqueuer = Enqueuer(stack, [f"during-{n}" for n in range(EVENTS_DURING)], 0.15, deadline_seconds=40)
        enqueuer.start()
        killed = sentinel_group.primary
        failover_seconds = await asyncio.to_thread(sentinel_group.fail_primary)
        # Durable mode needs a replica to acknowledge: until the killed node is back (Kubernetes
        # restarts its pod) callers are refused, and retry.
        rejoin_seconds = await asyncio.to_thread(sentinel_group.restart_node, killed)
        await asyncio.to_thread(enqueuer.join, 45)
        accepted += enqueuer.accepted

        tally = await stack.settled(accepted, within=40)
        deaths = stack.pool_deaths()
        line = report(
            tally.describe(
                "sentinel failover",
                failover_seconds=round(failover_seconds, 1),
                rejoin_seconds=round(rejoin_seconds, 1),
                in_flight_at_fault=in_flight,
                caller_retries=len(enqueuer.refusals),
                worker_deaths=deaths,
            )
        )
        message = f"{line}\nrefused calls: {Counter(enqueuer.refusals).most_common(4)}\n{stack.logs()}"
        assert len(enqueuer.accepted) == EVENTS_DURING, message  # every caller got through after the failover
        assert not tally.lost, message
        assert tally.duplicated <= DUPLICATES_BOUND, message
        assert deaths == 0, message
        assert all(pool.running for pool in stack.pools), message
        with stack.redis() as redis:  # the product's own client now talks to the promoted replica
            assert _primary_port(redis) == sentinel_group.primary.port, message
    finally:
        stack.close()


def test_a_client_follows_the_failover_after_one_failed_command(sentinel_group: SentinelGroup) -> None:
    client = connect(sentinel_group.url(), retry_on_error=[], retry=None)  # no hidden retries: count them here
    client.set("before", "1")
    sentinel_group.fail_primary()
    failures = 0
    while True:
        try:
            client.set("after", "1")
            break
        except RedisConnectionError:
            failures += 1
            assert failures <= 3, "the client never reached the promoted replica"
    assert client.get("before") == b"1"  # it was replicated before the primary died
    assert sentinel_group.primary is not None
    assert _primary_port(client) == sentinel_group.primary.port
    client.close()
