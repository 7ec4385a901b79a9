"""Network faults between worker pools and Redis, through Toxiproxy: latency, a partition longer
than the worker lease, and connection resets.

Redis itself stays up and healthy in every scenario; only the path from one pool to it suffers.
The test enqueues through the direct address and watches Redis directly, so its own view is never
faulty. In the partition scenario a second pool keeps a direct link: it sees the cut-off pool's
lease lapse and takes its jobs over, then the cut-off pool comes back with stale claims, which must
be refused (fenced) without losing or destroying anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.conftest import HEARTBEAT_TTL_SECONDS, FaultStack, report, wait_briefly
from tests.rig import RedisServer
from tests.rig.common import start_or_fail
from tests.rig.toxiproxy import Latency, ResetPeer, Timeout, ToxiproxyClient, ToxiproxyServer
from tests.waiting import eventually

PROXY = "redis"
PROCESSES = 2
PREFETCH = 4
HELD_PER_POOL = PROCESSES * PREFETCH  # what one pool can hold (running or prefetched) when a fault strikes
WORKER_RESTARTS_ALLOWED = 0  # a network fault is no reason for a worker process to die
PARTITION_SECONDS = 20.0
assert PARTITION_SECONDS > 2 * HEARTBEAT_TTL_SECONDS  # the cut-off pool's lease lapses well before the end


@pytest.fixture
def toxiproxy() -> Iterator[ToxiproxyServer]:
    server = start_or_fail(ToxiproxyServer())
    yield server
    server.close()


@dataclass
class ProxiedStack(FaultStack):
    """The conftest's FaultStack whose pools reach Redis through `worker_redis_url` (a Toxiproxy
    proxy) unless started with `direct=True`; the test's own client stays on the direct URL."""

    worker_redis_url: str = ""
    proxied_worker_ids: set[str] = field(default_factory=set)
    _direct_next: bool = False

    def env(self) -> dict[str, str]:
        url = self.redis_url if self._direct_next else self.worker_redis_url
        return {**super().env(), "HEADWATER_REDIS_URL": url}

    async def start_proxied_pool(self) -> None:
        before = self.worker_ids()
        await self.start_pool(processes=PROCESSES, prefetch=PREFETCH)
        self.proxied_worker_ids |= self.worker_ids() - before

    async def start_direct_pool(self) -> None:
        self._direct_next = True
        try:
            await self.start_pool(processes=PROCESSES, prefetch=PREFETCH)
        finally:
            self._direct_next = False


@pytest.fixture
def proxied_stack(
    fault_redis: RedisServer, toxiproxy: ToxiproxyServer, tmp_path: Path
) -> Iterator[Callable[[], tuple[ProxiedStack, ToxiproxyClient]]]:
    """Builds the scenario: a proxy to the test's private Redis and a stack whose pools use it."""
    stacks: list[ProxiedStack] = []
    client = toxiproxy.client()

    def make() -> tuple[ProxiedStack, ToxiproxyClient]:
        proxy = client.create_proxy(PROXY, f"127.0.0.1:{fault_redis.port}")
        functions: list[dict[str, object]] = [{"FunctionName": "slow", "Timeout": 10}]
        stack = ProxiedStack(fault_redis, tmp_path, functions, worker_redis_url=proxy.redis_url())
        stacks.append(stack)
        return stack, client

    yield make
    client.reset()  # a failed scenario must not leave the pools cut off while they drain
    for stack in stacks:
        stack.close()


async def _first_runs_done(stack: FaultStack, runs: int) -> None:
    await eventually(
        lambda: sum(stack.runs.count("end").values()) >= runs,
        30,
        lambda: f"the first {runs} runs never finished\n{stack.logs()}",
    )


async def _proxied_pool_back_at_work(stack: ProxiedStack, within: float) -> None:
    """Every worker behind the proxy holds a live lease again (it renewed it on Redis's clock): the
    fault left no worker hung on a dead connection. The ids are the ones each worker registered."""

    def live() -> bool:
        with stack.redis() as redis:
            now_ms = int(redis.time()[0]) * 1000
            lease_sets = list(redis.scan_iter("headwater:workers:{*}"))  # one per function: each must be renewed
            leases = [redis.zscore(key, worker) for key in lease_sets for worker in stack.proxied_worker_ids]
        return all(lease is not None and lease > now_ms for lease in leases)

    await eventually(live, within, lambda: f"a worker behind the proxy never renewed its lease\n{stack.logs()}")


async def _settle_and_check(stack: FaultStack, accepted: list[str], scenario: str, duplicates_bound: int) -> None:
    """0 lost, duplicates within what was held when the fault struck, no worker restarted, every pool up."""
    tally = await stack.settled(accepted, within=40)
    deaths = stack.pool_deaths()
    line = report(tally.describe(scenario, duplicates_bound=duplicates_bound, worker_deaths=deaths))
    down = [pool.log_path.name for pool in stack.pools if not pool.running]
    message = f"{line}\npools down: {down}\n{stack.logs()}"
    assert not tally.lost, message
    assert tally.duplicated <= duplicates_bound, message
    assert deaths <= WORKER_RESTARTS_ALLOWED, message
    assert not down, message


async def test_latency_of_200_ms_to_redis_slows_workers_but_loses_and_repeats_nothing(
    proxied_stack: Callable[[], tuple[ProxiedStack, ToxiproxyClient]],
) -> None:
    stack, toxiproxy = proxied_stack()
    toxiproxy.add_toxic(PROXY, Latency("slow-link", latency_ms=200, jitter_ms=20))  # every reply 200 ms late
    await stack.start_proxied_pool()
    accepted = stack.invoke_events("slow", 24, seconds=0.2)

    # Slow is not dead: heartbeats still arrive within the lease, so nothing may run twice.
    await _settle_and_check(stack, accepted, "latency 200 ms", duplicates_bound=0)


async def test_partition_longer_than_the_lease_hands_work_over_and_fences_the_stale_pool(
    proxied_stack: Callable[[], tuple[ProxiedStack, ToxiproxyClient]],
) -> None:
    stack, toxiproxy = proxied_stack()
    await stack.start_proxied_pool()  # through the proxy: to be cut off
    await stack.start_direct_pool()
    accepted = stack.invoke_events("slow", 48, seconds=1.0)
    await _first_runs_done(stack, 2 * PROCESSES)

    with toxiproxy.partitioned(PROXY):  # connections closed, reconnects refused
        wait_briefly(PARTITION_SECONDS)
    await _proxied_pool_back_at_work(stack, within=15)

    # The direct pool may rerun what the cut-off pool held; nothing else may run twice.
    await _settle_and_check(stack, accepted, f"partition {PARTITION_SECONDS:.0f} s", duplicates_bound=HELD_PER_POOL)


async def test_connection_resets_cause_no_loss_and_no_crash(
    proxied_stack: Callable[[], tuple[ProxiedStack, ToxiproxyClient]],
) -> None:
    stack, toxiproxy = proxied_stack()
    await stack.start_proxied_pool()
    accepted = stack.invoke_events("slow", 40, seconds=0.3)
    await _first_runs_done(stack, PROCESSES)

    # Three bursts: each connection is reset (TCP RST) 100 ms after it carries data, so commands
    # die mid-flight, some after Redis applied them (an ambiguous commit the worker must not redo).
    for burst in range(3):
        with toxiproxy.toxic(PROXY, ResetPeer(f"reset-{burst}", timeout_ms=100)):
            wait_briefly(2.0)
        wait_briefly(1.0)

    # A reset can cut an acknowledgement off after Redis applied it: what was held may run twice.
    await _settle_and_check(stack, accepted, "connection resets", duplicates_bound=HELD_PER_POOL)


async def test_silent_partition_hangs_no_worker(
    proxied_stack: Callable[[], tuple[ProxiedStack, ToxiproxyClient]],
) -> None:
    """A partition that drops packets instead of refusing them (a dead node, a network policy, a
    cable): nothing answers and nothing closes. A worker blocked on such a read must give up (a
    socket timeout) and reconnect once the path is back, or it hangs forever while its process lives."""
    stack, toxiproxy = proxied_stack()
    await stack.start_proxied_pool()
    await stack.start_direct_pool()
    accepted = stack.invoke_events("slow", 32, seconds=0.5)
    await _first_runs_done(stack, 2 * PROCESSES)

    silence = [Timeout(f"silence-{stream}", stream=stream, timeout_ms=0) for stream in ("upstream", "downstream")]
    for toxic in silence:
        toxiproxy.add_toxic(PROXY, toxic)
    wait_briefly(3 * HEARTBEAT_TTL_SECONDS)
    for toxic in silence:
        toxiproxy.remove_toxic(PROXY, toxic.name)

    await _proxied_pool_back_at_work(stack, within=20)
    await _settle_and_check(stack, accepted, "silent partition", duplicates_bound=HELD_PER_POOL)
