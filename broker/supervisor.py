"""`headwater poll`: one asyncio process running a poller for every enabled event source mapping.

All pollers live in one task group. Shutdown has two phases: SIGTERM (or SIGINT) stops every
poller from reading, and the batches already read finish and settle within the grace period;
after it the rest is cancelled, and a batch cut off that way is simply never acknowledged, so its
records come back from the source. A second signal changes nothing.

SIGHUP re-reads the configuration file: a new mapping starts, a mapping turned `Enabled: false`
stops polling once its in-flight batches settle (`Disabling` → `Disabled`), a changed mapping (or
a change to its function) is drained and started again, a removed one is drained and forgotten.
A file that no longer validates is reported and ignored; the running mappings carry on.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aioboto3
from prometheus_client import REGISTRY
from redis import Redis
from redis import asyncio as redis_async

from broker import metrics
from broker.config import Config, load_config
from broker.destinations.base import DeliveryContext
from broker.errors import ConfigError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.mapping_runner import MappingRunner, Services
from broker.mapping_state import MappingStates, State
from broker.model import Invocation, InvocationType
from broker.queue import InvocationQueue
from broker.sender import Sender

HEARTBEAT_SECONDS = 1.0
STALLED_AFTER_SECONDS = 10.0
log = get_logger(__name__)


class Supervisor:
    def __init__(self, config_path: str | Path | None, redis_url: str, grace_seconds: float = 30.0) -> None:
        self.config_path = config_path
        self.redis_url = redis_url
        self.grace_seconds = grace_seconds
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()
        self._runners: dict[str, tuple[MappingRunner, asyncio.Task[None]]] = {}
        self._disabled: set[str] = set()
        self._alive_at = time.monotonic()
        self._group: asyncio.TaskGroup | None = None

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: no new reads; in-flight batches settle", grace_seconds=self.grace_seconds)
            self._stopping.set()

    def reload(self) -> None:
        self._reload.set()

    def healthy(self) -> bool:
        """For /healthz (another thread): not stopping, and the event loop is turning."""
        return not self._stopping.is_set() and time.monotonic() - self._alive_at < STALLED_AFTER_SECONDS

    async def run(self, metrics_port: int | None = None) -> None:
        """Run every enabled mapping until `stop()`; returns once all batches settled or were cut off."""
        config = load_config(self.config_path)
        server = metrics.serve(metrics_port, REGISTRY, self.healthy) if metrics_port is not None else None
        services, queue = self._open(config)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                heartbeat = group.create_task(self._heartbeat())
                await self._apply(config, services)
                await self._serve(services)
                await self._drain()
                heartbeat.cancel()
        finally:
            await services.sender.close()
            await services.redis.aclose()
            queue.redis.close()
            if server is not None:
                server.shutdown()
            log.info("poller process stopped")

    async def serve(self, metrics_port: int | None = None) -> None:
        """`run`, with SIGTERM and SIGINT wired to `stop` and SIGHUP to `reload` (the CLI process)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.run(metrics_port)

    def _open(self, config: Config) -> tuple[Services, InvocationQueue]:
        redis = redis_async.from_url(self.redis_url)
        queue = InvocationQueue(Redis.from_url(self.redis_url))
        session = aioboto3.Session()

        async def enqueue_event(function_name: str, body: str) -> None:
            """A `arn:aws:lambda:...:function:NAME` destination: an async invocation of NAME."""
            invocation = Invocation(function_name, body, InvocationType.EVENT, trigger="async")
            await asyncio.to_thread(queue.enqueue, invocation)
            metrics.ASYNC_RECEIVED.labels(function_name).inc()

        delivery = DeliveryContext(redis=redis, aws_session=session, enqueue_event=enqueue_event)
        sender, states = Sender(self.redis_url), MappingStates(redis)
        return Services(config.headwater, sender, states, redis, session, delivery), queue

    async def _serve(self, services: Services) -> None:
        while not self._stopping.is_set():
            stopped = asyncio.ensure_future(self._stopping.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stopped, reload}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stopping.is_set():
                self._reload.clear()
                await self._reload_config(services)

    async def _reload_config(self, services: Services) -> None:
        try:
            config: Config | ConfigError = load_config(self.config_path)
        except ConfigError as error:
            config = error
        if isinstance(config, ConfigError):
            log.error("configuration reload refused; keeping the running mappings", error=config.message)
            return
        log.info("configuration reloaded", mappings=len(config.event_source_mappings))
        await self._apply(config, services)

    async def _apply(self, config: Config, services: Services) -> None:
        """Make the running pollers match `config`."""
        wanted = {mapping.uuid: mapping for mapping in config.event_source_mappings}
        for uuid, (runner, task) in list(self._runners.items()):
            mapping = wanted.get(uuid)
            if mapping is None:
                runner.stop()
                self._spawn(self._forget(runner, task, services))
            elif not mapping.enabled:
                await runner.disable()
            elif (mapping, config.function(mapping.function_name)) != (runner.mapping, runner.function):
                runner.stop()
                self._start(mapping, config, services, previous=task)
        for mapping in config.event_source_mappings:
            if mapping.enabled and mapping.uuid not in self._runners:
                self._start(mapping, config, services)
            elif not mapping.enabled and mapping.uuid not in {*self._runners, *self._disabled}:
                await services.states.transition(mapping, State.DISABLED)
            if mapping.enabled:
                self._disabled.discard(mapping.uuid)
            else:
                self._disabled.add(mapping.uuid)
        for uuid in self._disabled - set(wanted):
            self._disabled.discard(uuid)
            await services.states.forget_uuid(uuid)

    def _start(
        self,
        mapping: EventSourceMapping,
        config: Config,
        services: Services,
        previous: asyncio.Task[None] | None = None,
    ) -> None:
        function = config.function(mapping.function_name)
        assert function is not None, "the configuration model checks every mapping's FunctionName"
        runner = MappingRunner(mapping, function, services)
        task = self._spawn(self._run_after(previous, runner))
        self._runners[mapping.uuid] = (runner, task)
        task.add_done_callback(lambda done: self._forget_runner(mapping.uuid, done))

    def _forget_runner(self, uuid: str, task: asyncio.Task[None]) -> None:
        if uuid in self._runners and self._runners[uuid][1] is task:
            del self._runners[uuid]

    @staticmethod
    async def _run_after(previous: asyncio.Task[None] | None, runner: MappingRunner) -> None:
        """A changed mapping starts again only once its previous poller has settled everything."""
        if previous is not None:
            await asyncio.wait({previous})
        await runner.run()

    @staticmethod
    async def _forget(runner: MappingRunner, task: asyncio.Task[None], services: Services) -> None:
        await asyncio.wait({task})
        await services.states.forget(runner.mapping)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._group is not None, "tasks are spawned only while run() holds the task group"
        return self._group.create_task(coroutine)

    async def _drain(self) -> None:
        """Phase two of shutdown: wait out the grace period, then cancel what is still running."""
        for runner, _ in self._runners.values():
            runner.stop()
        tasks = {task for _, task in self._runners.values()}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.grace_seconds)
        if late:
            unsettled = sum(runner.in_flight for runner, task in self._runners.values() if task in late)
            log.warning("grace period over: unsettled batches are left to come back", batches=unsettled)
            for task in late:
                task.cancel()

    async def _heartbeat(self) -> None:
        while True:
            self._alive_at = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)
