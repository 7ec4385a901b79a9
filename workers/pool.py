"""The worker pool daemon: N worker processes, restarted if they die, drained on SIGTERM.

The pool process runs no invocation itself. It owns the metrics directory its workers write to
(prometheus-client's multiprocess mode) and serves the sum on `/metrics`, with `/healthz` telling
whether every worker slot is alive.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import CollectorRegistry, multiprocess
from redis import Redis

from broker import keys, logs, metrics
from broker.config import Config, parse_config
from broker.logs import get_logger
from workers.worker import Worker  # a spawned worker imports this with the metrics directory already set

SUPERVISE_EVERY_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 30.0
log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is started with (the spawn method inherits nothing else)."""

    config_json: str
    redis_url: str
    function_names: list[str]
    grace_seconds: float
    prefetch: int
    log_level: str


def worker_main(settings: WorkerSettings) -> None:
    """Entry point of one worker process."""
    logs.configure(settings.log_level)
    config = parse_config(json.loads(settings.config_json))
    worker = Worker(
        config,
        settings.redis_url,
        settings.function_names,
        prefetch=settings.prefetch,
        grace_seconds=settings.grace_seconds,
    )
    worker.install_signal_handlers()
    worker.run()


class Pool:
    def __init__(
        self,
        config: Config,
        redis_url: str,
        *,
        processes: int = 1,
        function_names: list[str] | None = None,
        grace_seconds: float = 30.0,
        prefetch: int = 8,
        metrics_port: int | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self.function_names = function_names or [f.function_name for f in config.functions]
        self.grace_seconds = grace_seconds
        self.prefetch = prefetch
        self.metrics_port = metrics_port
        self.log_level = log_level
        self._slots: list[BaseProcess | None] = [None] * processes
        self._restarts = [0] * processes
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False
        self._metrics_directory = tempfile.mkdtemp(prefix="headwater-metrics-")

    def stop(self, *_: object) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("pool stopping: draining workers", grace_seconds=self.grace_seconds)

    def healthy(self) -> bool:
        return not self._stopping and all(p is not None and p.is_alive() for p in self._slots)

    def run(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_directory
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        server = self._serve_metrics() if self.metrics_port is not None else None
        try:
            while not self._stopping:
                self._supervise()
                time.sleep(SUPERVISE_EVERY_SECONDS)
            self._drain()
        finally:
            if server is not None:
                server.shutdown()
            shutil.rmtree(self._metrics_directory, ignore_errors=True)
            log.info("pool stopped")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _supervise(self) -> None:
        for slot, process in enumerate(self._slots):
            if process is not None and process.is_alive():
                continue
            if process is not None:
                multiprocess.mark_process_dead(process.pid, self._metrics_directory)  # type: ignore[no-untyped-call]
                self._restarts[slot] += 1
                log.error("worker process died; restarting", slot=slot, exit_code=process.exitcode)
                time.sleep(min(RESTART_BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(self._restarts[slot], 6)))
            self._slots[slot] = self._start()

    def _start(self) -> BaseProcess:
        # exclude_unset: a field the file left out must stay unset, or a mapping's source rules refuse it
        config_json = self.config.model_dump_json(by_alias=True, exclude_unset=True)
        settings = WorkerSettings(
            config_json, self.redis_url, self.function_names, self.grace_seconds, self.prefetch, self.log_level
        )
        process = self._context.Process(target=worker_main, args=(settings,), name="headwater-worker")
        process.start()
        return process

    def _drain(self) -> None:
        running = [p for p in self._slots if p is not None and p.is_alive()]
        for process in running:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 10
        for process in running:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killed (its jobs return via heartbeat recovery)")
                process.kill()
                process.join()
            multiprocess.mark_process_dead(process.pid, self._metrics_directory)  # type: ignore[no-untyped-call]

    def _serve_metrics(self) -> ThreadingHTTPServer:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._metrics_directory)  # type: ignore[no-untyped-call]
        redis = Redis.from_url(self.redis_url, socket_timeout=2)

        def depths() -> dict[str, int]:
            pipe = redis.pipeline(transaction=False)
            for name in self.function_names:
                pipe.llen(keys.RQ_QUEUE_KEY_PREFIX + keys.queue_name(name))
            return dict(zip(self.function_names, pipe.execute(), strict=True))

        registry.register(metrics.QueueDepthCollector(depths))
        assert self.metrics_port is not None
        server = metrics.serve(self.metrics_port, registry, self.healthy)
        log.info("metrics served", port=server.server_address[1])
        return server
