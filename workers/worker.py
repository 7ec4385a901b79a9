"""One worker process: claim jobs, run them, complete them, and stop cleanly.

Shutdown has two phases. `stop()` (SIGTERM) stops claiming; the running invocation may finish
within the grace period and is completed; jobs claimed ahead are handed back untouched. After
the grace period the running invocation is cut off and handed back too (it counts as an attempt).
Calling `stop()` twice is harmless. A background thread renews the lease, promotes due retries
and recovers the jobs of workers whose lease lapsed, function by function (each function's keys
are one slot of a Redis Cluster: see `broker.queue`).

Redis may be away at any moment (restart, failover, out of memory, a partition): every call to it
is retried with backoff, never allowed to crash the process. Completion is fenced and idempotent
(see `broker.queue`), so retrying it after an ambiguous failure writes nothing twice, and a
completion refused because the lease lapsed meanwhile leaves the job to its new owner.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from broker import connection, invocation_records, keys, metrics
from broker.backoff import Backoff
from broker.concurrency import ConcurrencyLimiter
from broker.config import Config
from broker.connection import StoreError
from broker.errors import StoreUnavailable
from broker.function_overrides import FunctionOverrides, OverridesView
from broker.invocation import InvocationType
from broker.layout_migration import carry_over_jobs, migrate_previous_layout
from broker.logs import get_logger
from broker.queue import Claim, InvocationQueue
from workers.delivery import Deliveries
from workers.invoke import Followup, Invoker
from workers.outcomes import OutcomeRouter
from workers.runtime import AbortedError, Runtime

HEARTBEAT_SECONDS = 0.5
IDLE_WAIT_SECONDS = 1.0
STORE_RETRY_MAX_SECONDS = 5.0
QUARANTINED = Followup()  # what `_handle` returns for a job it set aside: nothing to commit
MAX_STARTS = 5  # a request begun this often without completing is quarantined (events spend retries)
log = get_logger(__name__)
T = TypeVar("T")


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
        settings = config.headwater
        self.redis = connection.connect(redis_url)
        self.queue = InvocationQueue(
            self.redis,
            settings.worker_heartbeat_ttl_seconds,
            settings.durable_replicas,
            settings.durable_wait_timeout_ms,
        )
        self._deliveries = Deliveries(redis_url, self.queue)

        def arn(name: str) -> str:
            return invocation_records.function_arn(settings.region, settings.account_id, name)

        self._runtime = Runtime(arn, uuid.uuid4().hex, settings.sandbox_environment_pass_through)
        router = OutcomeRouter(self._deliveries.send, arn)
        overrides = OverridesView(FunctionOverrides(self.redis))  # settings put through the API, ~1 s fresh
        self._invoker = Invoker(config, ConcurrencyLimiter(self.redis), self._runtime, router, overrides)
        self._stop_requested_at: float | None = None
        self._busy = False
        self._stopped = threading.Event()
        self._lease_lost = threading.Event()  # set by housekeeping: prefetched claims are no longer ours
        self._registered = False
        self._found_nothing = False  # the last claim came back empty: the next one waits for work first

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
        metrics.WORKERS.labels("idle").set(1)
        metrics.declare_functions(
            (f.function_name, f.reserved_concurrent_executions)
            for f in self.config.functions
            if f.function_name in self.function_names
        )
        self._store(lambda: migrate_previous_layout(self.redis), "migrate", until=lambda: self.stopping)
        if self._store(self._renew_lease, "register", until=lambda: self.stopping) is None:
            self._runtime.close()
            self._deliveries.close()
            return
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
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
            if self._lease_lost.is_set():
                claimed, started = self._still_held(claimed, started)
            if not claimed:
                claimed = self._claim()
                started = bool(claimed)
                continue
            claim = claimed.pop(0)
            followup = self._handle(claim)
            if followup is None:  # cut off at the end of the grace period: handed back on exit
                return
            next_claim = claimed[0] if claimed and not self.stopping else None
            next_starts = self._complete(claim, next_claim, followup, expect_applied=followup is not QUARANTINED)
            started = next_claim is not None and next_starts is not None
            if next_claim is not None and next_starts is None:  # handed back meanwhile: not ours to run
                claimed = []
            elif next_claim is not None and next_starts is not None:
                claimed[0] = Claim(next_claim.entry, next_claim.invocation, next_starts)

    def _still_held(self, claimed: list[Claim], started: bool) -> tuple[list[Claim], bool]:
        """After a lapsed lease, keep only the prefetched claims the processing list still holds
        (the others were handed back and now belong to other workers)."""
        self._lease_lost.clear()
        held = self._store(lambda: self.queue.held(self.id, self.function_names), "held", until=lambda: self.stopping)
        if held is None:
            return [], False
        kept = [claim for claim in claimed if claim.entry in held]
        if len(kept) < len(claimed):
            log.warning("lease had lapsed: prefetched jobs were handed back to others", count=len(claimed) - len(kept))
        return kept, started and bool(kept) and kept[0] is claimed[0]

    def _handle(self, claim: Claim) -> Followup | None:
        """Run one claimed job; while Redis is away (concurrency leases), wait and try again.

        A job that breaks the worker itself, or that was begun too often without ever completing
        (it kills whoever runs it), is quarantined with its reason instead of stopping the queue."""
        if claim.starts > MAX_STARTS and claim.invocation.invocation_type is not InvocationType.EVENT:
            self._quarantine(claim, f"begun {claim.starts} times without completing: it may kill its worker")
            return QUARANTINED
        while True:
            try:
                return self._invoker.handle(claim, self._past_grace)
            except AbortedError:
                log.warning(
                    "grace period over: invocation cut off and handed back", request_id=claim.invocation.request_id
                )
                return None
            except (StoreError, StoreUnavailable) as error:
                if self._past_grace():
                    return None
                self._note_store_error("run", error)
                time.sleep(IDLE_WAIT_SECONDS)
            except Exception as error:  # a bug met by one job must stop that job only
                log.exception("job failed inside the worker; quarantined", request_id=claim.invocation.request_id)
                self._quarantine(claim, f"the worker failed on it: {type(error).__name__}: {error}")
                return QUARANTINED

    def _quarantine(self, claim: Claim, reason: str) -> None:
        moved = self._store(lambda: self.queue.quarantine(self.id, claim.entry, reason), "quarantine", self._past_grace)
        if moved:
            metrics.QUARANTINED.labels(keys.function_of_queue(keys.split_entry(claim.entry)[0])).inc()
        else:
            metrics.FENCED.labels("quarantine").inc()

    def _claim(self) -> list[Claim]:
        def claim() -> list[Claim]:
            wait = IDLE_WAIT_SECONDS if self._found_nothing else 0.0  # an idle worker waits for a wake token
            claimed = self.queue.claim(self.id, self.function_names, self.prefetch, wait_seconds=wait)
            self._found_nothing = not claimed.claims and not claimed.lease_lost
            for function_name in claimed.quarantined:
                metrics.QUARANTINED.labels(function_name).inc()
                log.error(
                    "undecodable job moved to quarantine; see `headwater quarantine list`", function=function_name
                )
            if claimed.lease_lost:  # for some function: renew; what the other functions gave is ours
                self._renew_lease()
            self._mark_busy(bool(claimed.claims))
            return claimed.claims

        return self._store(claim, "claim", until=lambda: self.stopping) or []

    def _mark_busy(self, busy: bool) -> None:
        """The pool's busy/idle gauge, written only when it changes (each write is a file write)."""
        if busy != self._busy:
            self._busy = busy
            metrics.WORKERS.labels("busy").set(int(busy))
            metrics.WORKERS.labels("idle").set(int(not busy))

    def _complete(
        self, claim: Claim, next_claim: Claim | None, followup: Followup, expect_applied: bool = True
    ) -> int | None:
        """Commit the outcome, retrying through any Redis fault (safe: the commit is fenced and
        idempotent). Returns the next prefetched job's start count, or None if it is not ours."""

        def commit() -> int | None:
            completion = self.queue.complete(self.id, claim, next_claim, followup.enqueue, followup.reply)
            if expect_applied and not completion.applied:
                metrics.FENCED.labels("complete").inc()
                log.warning(
                    "completion not applied: the job had been handed back (or this commit already landed); "
                    "it may run again",
                    request_id=claim.invocation.request_id,
                )
            return completion.next_starts

        committed = self._store(lambda: (commit(),), "complete", until=self._past_grace)
        if committed is None:
            log.error("could not complete before the grace period ended; the job will run again")
            return None
        return committed[0]

    def _store(self, call: Callable[[], T], operation: str, until: Callable[[], bool]) -> T | None:
        """Call Redis until it answers, backing off through every kind of Redis fault; None if
        `until()` turned true first."""
        backoff = Backoff(0.1, STORE_RETRY_MAX_SECONDS, jitter=0.5)
        while True:
            try:
                return call()
            except (StoreError, StoreUnavailable) as error:
                self._note_store_error(operation, error)
                if until():
                    return None
                self._stopped.wait(backoff.next())

    def _note_store_error(self, operation: str, error: Exception) -> None:
        metrics.STORE_ERRORS.labels(type(error).__name__).inc()
        log.warning("Redis unavailable; retrying", operation=operation, error=f"{type(error).__name__}: {error}")

    def _renew_lease(self) -> bool:
        lease = self.queue.heartbeat(self.id, self.function_names)
        if lease.graced:
            log.warning("Redis was away: every worker's lease got a grace period", leases=lease.graced)
        if not lease.renewed and self._registered:
            metrics.LEASES_LOST.inc()
            self._lease_lost.set()
            log.warning("this worker's lease had lapsed; its jobs were handed back and may run twice")
        self._registered = True
        return True

    def _release_everything(self) -> None:
        try:
            handed_back = self.queue.hand_back(self.id, self.function_names)
            self.queue.retire(self.id, self.function_names)
            if handed_back:
                log.info("handed back unfinished jobs", count=handed_back)
        except (StoreError, StoreUnavailable) as error:
            log.error("could not hand jobs back; they return when this worker's lease lapses", error=str(error))
        self._runtime.close()
        self._deliveries.close()
        log.info("worker stopped", worker_id=self.id)

    def _housekeeping(self) -> None:
        ttl = self.config.headwater.worker_heartbeat_ttl_seconds
        last_recovery = 0.0
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self.queue.promote_due(self.function_names)
                if time.monotonic() - last_recovery > ttl / 3:
                    last_recovery = time.monotonic()
                    carry_over_jobs(self.redis, self.function_names)  # an old producer's jobs (rolling upgrade)
                    recovered = self.queue.recover_dead_workers(self.function_names)
                    if recovered:
                        log.warning("recovered jobs of a dead worker", count=recovered)
            except (StoreError, StoreUnavailable) as error:
                self._note_store_error("housekeeping", error)
