"""The worker pool daemon: N worker processes, restarted if they die, drained on SIGTERM.

The pool process runs no invocation itself. It owns the metrics directory its workers write to
(prometheus-client's multiprocess mode) and serves the sum on `/metrics`, with `/healthz` telling
whether every worker slot is alive.

Signals, as a daemon under systemd or Kubernetes meets them:
- SIGTERM or SIGINT drains: workers stop taking work, finish what runs within the grace period and
  hand back the rest. It cuts short a restart backoff: a slot waiting to restart stays empty.
- SIGHUP is logged and ignored, by the pool and its workers. There is nothing to reload in place (a
  new configuration takes a restart, which a rollout does), and the hangup of the terminal a pool was
  started from must not take it down with its workers mid-invocation.
- The pool's death, however it dies (SIGKILL, the OOM killer): the kernel sends each worker SIGTERM
  (`PR_SET_PDEATHSIG`), and it drains as above instead of running on unsupervised and unseen.

A worker that dies is restarted after a backoff (1 s, doubling up to 30 s) that starts over once a
worker has stayed up for a minute: a crash loop does not spin, and a rare crash is back within a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import CollectorRegistry, multiprocess

from broker import logs, metrics
from broker.backoff import RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS, Backoff
from broker.config import Config, parse_config
from broker.connection import connect
from broker.logs import get_logger
from broker.queue import InvocationQueue
from workers.worker import Worker  # a spawned worker imports this with the metrics directory already set

SUPERVISE_EVERY_SECONDS = 0.5
STABLE_AFTER_SECONDS = 60.0  # a worker up this long was healthy: its next death starts the backoff over
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
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
    pool_pid: int


def worker_main(settings: WorkerSettings) -> None:
    """Entry point of one worker process."""
    logs.configure(settings.log_level)
    signal.signal(signal.SIGHUP, _ignore_hangup)
    _die_with_pool(settings.pool_pid)
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


def _die_with_pool(pool_pid: int) -> None:
    """Have the kernel send this process SIGTERM when the pool dies, so it drains instead of running
    on orphaned. Until the worker installs its handlers, that SIGTERM simply ends the process."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("worker not tied to its pool's life (prctl failed)", errno=ctypes.get_errno())
    if os.getppid() != pool_pid:  # the pool died before the request took effect: no signal will come
        raise SystemExit(0)


def _ignore_hangup(signum: int, frame: FrameType | None) -> None:
    """SIGHUP in a worker does nothing. A handler rather than SIG_IGN: an ignored signal stays
    ignored across exec, in every sandbox and every process a handler starts."""


class _Wakeup:
    """A sleep that a signal handler cuts short: a self-pipe the handler writes one byte to.

    Not `threading.Event`: its `set` takes a lock that `wait` holds for a moment on the same (main)
    thread, so setting it from a signal handler that lands in that moment deadlocks the process.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def wait(self, seconds: float) -> None:
        readable, _, _ = select.select([self._read], [], [], seconds)
        if readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 4096)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is already pending
            os.write(self._write, b"\0")

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


@dataclass
class _Slot:
    """One worker position: its current process, and when it may be started again after a death."""

    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    crashes: Backoff = field(default_factory=lambda: Backoff(RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS))


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
        self._slots = [_Slot() for _ in range(processes)]
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False
        self._signals: list[int] = []  # received, not yet acted on (handlers only record and wake)
        self._wakeup = _Wakeup()
        self._metrics_directory = tempfile.mkdtemp(prefix="headwater-metrics-")
        self._restarts = 0  # workers that died and were (to be) restarted: headwater_worker_restarts_total

    def stop(self, *_: object) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("pool stopping: draining workers", grace_seconds=self.grace_seconds)
        self._wakeup.set()

    def healthy(self) -> bool:
        return not self._stopping and all(s.process is not None and s.process.is_alive() for s in self._slots)

    def run(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_directory
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        server = self._serve_metrics() if self.metrics_port is not None else None
        try:
            while not self._act_on_signals():
                self._supervise()
                self._wakeup.wait(SUPERVISE_EVERY_SECONDS)
            self._drain()
        finally:
            if server is not None:
                server.shutdown()
            shutil.rmtree(self._metrics_directory, ignore_errors=True)
            self._wakeup.close()
            log.info("pool stopped")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record and wake the loop; logging here could re-enter a write the main thread was making."""
        self._signals.append(signum)
        self._wakeup.set()

    def _act_on_signals(self) -> bool:
        """Act on the signals received since the last call; True once the pool is stopping."""
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("SIGHUP ignored: the pool keeps running (a new configuration takes a restart)")
            else:
                self.stop()
        return self._stopping

    def _supervise(self) -> None:
        now = time.monotonic()
        for index, slot in enumerate(self._slots):
            process = slot.process
            if process is not None and process.is_alive():
                if now - slot.started_at >= STABLE_AFTER_SECONDS:
                    slot.crashes.reset()
                continue
            if process is not None:
                self._bury(index, slot, now)
            if now >= slot.restart_at and not self._stopping:
                self._start(index, slot)

    def _bury(self, index: int, slot: _Slot, now: float) -> None:
        """A worker died: count it and schedule its slot's restart after the backoff."""
        process = slot.process
        assert process is not None
        multiprocess.mark_process_dead(process.pid, self._metrics_directory)  # type: ignore[no-untyped-call]
        slot.process = None
        self._restarts += 1
        delay = slot.crashes.next()
        slot.restart_at = now + delay
        log.error("worker process died; restarting", slot=index, exit_code=process.exitcode, restart_in_seconds=delay)

    def _start(self, index: int, slot: _Slot) -> None:
        # exclude_unset: a field the file left out must stay unset, or a mapping's source rules refuse it
        config_json = self.config.model_dump_json(by_alias=True, exclude_unset=True)
        settings = WorkerSettings(
            config_json,
            self.redis_url,
            self.function_names,
            self.grace_seconds,
            self.prefetch,
            self.log_level,
            pool_pid=os.getpid(),
        )
        process = self._context.Process(target=worker_main, args=(settings,), name="headwater-worker")
        process.start()
        slot.process, slot.started_at = process, time.monotonic()
        log.info("worker process started", slot=index, pid=process.pid)

    def _drain(self) -> None:
        running = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
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
        queue = InvocationQueue(connect(self.redis_url, socket_timeout=2))

        def figures() -> metrics.QueueFigures:
            status = queue.status(self.function_names)
            return metrics.QueueFigures(
                status.queued, status.running, status.scheduled, queue.quarantine_size(self.function_names)
            )

        registry.register(metrics.QueueCollector(figures))
        registry.register(metrics.PoolCollector(lambda: self._restarts))
        assert self.metrics_port is not None
        server = metrics.serve(self.metrics_port, registry, self.healthy)
        log.info("metrics served", port=server.server_address[1])
        return server
