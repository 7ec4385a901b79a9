"""`headwater poll`: one asyncio process running a poller for every enabled event source mapping.

All pollers live in one task group. Shutdown has two phases: SIGTERM (or SIGINT) stops every
poller from reading, and the batches already read finish and settle within the grace period;
after it the rest is cancelled, and a batch cut off that way is simply never acknowledged, so its
records come back from the source. A second signal changes nothing.

SIGHUP re-reads the configuration file: a new mapping starts, a mapping turned `Enabled: false`
stops polling once its in-flight batches settle (`Disabling` → `Disabled`), a changed mapping (or
a change to its function) is drained and started again, a removed one is drained and forgotten.
A file that no longer validates is reported and ignored; the running mappings carry on.

Mappings created through the API (`broker.mapping_store`) run beside the file's, the file winning
any clash of UUID or identity. No signal is needed for them: every few seconds the store's
generation counter is read (one GET), and when it moved the stored mappings are re-read and
applied exactly as a reload applies the file's. If Redis cannot be read, the last stored mappings
read keep running and the next check tries again.

The process holds two Redis clients, both from `broker.connection` (so any URL it accepts, Sentinel
included, works here): a synchronous one for the invocation queue and the stored mappings, and an
asyncio one for mapping states and destinations. (The sender opens its own pair.)
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

from broker import connection, metrics
from broker.config import Config, load_config
from broker.connection import StoreError
from broker.destinations.base import DeliveryContext
from broker.errors import ConfigError
from broker.layout_migration import migrate_previous_layout
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.mapping_runner import MappingRunner, Services
from broker.mapping_state import MappingStates, State, source_of
from broker.mapping_store import MappingStore, StoredMapping, combined
from broker.queue import InvocationQueue
from broker.sender import Sender
from broker.sources.base import Lingering

HEARTBEAT_SECONDS = 1.0
STALLED_AFTER_SECONDS = 10.0
STORE_CHECK_SECONDS = 2.0  # how often the stored mappings' generation is read: the API's changes apply this fast
# A synchronous call runs on a worker thread: a Redis that stops answering must not hold it forever.
SOCKET_TIMEOUT_SECONDS = 5.0
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
        self._store_changed = asyncio.Event()
        self._store: MappingStore | None = None
        self._store_generation: int | None = None  # None: not read yet, or the last read failed
        self._stored: dict[str, StoredMapping] = {}
        self._file_config: Config | None = None

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
        metrics.declare_build()
        server = metrics.serve(metrics_port, REGISTRY, self.healthy) if metrics_port is not None else None
        services, queue = self._open(config)
        try:
            migrate_previous_layout(queue.redis)  # before any shard lease or stored mapping is read
        except StoreError as error:  # Redis away at start: the workers carry the jobs over; checkpoints wait
            log.error("could not move the previous key layout's data", error=str(error))
        self._store = MappingStore(queue.redis)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                heartbeat = group.create_task(self._heartbeat())
                await self._apply(await self._with_stored(config), services)
                watcher = group.create_task(self._watch_store())
                await self._serve(services)
                watcher.cancel()
                await self._drain(services.lingering)
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
        """The process's clients (see the module docstring) and what the mappings share through them."""
        redis = connection.connect_async(self.redis_url)
        queue = InvocationQueue(connection.connect(self.redis_url, socket_timeout=SOCKET_TIMEOUT_SECONDS))
        session = aioboto3.Session()
        delivery = DeliveryContext(redis=redis, aws_session=session, queue=queue)
        sender, states = Sender(self.redis_url), MappingStates(redis)
        return Services(config.headwater, sender, states, redis, session, delivery, Lingering()), queue

    async def _serve(self, services: Services) -> None:
        while not self._stopping.is_set():
            events = (self._stopping, self._reload, self._store_changed)
            waits = {asyncio.ensure_future(event.wait()) for event in events}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if self._stopping.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self._store_changed.clear()
                await self._reload_config(services)
            elif self._store_changed.is_set():
                self._store_changed.clear()
                await self._apply_stored(services)

    async def _reload_config(self, services: Services) -> None:
        try:
            config: Config | ConfigError = load_config(self.config_path)
        except ConfigError as error:
            config = error
        if isinstance(config, ConfigError):
            log.error("configuration reload refused; keeping the running mappings", error=config.message)
            return
        log.info("configuration reloaded", mappings=len(config.event_source_mappings))
        await self._apply(await self._with_stored(config), services)

    async def _with_stored(self, config: Config) -> Config:
        """The file's `config` with the stored mappings added (the last ones read if Redis is away)."""
        self._file_config = config
        assert self._store is not None, "the store is opened by run()"
        store = self._store
        try:
            generation = await asyncio.to_thread(store.generation)
            self._stored = await asyncio.to_thread(store.load)
        except StoreError as error:
            log.warning("cannot read the stored mappings; the last ones read keep running", error=str(error))
            self._store_generation = None
        else:
            self._store_generation = generation
        return combined(config, self._stored)

    async def _apply_stored(self, services: Services) -> None:
        """The stored mappings changed (through the API): apply them with the file's last config."""
        assert self._file_config is not None, "run() applies the file first"
        config = await self._with_stored(self._file_config)
        log.info("stored event source mappings changed", mappings=len(self._stored))
        try:
            await self._apply(config, services)
        except StoreError as error:
            log.warning("could not apply the stored mappings; retrying at the next check", error=str(error))
            self._store_generation = None

    async def _watch_store(self) -> None:
        """Every few seconds, one GET: has any mapping been created, changed or deleted?"""
        assert self._store is not None, "the store is opened by run()"
        store = self._store
        while True:
            await asyncio.sleep(STORE_CHECK_SECONDS)
            try:
                generation = await asyncio.to_thread(store.generation)
            except StoreError as error:
                log.warning("cannot check the stored mappings; retrying", error=str(error))
                continue
            if generation != self._store_generation:
                self._store_changed.set()

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
        metrics.forget_mapping(mapping.uuid)  # a changed mapping may have a new function or source
        metrics.declare_mapping(mapping.uuid, mapping.function_name, mapping.source_kind, source_of(mapping))
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
        metrics.forget_mapping(runner.mapping.uuid)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._group is not None, "tasks are spawned only while run() holds the task group"
        return self._group.create_task(coroutine)

    async def _drain(self, lingering: Lingering) -> None:
        """Phase two of shutdown: wait out the grace period, then cancel what is still running
        (stopped sources' clean-up included)."""
        for runner, _ in self._runners.values():
            runner.stop()
        deadline = time.monotonic() + self.grace_seconds
        tasks = {task for _, task in self._runners.values()}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.grace_seconds)
            if late:
                unsettled = sum(runner.in_flight for runner, task in self._runners.values() if task in late)
                log.warning("grace period over: unsettled batches are left to come back", batches=unsettled)
                for task in late:
                    task.cancel()
        await lingering.finish(deadline - time.monotonic())

    async def _heartbeat(self) -> None:
        while True:
            self._alive_at = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)
