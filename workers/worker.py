"""One worker process: claim jobs, run them, acknowledge them, and stop cleanly.

Shutdown has two phases. `stop()` (SIGTERM) stops claiming; the running invocation may finish
within the grace period and is acknowledged; jobs claimed ahead are handed back untouched. After
the grace period the running invocation is cut off and handed back too (it counts as an attempt).
Calling `stop()` twice is harmless. A background thread keeps the heartbeat, promotes due retries
and recovers the jobs of workers whose heartbeat lapsed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker import metrics, records
from broker.concurrency import ConcurrencyLimiter
from broker.config import Config
from broker.logs import get_logger
from broker.queue import Claim, InvocationQueue
from workers.delivery import Deliveries
from workers.invoke import Followup, Invoker
from workers.outcomes import OutcomeRouter
from workers.runtime import AbortedError, Runtime

HEARTBEAT_SECONDS = 0.5
IDLE_WAIT_SECONDS = 1.0
log = get_logger(__name__)


class Worker:
    def __init__(
        self,
        config: Config,
        redis_url: str,
        function_names: list[str] | None = None,
        prefetch: int = 8,
        grace_seconds: float = 30.0,
    ) -> None:
        self.config = config
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.function_names = function_names or [f.function_name for f in config.functions]
        self.prefetch = prefetch
        self.grace_seconds = grace_seconds
        self.redis = Redis.from_url(redis_url, health_check_interval=30)
        self.queue = InvocationQueue(self.redis)
        self._deliveries = Deliveries(redis_url, self.queue)
        settings = config.headwater

        def arn(name: str) -> str:
            return records.function_arn(settings.region, settings.account_id, name)

        self._runtime = Runtime(arn, worker_tag=uuid.uuid4().hex)
        router = OutcomeRouter(self._deliveries.send, arn)
        self._invoker = Invoker(config, ConcurrencyLimiter(self.redis), self._runtime, router)
        self._stop_requested_at: float | None = None
        self._busy = False
        self._stopped = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            log.info("stopping: no new work; finishing the current invocation", grace_seconds=self.grace_seconds)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def stopping(self) -> bool:
        return self._stop_requested_at is not None

    def _past_grace(self) -> bool:
        started = self._stop_requested_at
        return started is not None and time.monotonic() - started > self.grace_seconds

    def run(self) -> None:
        """Serve until stopped; on return nothing is held by this worker."""
        log.info("worker started", worker_id=self.id, functions=self.function_names)
        self.queue.heartbeat(self.id, self.config.headwater.worker_heartbeat_ttl_seconds)
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        metrics.WORKERS.labels("idle").set(1)
        metrics.declare_functions(
            (f.function_name, f.reserved_concurrent_executions)
            for f in self.config.functions
            if f.function_name in self.function_names
        )
        try:
            self._serve()
        finally:
            self._stopped.set()
            housekeeping.join(timeout=5)
            self._release_everything()

    def _serve(self) -> None:
        claimed: list[Claim] = []
        started = False  # whether claimed[0] is already marked started (it then runs even when stopping)
        while not self.stopping or started:
            if not claimed:
                claimed = self._claim()
                started = bool(claimed)
                continue
            claim = claimed.pop(0)
            try:
                followup = self._invoker.handle(claim, self._past_grace)
            except AbortedError:
                log.warning(
                    "grace period over: invocation cut off and handed back", request_id=claim.invocation.request_id
                )
                return
            next_claim = claimed[0] if claimed and not self.stopping else None
            self._complete(claim, next_claim, followup)
            started = next_claim is not None

    def _claim(self) -> list[Claim]:
        try:
            claimed = self.queue.claim(self.id, self.function_names, self.prefetch)
            self._mark_busy(bool(claimed))
            if not claimed:
                self.queue.wait_for_work(self.function_names, IDLE_WAIT_SECONDS)
        except RedisConnectionError as error:
            log.warning("Redis unreachable; retrying", error=str(error))
            time.sleep(IDLE_WAIT_SECONDS)
            return []
        return claimed

    def _mark_busy(self, busy: bool) -> None:
        """The pool's busy/idle gauge, written only when it changes (each write is a file write)."""
        if busy != self._busy:
            self._busy = busy
            metrics.WORKERS.labels("busy").set(int(busy))
            metrics.WORKERS.labels("idle").set(int(not busy))

    def _complete(self, claim: Claim, next_claim: Claim | None, followup: Followup) -> None:
        """Acknowledge, retrying through a Redis outage: the outcome must not be lost or doubled."""
        while not self._past_grace():
            try:
                self.queue.complete(self.id, claim, next_claim, followup.enqueue, followup.reply)
            except RedisConnectionError as error:
                log.warning("Redis unreachable while acknowledging; retrying", error=str(error))
                time.sleep(IDLE_WAIT_SECONDS)
            else:
                return
        log.error("could not acknowledge before the grace period ended; the job will run again")

    def _release_everything(self) -> None:
        try:
            handed_back = self.queue.hand_back(self.id)
            self.queue.retire(self.id)
            if handed_back:
                log.info("handed back unfinished jobs", count=handed_back)
        except RedisError as error:
            log.error("could not hand jobs back; they return when this worker's heartbeat lapses", error=str(error))
        self._runtime.close()
        self._deliveries.close()
        log.info("worker stopped", worker_id=self.id)

    def _housekeeping(self) -> None:
        ttl = self.config.headwater.worker_heartbeat_ttl_seconds
        last_recovery = 0.0
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.queue.heartbeat(self.id, ttl)
                self.queue.promote_due()
                if time.monotonic() - last_recovery > ttl / 3:
                    last_recovery = time.monotonic()
                    recovered = self.queue.recover_dead_workers()
                    if recovered:
                        log.warning("recovered jobs of a dead worker", count=recovered)
            except RedisError as error:
                log.warning("housekeeping could not reach Redis", error=str(error))
