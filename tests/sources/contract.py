"""The behaviour every event source must show, written once and run against each real source.

A source's test module subclasses `SourceContract` and provides a `harness` fixture: an object
that creates the source (`create`), puts records in it (`send`), describes a mapping on it
(`mapping`), says how many records are not acknowledged yet (`unacknowledged`) and checks the
exact event shape (`check_event`). Records are JSON bodies that tell the handler in
`tests/handlers/sources.py` what to do; everything runs for real: the worker pool and killed
pollers are subprocesses, the source is the real service (moto over HTTP, Kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from redis import Redis

from broker import keys
from broker.supervisor import Supervisor
from tests.rig.common import ManagedProcess, make_workdir, remove_workdir
from tests.rig.redis import reply_text
from tests.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.handlers.sources.handle"


def functions(redis_url: str) -> list[dict[str, Any]]:
    """The functions every source test may map to (the shared worker pool serves them all)."""
    environment = {"Variables": {"REDIS_URL": redis_url}}
    return [
        {"FunctionName": "recorder", "Handler": HANDLER, "Timeout": 2, "Environment": environment},
        {"FunctionName": "recorder-alone", "Handler": HANDLER, "Timeout": 2, "Environment": environment,
         "ReservedConcurrentExecutions": 1},
        {"FunctionName": "recorder-quick", "Handler": HANDLER, "Timeout": 1, "Environment": environment},
        {"FunctionName": "recorder-patient", "Handler": HANDLER, "Timeout": 30, "Environment": environment},
    ]  # fmt: skip


class Harness(Protocol):
    """What a source's tests provide to the contract."""

    redelivery_seconds: float  # how long a failed record may take to come back
    retries_after_failure_in_place: bool  # a log source re-sends what follows a failure in its lane
    redelivers_in_order: bool  # whether the service hands back a lane's returned records in order

    async def create(self, *, ordered: bool = False) -> None: ...
    async def send(self, bodies: list[dict[str, Any]], lane: str | None = None) -> None: ...
    def mapping(self, function: str = "recorder", **fields: Any) -> dict[str, Any]: ...
    async def unacknowledged(self) -> int: ...
    def check_event(self, event: dict[str, Any], bodies: list[dict[str, Any]]) -> None: ...


@dataclass
class Stack:
    """Redis, the shared worker pool, the pollers a test starts, and what the handler recorded."""

    redis_url: str
    directory: Path
    env: dict[str, str]
    redis: Redis = field(init=False)
    _supervisors: list[tuple[Supervisor, asyncio.Task[None]]] = field(default_factory=list)
    _processes: list[ManagedProcess] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = Redis.from_url(self.redis_url)

    def namespace(self) -> str:
        name = uuid.uuid4().hex[:10]
        self._namespaces.append(name)
        return name

    def write_config(self, mappings: list[dict[str, Any]], name: str = "headwater.yaml") -> Path:
        path = self.directory / name
        document = {"Functions": functions(self.redis_url), "EventSourceMappings": mappings,
                    "Headwater": {"ThrottleBackoffInitialSeconds": 0.2, "ThrottleBackoffMaxSeconds": 2}}  # fmt: skip
        path.write_text(yaml.safe_dump(document))
        return path

    async def start_poller(self, mappings: list[dict[str, Any]], grace_seconds: float = 10.0) -> Supervisor:
        """A poller process's supervisor, run in this event loop (enough when no process dies)."""
        supervisor = Supervisor(self.write_config(mappings), self.redis_url, grace_seconds)
        task = asyncio.create_task(supervisor.run())
        self._supervisors.append((supervisor, task))
        return supervisor

    def spawn_poller(self, mappings: list[dict[str, Any]], grace_seconds: float = 10.0) -> ManagedProcess:
        """A real `headwater poll` process, for what is about processes (signals, crashes)."""
        config = self.write_config(mappings, f"poller-{len(self._processes)}.yaml")
        argv = [sys.executable, "-m", "broker.cli", "poll", "--config", str(config),
                "--grace-seconds", str(grace_seconds)]  # fmt: skip
        log = self.directory / f"poller-{len(self._processes)}.log"
        process = ManagedProcess("headwater-poll", argv, log, cwd=REPO_ROOT, env=self.env)
        process.start()
        self._processes.append(process)
        return process

    def seen(self, namespace: str) -> list[dict[str, Any]]:
        """Every invocation the handler recorded, in the order they started."""
        entries = [json.loads(item) for item in self.redis.lrange(f"seen:{namespace}", 0, -1)]
        return sorted(entries, key=lambda entry: entry["started"])

    def attempts(self, namespace: str) -> dict[str, int]:
        return {reply_text(key): int(value) for key, value in self.redis.hgetall(f"attempts:{namespace}").items()}

    def started(self, namespace: str) -> int:
        return int(self.redis.llen(f"started:{namespace}"))

    def release(self, namespace: str, count: int = 1) -> None:
        self.redis.rpush(f"release:{namespace}", *["1"] * count)

    async def wait_for(self, condition: Callable[[], Any], within: float = 30.0, what: str = "") -> Any:
        """Poll `condition` (which may return an awaitable) until it is truthy; fail after `within` s."""

        def explain() -> str:
            logs = "".join(path.read_text(errors="replace")[-3000:] for path in self.directory.glob("*.log"))
            return f"{what or condition}\n--- logs ---\n{logs}"

        return await eventually(condition, within, explain)

    async def close(self) -> None:
        for namespace in self._namespaces:  # unblock handlers still waiting, so the pool is free
            self.release(namespace, 5)
        for supervisor, _ in self._supervisors:
            supervisor.stop()
        for _, task in self._supervisors:
            await asyncio.wait_for(task, 30)
        for process in self._processes:
            process.stop(timeout=30)
        self.redis.close()


def bodies(namespace: str, count: int, prefix: str = "m", **per_id: dict[str, Any]) -> list[dict[str, Any]]:
    """`count` bodies `{ns, id}`; `per_id` adds instructions to some (by id)."""
    made = []
    for index in range(1, count + 1):
        identifier = f"{prefix}{index}"
        made.append({"ns": namespace, "id": identifier, **per_id.get(identifier, {})})
    return made


def entry_with(entries: list[dict[str, Any]], identifier: str, attempt: int = 1) -> dict[str, Any]:
    """The invocation that delivered `identifier` for the `attempt`-th time."""
    for entry in entries:
        for seen, count in zip(entry["ids"], entry["attempts"], strict=True):
            if seen == identifier and count == attempt:
                return entry
    raise AssertionError(f"{identifier} was never delivered a {attempt}. time: {entries}")


def kill(process: ManagedProcess, signum: int) -> None:
    assert process.pid is not None
    os.kill(process.pid, signum)


class SourceContract:
    """Subclass with a `harness` fixture; every test here must hold for every source."""

    async def test_the_event_has_lambdas_exact_shape(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        sent = bodies(ns, 2, m1={"keep_event": True})
        await harness.send(sent)
        await stack.start_poller([harness.mapping()])
        entries = await stack.wait_for(lambda: stack.seen(ns), what="an invocation")
        harness.check_event(entries[0]["event"], sent)

    async def test_a_successful_batch_is_acknowledged_once(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 5))
        await stack.start_poller([harness.mapping()])
        await stack.wait_for(lambda: len(stack.attempts(ns)) == 5, what="every record delivered")
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), what="everything acknowledged")
        assert stack.attempts(ns) == {f"m{i}": 1 for i in range(1, 6)}

    async def test_a_function_error_fails_the_whole_batch(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 3, m2={"fail": 1}))
        await stack.start_poller([harness.mapping()])
        failing = await stack.wait_for(lambda: _entry_or_none(stack.seen(ns), "m2"), what="the failing batch")
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), within=harness.redelivery_seconds + 20)
        attempts = stack.attempts(ns)
        assert all(attempts[identifier] >= 2 for identifier in failing["ids"]), (failing, attempts)
        assert set(attempts) == {"m1", "m2", "m3"}

    async def test_partial_batch_response_retries_what_failed(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 4, m3={"report": 1}))
        await stack.start_poller([harness.mapping(FunctionResponseTypes=["ReportBatchItemFailures"])])
        first = await stack.wait_for(lambda: _entry_or_none(stack.seen(ns), "m3"), what="the batch reporting m3")
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), within=harness.redelivery_seconds + 20)
        attempts = stack.attempts(ns)
        assert attempts["m3"] == 2
        position = first["ids"].index("m3")
        assert all(attempts[identifier] == 1 for identifier in first["ids"][:position]), attempts
        if not harness.retries_after_failure_in_place:
            assert all(attempts[identifier] == 1 for identifier in first["ids"][position + 1 :]), attempts

    @pytest.mark.parametrize("answer", ["malformed", "unknown"])
    async def test_a_bad_partial_response_fails_the_whole_batch(
        self, stack: Stack, harness: Harness, answer: str
    ) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 3, m1={"respond": answer}))
        await stack.start_poller([harness.mapping(FunctionResponseTypes=["ReportBatchItemFailures"])])
        first = await stack.wait_for(lambda: _entry_or_none(stack.seen(ns), "m1"), what="the first batch")
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), within=harness.redelivery_seconds + 20)
        attempts = stack.attempts(ns)
        assert all(attempts[identifier] == 2 for identifier in first["ids"]), (first, attempts)

    async def test_order_within_a_lane_survives_failures(self, stack: Stack, harness: Harness) -> None:
        await harness.create(ordered=True)
        ns = stack.namespace()
        for lane in ("a", "b", "c"):
            await harness.send(bodies(ns, 5, prefix=lane, **({"a3": {"report": 1}} if lane == "a" else {})), lane)
        await stack.start_poller([harness.mapping(FunctionResponseTypes=["ReportBatchItemFailures"])])
        await stack.wait_for(lambda: len(stack.attempts(ns)) == 15, what="every record delivered")
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), within=harness.redelivery_seconds + 20)
        entries = stack.seen(ns)
        for lane in ("a", "b", "c"):
            assert _first_deliveries(entries, lane) == [f"{lane}{i}" for i in range(1, 6)], entries
        failed = entry_with(entries, "a3")
        later = failed["ids"][failed["ids"].index("a3") + 1 :]
        retry = entries[entries.index(failed) + 1 :]
        next_a = next(entry for entry in retry if entry["ids"][0].startswith("a"))
        assert all(stack.attempts(ns)[identifier] == 2 for identifier in later), "nothing overtook a3"
        assert stack.attempts(ns)["a1"] == 1
        if harness.redelivers_in_order:
            assert next_a["ids"][0] == "a3", ("the lane resumed at its first failure", entries)

    async def test_nothing_is_acknowledged_before_the_outcome(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 3, m1={"block": True}))
        await stack.start_poller([harness.mapping()])
        await stack.wait_for(lambda: stack.started(ns), what="the handler to start")
        assert await harness.unacknowledged() == 3, "read, running, and not acknowledged"
        stack.release(ns)
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), what="acknowledged after the outcome")
        assert set(stack.attempts(ns).values()) == {1}

    async def test_a_poller_killed_mid_batch_loses_nothing(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 3, m1={"block": True}))
        poller = stack.spawn_poller([harness.mapping()])
        await stack.wait_for(lambda: stack.started(ns), what="the handler to start")
        poller.kill()
        stack.release(ns)
        await stack.wait_for(lambda: len(stack.seen(ns)) >= 1, what="the orphaned batch to finish")
        assert await harness.unacknowledged() == 3, "a dead poller acknowledged nothing"
        stack.spawn_poller([harness.mapping()])
        await stack.wait_for(lambda: _is_zero(harness.unacknowledged()), within=harness.redelivery_seconds + 30)
        assert set(stack.attempts(ns)) == {"m1", "m2", "m3"}

    async def test_sigterm_lets_in_flight_batches_settle(self, stack: Stack, harness: Harness) -> None:
        await harness.create()
        ns = stack.namespace()
        await harness.send(bodies(ns, 2, m1={"block": True}))
        poller = stack.spawn_poller([harness.mapping()], grace_seconds=20)
        await stack.wait_for(lambda: stack.started(ns), what="the handler to start")
        kill(poller, signal.SIGTERM)
        # Records sent before the poller acts on the signal may rightly be read: wait until it has.
        await stack.wait_for(
            lambda: "stopping: no new reads" in poller.log_path.read_text(errors="replace"),
            what="the poller to stop reading",
        )
        await harness.send(bodies(ns, 2, prefix="late"))
        # No sleep: the batch is held in the handler until released, so a poller that stopped without
        # waiting would be gone now; and had it read `late`, they would show in attempts below.
        assert poller.running, "the poller waits for its in-flight batch"
        stack.release(ns)
        await stack.wait_for(lambda: not poller.running, what="the poller to exit after draining")
        assert poller.returncode == 0
        assert await harness.unacknowledged() == 2, "the batch settled; nothing new was read"
        assert set(stack.attempts(ns)) == {"m1", "m2"}


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


def _entry_or_none(entries: list[dict[str, Any]], identifier: str) -> dict[str, Any] | None:
    return next((entry for entry in entries if identifier in entry["ids"]), None)


def _first_deliveries(entries: list[dict[str, Any]], prefix: str) -> list[str]:
    order: list[str] = []
    for entry in entries:
        for identifier in entry["ids"]:
            if identifier.startswith(prefix) and identifier not in order:
                order.append(identifier)
    return order


@contextlib.contextmanager
def session_worker_pool(
    label: str, redis_url: str, served: list[dict[str, Any]], processes: int = 2
) -> Iterator[ManagedProcess]:
    """`headwater worker` serving `served` on `redis_url` for a whole session, prefetch 1: a process
    claims one batch at a time, so two batches run side by side whenever two are waiting."""
    directory = make_workdir(label)
    config = directory / "workers.yaml"
    config.write_text(yaml.safe_dump({"Functions": served}))
    argv = [sys.executable, "-m", "broker.cli", "worker", "--config", str(config),
            "--processes", str(processes), "--prefetch", "1", "--grace-seconds", "5"]  # fmt: skip
    env = {**os.environ, "HEADWATER_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    pool = ManagedProcess("headwater-worker", argv, directory / "worker.log", cwd=REPO_ROOT, env=env)
    pool.start()
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while redis.zcard(keys.workers(served[0]["FunctionName"])) < processes:
        if time.monotonic() > deadline or not pool.running:
            pytest.fail(f"the worker pool did not start:\n{pool.describe_log()}", pytrace=False)
        time.sleep(0.05)
    redis.close()
    try:
        yield pool
    finally:
        pool.stop(timeout=30)
        remove_workdir(directory)
