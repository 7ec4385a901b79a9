"""Every Prometheus metric Headwater exposes, declared once (names map Lambda's CloudWatch metrics).

Worker pools run several processes; they record through prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set by the pool before its workers start), and the pool serves the
sum. Labels stay bounded: function, trigger, mapping, source kind; never a request or record id.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker import __version__
from broker.connection import StoreError
from broker.settings import get_settings

disable_created_metrics()  # type: ignore[no-untyped-call]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 10800, 21600)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# A read of a source: a few ms when records are waiting, up to a 20 s long poll (SQS) when none are.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30)
UNKNOWN_COMMIT = "unknown"

INVOCATIONS = Counter("headwater_invocations", "Handler runs, successes and function errors.", ["function", "trigger"])
ERRORS = Counter(
    "headwater_invocation_errors",
    "Runs that ended in a function error.",
    ["function", "trigger", "error_type"],
)
THROTTLES = Counter("headwater_throttles", "Invocations refused for lack of concurrency.", ["function", "reason"])
DURATION = Histogram(
    "headwater_invocation_duration_seconds",
    "Handler time per run, init excluded.",
    ["function"],
    buckets=DURATION_BUCKETS,
)
CONCURRENT = Gauge(
    "headwater_concurrent_executions", "Runs in progress now.", ["function"], multiprocess_mode="livesum"
)
COLD_STARTS = Counter("headwater_cold_starts", "Execution environments initialised (INIT phases).", ["function"])
ASYNC_RECEIVED = Counter(
    "headwater_async_events_received", "Events accepted for asynchronous invocation.", ["function"]
)
ASYNC_AGE = Histogram(
    "headwater_async_event_age_seconds",
    "Time from acceptance to each run of an async event.",
    ["function"],
    buckets=AGE_BUCKETS,
)
ASYNC_DROPPED = Counter(
    "headwater_async_events_dropped", "Async events that ended without a successful run.", ["function", "reason"]
)
DEAD_LETTER_ERRORS = Counter(
    "headwater_dead_letter_errors", "Failed writes to a dead-letter queue.", ["function", "target_type"]
)
DESTINATION_FAILURES = Counter(
    "headwater_destination_delivery_failures",
    "Failed writes to an on-success or on-failure destination.",
    ["function", "destination", "target_type"],
)
CONCURRENCY_LIMIT = Gauge(
    "headwater_concurrency_limit", "Reserved concurrency per function.", ["function", "kind"], multiprocess_mode="max"
)
BUILD_INFO = Gauge(
    "headwater_build_info",
    "The running Headwater: its version, and the git commit its image was built from (HEADWATER_COMMIT).",
    ["version", "commit"],
    multiprocess_mode="max",
)
WORKERS = Gauge("headwater_worker_pool_workers", "Worker processes by state.", ["state"], multiprocess_mode="livesum")
QUARANTINED = Counter(
    "headwater_jobs_quarantined",
    "Jobs moved to the quarantine: undecodable, or breaking the worker (see `headwater quarantine list`).",
    ["function"],
)
FENCED = Counter(
    "headwater_fenced_operations",
    "Acknowledgements, completions or quarantines refused because the claim had moved on (its job "
    "was handed back after a lapsed lease; it may run twice, never zero times).",
    ["operation"],
)
LEASES_LOST = Counter(
    "headwater_worker_leases_lost", "Times a live worker found its lease lapsed and its jobs handed back."
)
STORE_ERRORS = Counter(
    "headwater_store_errors",
    "Redis errors met by a process and retried (connection, timeout, OOM, READONLY, LOADING...).",
    ["error"],
)
# Redis errors (redis-py class names) declared at zero: the ones HeadwaterStoreUnavailable tells apart.
DECLARED_STORE_ERRORS = ("ConnectionError", "TimeoutError", "OutOfMemoryError", "ReadOnlyError")
MAPPING_STAGES = (
    *("polled", "filtered_out", "invoked", "failed_invoke", "deleted", "dropped", "on_failure_delivered"),
    "handed_back",  # a batch whose invocation vanished went back to its source, to be read again
    "unreadable",  # a record the source could not decode was skipped (see LastProcessingResult)
)
# Every per-mapping series names its event source mapping by UUID in this label (`headwater_mapping_info`
# joins it to the function and source); the source kind (sqs, kafka, kinesis, dynamodb) is `source_type`.
MAPPING = "mapping"
MAPPING_EVENTS = Counter(
    "headwater_mapping_events",
    "Event source mapping accounting by stage (Lambda's PolledEventCount, InvokedEventCount...).",
    [MAPPING, "source_type", "stage"],
)
POLLER_BATCH_SIZE = Histogram(
    "headwater_poller_batch_size", "Records per batch sent to a function.", [MAPPING], buckets=BATCH_BUCKETS
)
POLLER_CONCURRENT_BATCHES = Gauge(
    "headwater_poller_concurrent_batches",
    "Batches in flight per mapping.",
    [MAPPING],
    multiprocess_mode="livesum",
)
POLL_OUTCOMES = ("records", "empty", "error")  # a read brought records; brought none; failed (SourceError)
POLLER_POLLS = Counter(
    "headwater_poller_polls",
    "Reads of a source by outcome: records (a batch came back), empty (none did), error (the read failed).",
    [MAPPING, "source_type", "outcome"],
)
POLLER_POLL_DURATION = Histogram(
    "headwater_poller_poll_duration_seconds",
    "Time one read of a source took (a long poll waits while nothing arrives), errors included.",
    [MAPPING, "source_type"],
    buckets=POLL_BUCKETS,
)
POLLER_LAST_POLL = Gauge(
    "headwater_poller_last_poll_timestamp_seconds",
    "When a mapping last polled its source.",
    [MAPPING],
    multiprocess_mode="max",
)

POLLER_CRASHES = Counter(
    "headwater_poller_crashes", "Pollers restarted after an unexpected error.", [MAPPING, "source_type"]
)
MAPPING_INFO = Gauge(
    "headwater_mapping_info",
    "1 per event source mapping a poller runs: joins its UUID (`mapping`, as on every per-mapping "
    "series) to its function, source kind and source (the ARN, or a Kafka mapping's topics).",
    [MAPPING, "function", "source_type", "source"],
    multiprocess_mode="max",
)
SQS_OLDEST_MESSAGE_AGE = Gauge(
    "headwater_sqs_oldest_message_age_seconds",
    "Age (from SentTimestamp) of the oldest message in a mapping's latest receive; 0 when it was empty.",
    [MAPPING],
    multiprocess_mode="max",
)

KAFKA_OFFSET_LAG = Gauge(
    "headwater_kafka_offset_lag",
    "Kafka (Lambda's OffsetLag): records written and not yet committed by the mapping (end offset - committed), "
    "summed over the partitions this poller replica owns; `sum by (mapping)` over replicas is the mapping's.",
    ["function", MAPPING],
    multiprocess_mode="livesum",
)
KAFKA_REBALANCES = Counter(
    "headwater_kafka_rebalances",
    "Kafka: partition assignments a mapping's consumer received (the first join included).",
    [MAPPING],
)


class PoolCollector(Collector):
    """The worker pool's own counters. The pool process imported prometheus-client before it set up
    the multiprocess directory its workers write to, so what it records itself is served from here."""

    def __init__(self, restarts: Callable[[], int]) -> None:
        self._restarts = restarts

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "headwater_worker_restarts",
            "Worker processes that died (crash, OOM kill, exit) and were restarted by their pool.",
            value=self._restarts(),
        )


@dataclass(frozen=True)
class QueueFigures:
    """Where the jobs of a pool's functions are now, read from Redis (see `InvocationQueue.status`)."""

    queued: Mapping[str, int]
    running: Mapping[str, int]  # in workers' processing lists (running or claimed ahead)
    scheduled: Mapping[str, int]  # retries and throttle backoffs waiting for their time
    quarantined_total: int  # the whole quarantine, every function's


class QueueCollector(Collector):
    """Reads where every function's jobs are from Redis at scrape time, so the figures are never stale.

    Every pod of a pool reports the same figures: dashboards and alerts take `max by (namespace, queue)`."""

    def __init__(self, read: Callable[[], QueueFigures]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            "queued": GaugeMetricFamily(
                "headwater_queue_depth", "Invocations waiting per function queue.", labels=["queue"]
            ),
            "running": GaugeMetricFamily(
                "headwater_jobs_running",
                "Jobs held by workers per function (running or claimed ahead).",
                labels=["queue"],
            ),
            "scheduled": GaugeMetricFamily(
                "headwater_jobs_scheduled", "Jobs waiting for a retry or backoff time per function.", labels=["queue"]
            ),
        }
        quarantine = GaugeMetricFamily(
            "headwater_quarantined_jobs", "Jobs in the quarantine now (see `headwater quarantine list`)."
        )
        try:
            figures = self._read()
        except (OSError, StoreError):  # Redis away: report nothing rather than fail the whole scrape
            yield from families.values()
            return
        for place, family in families.items():
            for queue, count in getattr(figures, place).items():
                family.add_metric([queue], count)
        quarantine.add_metric([], figures.quarantined_total)
        yield from (*families.values(), quarantine)


def declare_functions(functions: Iterable[tuple[str, int | None]]) -> None:
    """Create each function's series at zero, so `increase()` in alerts sees the very first event."""
    declare_build()
    for operation in ("complete", "quarantine"):
        FENCED.labels(operation)
    for name, reserved in functions:
        for counter, labels in (
            (THROTTLES, ("function_limit",)),
            (ASYNC_DROPPED, ("max_retries",)),
            (ASYNC_DROPPED, ("max_event_age",)),
            (ASYNC_DROPPED, ("zero_reserved_concurrency",)),
        ):
            counter.labels(name, *labels)
        if reserved is not None:
            CONCURRENCY_LIMIT.labels(name, "reserved").set(reserved)


def declare_build() -> None:
    """`headwater_build_info`, from every process (pool, poller, API): the version and a liveness join;
    and the Redis errors the store alerts tell apart, at zero, so `increase()` sees the first one."""
    BUILD_INFO.labels(__version__, get_settings().commit or UNKNOWN_COMMIT).set(1)
    for error in DECLARED_STORE_ERRORS:
        STORE_ERRORS.labels(error)


def declare_mapping(uuid: str, function: str, source_kind: str, source: str) -> None:
    """A mapping this process runs: its info series, and its crash and poll counters at zero for `increase()`."""
    MAPPING_INFO.labels(uuid, function, source_kind, source).set(1)
    POLLER_CRASHES.labels(uuid, source_kind)
    for outcome in POLL_OUTCOMES:
        POLLER_POLLS.labels(uuid, source_kind, outcome)


def forget_mapping(uuid: str, *, keep_info: bool = False) -> None:
    """Remove a mapping's gauges (and its info series unless `keep_info`: a disabled mapping still exists),
    so a removed or disabled mapping's last poll time does not linger and look stalled (HeadwaterPollerStalled)."""
    families = [POLLER_LAST_POLL, SQS_OLDEST_MESSAGE_AGE, POLLER_CONCURRENT_BATCHES, KAFKA_OFFSET_LAG, ITERATOR_AGE]
    families += [POLLER_LEASES]
    families += [] if keep_info else [MAPPING_INFO]
    for family in families:
        for metric in family.collect():
            for sample in metric.samples:
                if sample.labels.get(MAPPING) == uuid:
                    with contextlib.suppress(KeyError):  # removed already (several samples share one child)
                        family.remove(*sample.labels.values())


def registry_for_process() -> CollectorRegistry:
    """The registry to serve: the multiprocess sum in a pool, the default registry elsewhere."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def serve(port: int, registry: CollectorRegistry, healthy: Callable[[], bool], host: str = "") -> ThreadingHTTPServer:
    """Serve `/metrics` and `/healthz` on a daemon thread (all interfaces: a pod is scraped from outside)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok = healthy()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


# -- sharded streams (Kinesis, DynamoDB Streams): see broker/shard_leases.py ------------------------
ITERATOR_AGE = Gauge(
    "headwater_iterator_age_seconds",
    "Streams: age of the last record of the latest batch sent to the function (the oldest among "
    "this replica's shards); 0 when every shard it reads is caught up.",
    ["function", MAPPING],
    multiprocess_mode="max",
)
POLLER_LEASES = Gauge(
    "headwater_poller_leases",
    "Shards whose lease this poller replica holds, per mapping.",
    [MAPPING, "source_type"],
    multiprocess_mode="livesum",
)
LEASE_TAKES = Counter(
    "headwater_poller_lease_takes",
    "Shard leases this replica took: unowned, expired (a dead owner's), handoff (a live owner gave it "
    "up when asked: a steal), forced (a live owner did not answer the ask in time: a steal).",
    [MAPPING, "source_type", "how"],
)
LEASE_TAKE_HOWS = ("unowned", "expired", "handoff", "forced")
LEASES_FENCED = Counter(
    "headwater_poller_leases_fenced",
    "Shards this replica found taken by another (its checkpoint refused, or missing from its leases): "
    "it stopped invoking them.",
    [MAPPING, "source_type"],
)
STREAM_REDELIVERIES = Counter(
    "headwater_poller_stream_redeliveries",
    "Streams: batches sent again (kind=retry: a retry after a function error, a partial failure or a "
    "throttle) or split (kind=bisect: BisectBatchOnFunctionError halved a failing batch).",
    [MAPPING, "source_type", "kind"],
)


def declare_shards(uuid: str, source_kind: str) -> Gauge:
    """A sharded stream mapping this replica reads: its lease, fence and redelivery counters at zero, so
    `increase()` and the dashboard see the first steal or retry; returns its leases-held gauge."""
    for how in LEASE_TAKE_HOWS:
        LEASE_TAKES.labels(uuid, source_kind, how)
    LEASES_FENCED.labels(uuid, source_kind)
    for kind in ("retry", "bisect"):
        STREAM_REDELIVERIES.labels(uuid, source_kind, kind)
    return POLLER_LEASES.labels(uuid, source_kind)
